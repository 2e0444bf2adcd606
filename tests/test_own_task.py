"""A task from one module and one registry line (tests/plugins/scene_classes.py) runs through the engine and
the command line like a built-in one: train, resume, evaluate, predict and table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cen.cli.main import main

PLUGINS = Path(__file__).resolve().parent / "plugins"


@pytest.fixture
def plugin_path(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))
    yield
    sys.modules.pop("scene_classes", None)


def test_a_task_of_ones_own_trains_evaluates_predicts_and_tables(plugin_path, tmp_path, capsys):
    recipe = tmp_path / "scene_classes.yaml"
    recipe.write_text(
        "plugins: [scene_classes]\n"
        "task: scene_classes\n"
        "modalities: [rgb, depth]\n"
        f"data: {{root: {tmp_path}/scenes, generate: {{num: 20, height: 32, width: 40, workers: 1}}}}\n"
        "optim: {name: adam, stages: [{epochs: 2, encoder_lr: 0.01, decoder_lr: 0.01}], gamma_lr_scale: 5}\n"
        "loss: {sparsity_weight: 0.01, sparsity_solver: proximal}\n"
        f"train: {{batch_size: 4, device: cpu, progress: false, precision: fp32}}\n"
        f"run: {{dir: {tmp_path}/runs}}\n"
    )
    assert main(["train", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "accuracy %" in out and "ensemble" in out  # the generic table of the task's Score
    run = tmp_path / "runs" / "scene_classes"
    results = json.loads((run / "results.json").read_text())
    assert set(results["test"]) == {"rgb", "depth", "ensemble"}
    assert 0 <= results["test"]["ensemble"]["accuracy"] <= 1
    # evaluate and resume like any run
    assert main(["eval", str(recipe), "--checkpoint", str(run / "best.pt"), "--out", str(tmp_path / "ev")]) == 0
    scores = json.loads((tmp_path / "ev" / "scores.json").read_text())["scores"]
    assert scores["ensemble"]["accuracy"] == pytest.approx(results["test"]["ensemble"]["accuracy"])
    assert main(["train", str(recipe), "optim.stages.0.epochs=3", "--resume"]) == 0
    # predict from files: the task reads the inputs and writes its own output
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray(rng.integers(500, 9000, (32, 40), dtype=np.uint16)).save(tmp_path / "depth.png")
    pred = tmp_path / "pred.json"
    args = ["predict", "--checkpoint", str(run / "best.pt"), "--rgb", str(tmp_path / "rgb.png")]
    assert main([*args, "--depth", str(tmp_path / "depth.png"), "--out", str(pred)]) == 0
    probs = json.loads(pred.read_text())
    assert set(probs) == {"rgb", "depth", "ensemble"} and sum(probs["ensemble"]) == pytest.approx(1.0)
    assert main([*args, "--flip", "--out", str(pred)]) == 2  # an option the task does not take: one line
    assert "--flip does not apply to task 'scene_classes'" in capsys.readouterr().err
    # the comparison table reads the task's score metadata
    assert main(["table", str(tmp_path / "runs")]) == 0
    table = (tmp_path / "runs" / "table.md").read_text()
    assert "| accuracy % |" in table and "| scene_classes | done | ensemble |" in table
