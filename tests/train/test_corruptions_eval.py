"""cen eval --corruptions: a checkpoint scored under every sensor fault at several severities; data.corruptions
as a training augmentation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cen.cli.main import main
from cen.train.robustness import CorruptionError, curves, plan

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_the_plan_follows_the_kinds():
    steps = plan({"rgb": "image", "depth": "depth"}, severities=(1, 5))
    assert ("depth", "depth_holes", 5) in steps and ("rgb", "low_light", 1) in steps
    assert ("rgb", "depth_holes", 1) not in steps  # a depth fault is not asked of an image
    assert [s for s in steps if s[1] == "dead_sensor"] == [("rgb", "dead_sensor", 1), ("depth", "dead_sensor", 1)]
    assert plan({"rgb": "image"}, ["low_light"], (3,)) == [("rgb", "low_light", 3)]
    with pytest.raises(CorruptionError, match="unknown; known: depth_holes"):
        plan({"rgb": "image"}, ["fog"])
    with pytest.raises(CorruptionError, match="none applies to the modalities"):
        plan({"rgb": "image"}, ["depth_holes"])
    with pytest.raises(CorruptionError, match="--severities \\[7\\]"):
        plan({"rgb": "image"}, severities=(7,))


def _args(tmp, *extra):
    return [
        str(CONFIGS / "scenes.yaml"),
        f"data.root={tmp}/scenes",
        "data.generate={num: 16, height: 32, width: 40, workers: 1}",
        "model.name=tiny",
        "train.batch_size=4",
        "train.device=cpu",
        "train.progress=false",
        "eval.num_images=0",
        "optim.stages=[{epochs: 1, encoder_lr: 0.05, decoder_lr: 0.05}]",
        f"run.dir={tmp}/runs",
        *extra,
    ]


def test_cen_eval_corruptions_scores_every_fault_and_writes_table_json_and_plot(tmp_path, capsys):
    # trained with the corruptions as augmentation too
    aug = "data.corruptions={p: 0.5, names: [depth_holes, low_light], severities: [1, 3]}"
    assert main(["train", *_args(tmp_path, aug)]) == 0
    out = tmp_path / "ev"
    ckpt = str(tmp_path / "runs" / "scenes" / "best.pt")
    rc = main(["eval", *_args(tmp_path), "--checkpoint", ckpt, "--corruptions", "depth_holes", "dead_sensor",
               "--severities", "1", "5", "--out", str(out)])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "depth: depth_holes" in text and "rgb: dead_sensor" in text and "severity 5" in text
    data = json.loads((out / "corruptions.json").read_text())
    records = data["corruptions"]
    assert records[0]["corruption"] is None and records[0]["severity"] == 0
    assert [(r["modality"], r["corruption"], r["severity"]) for r in records[1:]] == [
        ("rgb", "dead_sensor", 1), ("depth", "depth_holes", 1), ("depth", "depth_holes", 5), ("depth", "dead_sensor", 1),
    ]  # fmt: skip
    lines = curves(records, data["branch"], data["metric"])
    clean = records[0]["scores"][data["branch"]][data["metric"]]
    assert lines["depth: depth_holes"][0] == (0, clean)
    # the faults change what the model sees: a dead depth sensor scores differently from the clean data
    assert lines["depth: dead_sensor"][1][1] != clean
    assert (out / "corruptions.md").read_text().startswith("**") and (out / "corruptions.png").stat().st_size > 0
    assert main(["eval", *_args(tmp_path), "--checkpoint", ckpt, "--corruptions", "fog"]) == 2
    assert "unknown; known" in capsys.readouterr().err


def test_bad_training_corruptions_are_one_line(tmp_path, capsys):
    assert main(["train", *_args(tmp_path, "data.corruptions={p: 2}", "run.name=bad")]) == 2
    assert "data.corruptions" in capsys.readouterr().err
