"""benchmarks/bench_backbones.py runs end to end on a small setting and reports what it timed (its plumbing only).

The timings themselves are reported by running the script, never asserted.
"""

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_backbones.py"
ONLY = ("resnet18/rgb", "mit_b0/sum")


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # its imports of bench_core and machine
    spec = importlib.util.spec_from_file_location("bench_backbones", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_backbones_reports_the_variants_asked(bench, tmp_path, capsys):
    out = tmp_path / "backbones.json"
    args = ["--only", ",".join(ONLY), "--repeats", "1", "--warmup", "0"]
    result = bench.main([*args, "--batch", "2", "--size", "32x48", "--json", str(out)])
    assert json.loads(out.read_text()) == result
    v = result["variants"]
    assert list(v) == list(ONLY)
    assert result["baseline"] is None  # resnet18/cen did not run: no ratios
    for name, entry in v.items():
        assert entry["name"] == name and entry["backbone"] == name.split("/")[0]
        assert entry["params_m"] > 0 and entry["batch"] == [2, 3, 32, 48]
        assert len(entry["times_s"]) == 1 and math.isfinite(entry["median_s"]) and entry["median_s"] > 0
        assert math.isfinite(entry["min_s"]) and entry["min_s"] > 0 and entry["ratio_to_resnet18_cen"] is None
        assert entry["precision"] == result["precision"] in ("fp32", "bf16", "fp16")
    assert v["resnet18/rgb"]["modalities"] == ["rgb"] and v["resnet18/rgb"]["strategy"] is None
    assert v["mit_b0/sum"]["strategy"] == "sum" and v["mit_b0/sum"]["sparsity_weight"] == 0
    printed = capsys.readouterr().out
    assert "| resnet18/rgb | resnet18 + refinenet | none | rgb |" in printed and "| mit_b0/sum |" in printed


def test_every_recipe_variant_is_named_and_unknown_ones_are_refused(bench):
    assert list(bench.variants()) == [
        "resnet18/cen", "resnet18/sum", "resnet18/rgb",
        "convnext_atto/cen", "convnext_atto/sum", "convnext_atto/rgb",
        "mit_b0/cen", "mit_b0/sum", "mit_b0/rgb", "mit_b0/token",
    ]  # fmt: skip
    assert bench.parse_size("72x96") == (72, 96) and bench.parse_size("64") == (64, 64)
    with pytest.raises(SystemExit):
        bench.main(["--only", "resnet18/nope", "--repeats", "1", "--warmup", "0"])
