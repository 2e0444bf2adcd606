"""``cen eval --subsets``: a model scored on every non-empty subset of its modalities."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from cen import MultiModal, convert
from cen.cli.main import main
from cen.core.norms import _ModalityNorm
from cen.tasks.segmentation.evaluate import predict_scores
from cen.tasks.segmentation.models import TinySegNet
from cen.tasks.subsets import SubsetError, check_droppable, evaluate_subsets, format_subsets, modality_subsets
from tests.train.fakes import evaluate_segmenter as evaluate

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
NAMES = ["rgb", "depth", "normal"]
K = 4


def test_every_non_empty_subset_largest_first():
    subsets = modality_subsets(NAMES)
    assert subsets == [
        ("rgb", "depth", "normal"),
        ("rgb", "depth"),
        ("rgb", "normal"),
        ("depth", "normal"),
        ("rgb",),
        ("depth",),
        ("normal",),
    ]
    assert len(modality_subsets("abcd")) == 15


@pytest.fixture(scope="module")
def exchanging_model():
    torch.manual_seed(0)
    model = TinySegNet(K, NAMES)
    with torch.no_grad():  # half of rgb's gammas below theta: those channels take the others' values
        for m in model.modules():
            if isinstance(m, _ModalityNorm):
                w = m.weight.view(len(NAMES), -1)
                w[0, : w.shape[1] // 2] = 0
    return model.eval()


def _loader(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            **{n: torch.randn(2, 3, 16, 20, generator=g) for n in NAMES},
            "mask": torch.randint(0, K, (2, 16, 20), generator=g),
        }
        for _ in range(2)
    ]


def test_each_subset_is_the_model_run_on_those_inputs_only(exchanging_model):
    loader = _loader()
    calls = []

    def run(subset):
        calls.append(list(subset))
        return evaluate(exchanging_model, loader, K, modalities=subset)

    records = evaluate_subsets(NAMES, exchanging_model, run)
    assert [r["subset"] for r in records] == [list(s) for s in modality_subsets(NAMES)] == calls
    for rec in records:
        assert list(rec["scores"]) == [*rec["subset"], "ensemble"]
        direct = evaluate(exchanging_model, loader, K, modalities=rec["subset"], progress=False)
        assert rec["scores"] == direct
    # the dropped modalities really are absent: with exchange, rgb's branch changes when depth goes
    x = {n: loader[0][n] for n in NAMES}
    full = predict_scores(exchanging_model, x)["rgb"]
    alone = predict_scores(exchanging_model, {"rgb": x["rgb"]})["rgb"]
    assert not torch.allclose(full, alone)
    table = format_subsets(records, NAMES, "miou", lambda v: f"{100 * v:.2f}")
    lines = table.splitlines()
    assert lines[0].split() == ["inputs", "rgb", "miou", "depth", "miou", "normal", "miou", "ensemble", "miou"]
    assert lines[-1].startswith("normal") and lines[-1].split()[1:3] == ["-", "-"]
    md = format_subsets(records, NAMES, "miou", markdown=True).splitlines()
    assert md[0] == "| inputs | rgb miou | depth miou | normal miou | ensemble miou |" and len(md) == 2 + 7


def test_models_that_cannot_drop_a_modality_are_refused():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, K, 1))
    gated = MultiModal(convert(net, 3, fusion="gated_sum", exchange=["1"]), NAMES).eval()
    with pytest.raises(SubsetError, match=r"^--subsets: fusion 'gated_sum' \(at model\.1\) reads every modality"):
        check_droppable(gated, NAMES)
    with pytest.raises(SubsetError, match="does not take its modalities by name"):
        check_droppable(nn.Conv2d(3, K, 1), NAMES)
    with pytest.raises(SubsetError, match="one modality"):
        check_droppable(TinySegNet(K, ["rgb"]), ["rgb"])

    class Refuses(nn.Module):  # a model whose forward needs every input
        names = tuple(NAMES)

        def forward(self, inputs):
            if len(inputs) < 3:
                raise ValueError("late fusion head needs all inputs")
            total = sum(inputs.values())
            return {"rgb": torch.cat([total, total[:, :1]], 1)}  # K = 4 classes

    run = lambda sub: evaluate(Refuses(), _loader(), K, modalities=sub)
    with pytest.raises(SubsetError, match=r"^--subsets: the model cannot run on rgb\+depth: late fusion head"):
        evaluate_subsets(NAMES, Refuses(), run)


def test_cli_eval_subsets_writes_json_and_markdown(tmp_path, capsys):
    args = [
        str(CONFIGS / "scenes_rgb_depth_normal.yaml"),
        f"data.root={tmp_path}/scenes",
        "data.generate={num: 12, height: 24, width: 32, workers: 1}",
        "model.name=tiny",
        "train.batch_size=4",
        "train.device=cpu",
        "train.progress=false",
        "eval.num_images=0",
        "eval.test=false",
        "train.max_steps=2",
        f"run.dir={tmp_path}/runs",
    ]
    assert main(["train", *args]) == 0
    ck = tmp_path / "runs" / "scenes_rgb_depth_normal" / "last.pt"
    capsys.readouterr()
    assert main(["eval", *args, "--checkpoint", str(ck), "--subsets", "--out", str(tmp_path / "sub")]) == 0
    out = capsys.readouterr().out
    assert "every subset of ['rgb', 'depth', 'normal']" in out and "rgb+depth+normal" in out
    record = json.loads((tmp_path / "sub" / "subsets.json").read_text())
    assert record["metric"] == "miou" and [r["subset"] for r in record["subsets"]] == [
        list(s) for s in modality_subsets(NAMES)
    ]
    assert set(record["subsets"][4]["scores"]) == {"rgb", "ensemble"}
    md = (tmp_path / "sub" / "subsets.md").read_text()
    assert "| depth+normal | - |" in md
    assert main(["eval", *args, "--checkpoint", str(ck), "--subsets", "--images", "2"]) == 2
    assert "--images does not combine with --subsets" in capsys.readouterr().err
