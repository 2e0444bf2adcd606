"""benchmarks/bench_export.py runs end to end at a toy size (plumbing only; timings are never asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnx", reason="ONNX export needs onnx: pip install -e '.[export]'")
pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript: pip install -e '.[export]'")
pytest.importorskip("onnxruntime", reason="running ONNX needs onnxruntime: pip install -e '.[export]'")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_export.py"


def test_bench_export_reports_every_variant(tmp_path):
    out = tmp_path / "result.json"
    args = ["--size", "32", "32", "--batch", "1", "2", "--repeats", "2", "--warmup", "0", "--threads", "1",
            "--widths", "16", "8", "8", "8", "--no-compile", "--json", str(out)]  # fmt: skip
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result["batches"]) == {"1", "2"}
    for batch, entry in result["batches"].items():
        assert set(entry["variants"]) == {"eager", "frozen", "onnxruntime"}
        for v in entry["variants"].values():
            assert len(v["times_s"]) == 2 and v["images_per_s"] == pytest.approx(int(batch) / v["median_s"])
        assert max(entry["max_abs_diff"].values()) < 1e-4  # the variants compute the same
    assert "compiled skipped: --no-compile" in result["notes"]
    assert "| 2 | onnxruntime |" in proc.stdout
