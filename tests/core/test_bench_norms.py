"""benchmarks/bench_norms.py runs end to end at toy sizes and reports every case and variant (its plumbing only)."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_norms.py"


def test_bench_norms_reports_every_case_and_ratio(tmp_path):
    out = tmp_path / "norms.json"
    args = ["--toy", "--repeats", "2", "--warmup", "0", "--threads", "1", "--json", str(out)]
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result["cases"]) == {
        "vit_tokens", "convnext_layernorm2d", "convnext_block_norm", "group_norm", "vit_encoder_block",
        "convnext_cnblock",
    }  # fmt: skip
    for case in result["cases"].values():
        assert set(case["median_ms"]) == {"plain", "modality", "modality+exchange"}
        assert case["ratio_to_plain"]["plain"] == 1.0 and all(v > 0 for v in case["median_ms"].values())
    assert "| vit_encoder_block |" in proc.stdout and json.loads(proc.stdout[: proc.stdout.rindex("}") + 1])
