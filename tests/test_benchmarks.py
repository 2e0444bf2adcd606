"""The benchmark scripts run end to end at toy sizes and report consistent numbers.

These are smoke tests of the scripts' plumbing (argument parsing, JSON, table), not timings:
the timings themselves are reported by running the scripts, never asserted.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(script: str, *args: str, tmp_path: Path) -> tuple[dict, str]:
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text()), proc.stdout


def test_bench_core_reports_all_variants_and_ratios(tmp_path):
    result, table = _run(
        "bench_core.py",
        *("--arch", "resnet18", "--size", "32", "--repeats", "2", "--warmup", "0", "--threads", "1"),
        tmp_path=tmp_path,
    )
    entry = result["models"]["resnet18"]
    v, r = entry["variants"], entry["ratios"]
    assert set(v) == {"stacked", "list", "plain"}
    for variant in v.values():
        assert len(variant["times_s"]) == 2 and variant["median_s"] > 0 and variant["peak_bytes"] > 0
    # The list layout indexes with boolean masks (nonzero); the stacked and plain models never do.
    assert v["list"]["nonzero_per_forward"] > 0
    assert v["stacked"]["nonzero_per_forward"] == v["plain"]["nonzero_per_forward"] == 0
    assert 0 < entry["exchanged_fraction"] < 1
    assert r["list_over_plain_time"] == pytest.approx(v["list"]["median_s"] / v["plain"]["median_s"])
    assert r["list_over_stacked_time"] == pytest.approx(v["list"]["median_s"] / v["stacked"]["median_s"])
    assert "| resnet18 | stacked |" in table and "list/plain time" in table


def test_bench_conv_dtype_reports_each_shape(tmp_path):
    result, table = _run(
        "bench_conv_dtype.py",
        *("--threads", "1", "--batch", "1", "--repeats", "1", "--warmup", "0", "--calls", "1"),
        tmp_path=tmp_path,
    )
    assert len(result["rows"]) == 5
    for row in result["rows"]:
        assert row["fp32_ms"] > 0 and row["bf16_ms"] > 0
        assert row["speedup"] == pytest.approx(row["fp32_ms"] / row["bf16_ms"])
        assert "| {} | {} |".format(*row["shape"][:2]) in table


def test_bench_precision_times_every_setting_and_places_auto(tmp_path):
    result, table = _run(
        "bench_precision.py",
        *("--repeats", "2", "--warmup", "0", "--threads", "1", "--batch", "2"),
        *("data.generate.height=64", "data.generate.width=64"),
        tmp_path=tmp_path,
    )
    v = result["variants"]
    assert set(v) == {"fp32", "fp32+cl", "bf16", "bf16+cl", "auto"}
    assert result["batch"] == [2, 3, 64, 64]
    for entry in v.values():
        assert len(entry["times_s"]) == 2 and entry["median_s"] > 0
        assert entry["ratio_to_fp32"] == pytest.approx(entry["median_s"] / v["fp32"]["median_s"])
    auto = result["auto"]
    assert (v["auto"]["precision"], v["auto"]["channels_last"]) == (auto["precision"], auto["channels_last"])
    fastest = min(("fp32", "fp32+cl", "bf16", "bf16+cl"), key=lambda n: v[n]["median_s"])
    assert result["fastest"] == fastest
    assert result["auto_within_10pct_of_fastest"] == (v["auto"]["median_s"] <= 1.1 * v[fastest]["median_s"])
    assert "| auto |" in table and "auto ->" in table
