"""``cen train`` then ``cen eval`` with each RGB-X recipe on a tiny data set in its exact layout.

The recipes are GPU scale; the overrides make a tiny run of them (``model.name=tiny``, 2 steps,
32x48 crops), so what is tested is the data path end to end: the layout, the registry entry,
the recipe's data keys and the evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cen.cli.main import main
from tests.data.layout_fixtures import H, W, _save, make_deliver, make_mfnet, make_rgbx

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

LAYOUTS = {
    "rgbx_nyudv2_r101": (make_rgbx, ["rgb", "depth"], {}),
    "rgbx_sunrgbd_r101": (make_rgbx, ["rgb", "depth"], {"num_classes": 37, "labels": "labels", "depth_bits": 16}),
    "mfnet_rgbt_r50": (make_mfnet, ["rgb", "thermal"], {}),
    "deliver_rgbdel_r50": (make_deliver, ["rgb", "depth", "event", "lidar"], {}),
}


def _tiny(tmp: Path, recipe: str, root: Path, *extra: str) -> list[str]:
    return [
        str(CONFIGS / f"{recipe}.yaml"),
        f"data.root={root}",
        f"data.image_size=[{H},{W}]",
        "data.num_workers=0",
        "data.short_side=null",
        f"data.crop_size=[{H},{W}]",
        "model.name=tiny",
        "train.max_steps=2",
        "train.batch_size=2",
        "train.progress=false",
        "train.device=cpu",
        "eval.num_images=1",
        "optim.stages=[{epochs: 1, encoder_lr: 0.01, decoder_lr: 0.01}]",
        f"run.dir={tmp}/runs",
        *extra,
    ]


@pytest.mark.parametrize("recipe", list(LAYOUTS))
def test_train_then_eval_each_recipe_on_its_layout(tmp_path, recipe, capsys):
    make, modalities, kwargs = LAYOUTS[recipe]
    root = make(tmp_path / "data", **kwargs)
    assert main(["train", *_tiny(tmp_path, recipe, root)]) == 0
    run = tmp_path / "runs" / recipe
    results = json.loads((run / "results.json").read_text())
    assert set(results["test"]) == {*modalities, "ensemble"}
    assert any((run / "images").rglob("*.png"))  # prediction images draw every kind (thermal, event, LiDAR)
    out = tmp_path / "eval"
    args = ["eval", *_tiny(tmp_path, recipe, root), "--checkpoint", str(run / "best.pt"), "--out", str(out)]
    assert main([*args, "--images", "1"]) == 0
    scores = json.loads((out / "scores.json").read_text())["scores"]
    assert set(scores) == {*modalities, "ensemble"}
    assert all(0.0 <= s["miou"] <= 1.0 for s in scores.values())
    assert "mIoU" in capsys.readouterr().out


def test_deliver_conditions_and_cases_from_the_config(tmp_path, capsys):
    root = make_deliver(tmp_path / "data", frames=2)  # 2 normal night frames per split
    recipe = "deliver_rgbdel_r50"
    extra = ["data.deliver_conditions=[night]", "data.deliver_cases=[normal]", "modalities=[rgb,hha]"]
    assert main(["train", *_tiny(tmp_path, recipe, root, *extra)]) == 0
    capsys.readouterr()
    bad = ["data.deliver_cases=[snow]", "run.name=snow"]
    assert main(["train", *_tiny(tmp_path, recipe, root, *bad)]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the run's first line (device, precision, threads)
    assert last.startswith("cen train: error:") and "DELIVER cases ['snow']" in last and "Traceback" not in err
    assert main(["train", *_tiny(tmp_path, recipe, root, "data.deliver_conditions=[fog]", "run.name=fog")]) == 2
    assert "no DELIVER frame img/<condition>/train/" in capsys.readouterr().err  # no fog in the fixture


def test_bad_file_found_while_training_is_one_line(tmp_path, capsys):
    root = make_mfnet(tmp_path / "data")
    _save(root / "images" / "00003D.png", np.zeros((H, W, 3), np.uint8))  # lost its thermal channel
    assert main(["train", *_tiny(tmp_path, "mfnet_rgbt_r50", root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cen train: error:") and not any("Traceback" in line for line in err)
    assert len(err) <= 2  # the run's first line (device, precision, threads), then the one-line error
    assert "images/00003D.png: image is uint8 with shape (32, 48, 3); expected a 4-channel PNG" in err[-1]
    assert "train.txt:3" in err[-1]
