"""The step benchmark runs end to end at toy sizes, and its reference-style baseline computes what RefineNetCEN does.

Smoke tests of the plumbing (variants, JSON, table) and of the baseline's fairness; the timings
themselves are reported by running the script, never asserted.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def bench_modules(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_step
    import reference_list_refinenet

    return bench_step, reference_list_refinenet


def test_reference_style_refinenet_computes_the_same_function(bench_modules):
    bench_step, ref_mod = bench_modules
    model = bench_step.build_cen("resnet18", 2, 4, fraction=0.3)
    listed = ref_mod.ListRefineNet.from_cen(model)
    model.eval()  # dropout off; norms use the (copied) running statistics
    listed.eval()
    inputs, target = bench_step.make_batch(2, 2, 64, 4)
    out = model(inputs)
    outs = listed(list(inputs.values()))
    assert len(outs) == 3
    for key, o in zip(("rgb", "depth", "ensemble"), outs):
        torch.testing.assert_close(o, out[key], rtol=1e-5, atol=1e-5)
    sum(torch.nn.functional.cross_entropy(o, target) for o in out.values()).backward()
    sum(torch.nn.functional.cross_entropy(o, target) for o in outs).backward()
    a = model.encoder.layer1[0].bn2.weight.grad.view(2, -1)  # modality m's slice is bn_m of the list model
    b = listed.encoder.layer1[0].bn2
    torch.testing.assert_close(a[1], b.bn_1.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        model.decoder.clf_conv.weight.grad, listed.decoder.clf_conv.weight.grad, rtol=1e-4, atol=1e-5
    )
    assert ref_mod.nonzero_per_forward(listed, list(inputs.values())) > 0


def test_bench_step_reports_every_variant(tmp_path):
    out = tmp_path / "step.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "bench_step.py"),
            "--backbone",
            "resnet18",
            "--size",
            "32",
            "--classes",
            "3",
            "--repeats",
            "2",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    v = result["variants"]
    assert list(v) == ["reference", "cen", "cen+bf16", "cen+bf16+cl", "cen+bf16+cl+lean"]
    for entry in v.values():
        assert len(entry["times_s"]) == 2 and entry["median_s"] > 0 and entry["peak_bytes"] > 0
        assert entry["speedup_vs_reference"] == pytest.approx(v["reference"]["median_s"] / entry["median_s"])
        assert entry["memory_vs_reference"] == pytest.approx(entry["peak_bytes"] / v["reference"]["peak_bytes"])
    assert v["reference"]["nonzero_per_forward"] > 0
    # weights dominate at 32x32: recasting them and stepping in backward must show
    assert v["cen+bf16+cl+lean"]["peak_bytes"] < 0.8 * v["cen+bf16+cl"]["peak_bytes"]
    assert "| cen+bf16+cl |" in proc.stdout and "speed-up vs reference" in proc.stdout
