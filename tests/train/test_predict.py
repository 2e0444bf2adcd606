"""``cen predict`` end to end on a tiny checkpoint in the trainer's format."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from cen.atomic import atomic_torch_save as atomic_save
from cen.cli.main import main
from cen.data.constants import IMAGENET_MEAN, IMAGENET_STD
from cen.tasks import build_task
from cen.tasks.segmentation.evaluate import predict_scores
from cen.tasks.segmentation.visualize import colorize
from cen.train.checkpoint import FORMAT, TRAINING, VERSION
from cen.train.config import load_config
from tests.train.fakes import cen_predict, spy_on_loaded_models

K = 5


def read_inputs(paths):
    """What cen predict feeds a segmentation model: the task's own reading of the files."""
    return build_task(load_config(None, [f"data.num_classes={K}"])).read_inputs(paths)


def _save_training_checkpoint(cfg, model, path):
    """``model`` as a training checkpoint of ``cfg`` after one step, as the trainer writes it."""
    atomic_save(
        {
            "format": FORMAT,
            "version": VERSION,
            "kind": TRAINING,
            "models": {"model": model.state_dict()},
            "config": OmegaConf.to_container(cfg, resolve=True),
            "progress": {"epoch": 1, "batch": 0, "global_step": 1, "best_score": None, "best_epoch": None},
            "meta": build_task(cfg).meta(),
        },
        path,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict")
    cfg = load_config(None, ["model.name=tiny", f"data.num_classes={K}"])
    torch.manual_seed(0)
    model = build_task(cfg).build_model()
    with torch.no_grad():  # make the branches disagree a little
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    _save_training_checkpoint(cfg, model, d / "best.pt")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (18, 22, 3), dtype=np.uint8)).save(d / "rgb.png")
    Image.fromarray(rng.integers(500, 6000, (18, 22), dtype=np.uint16)).save(d / "depth.png")
    Image.fromarray(rng.integers(0, 256, (10, 22, 3), dtype=np.uint8)).save(d / "small.png")
    return d, model


def test_preprocessing_matches_the_loaders(files):
    d, _ = files
    x = read_inputs({"rgb": str(d / "rgb.png"), "depth": str(d / "depth.png")})
    raw = torch.from_numpy(np.array(Image.open(d / "rgb.png"))).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    assert torch.allclose(x["rgb"][0], (raw - mean) / std, atol=1e-6)
    depth = torch.from_numpy(np.array(Image.open(d / "depth.png")).astype(np.float32)) / 5000
    assert x["depth"].shape == (1, 3, 18, 22)
    assert torch.allclose(x["depth"][0], depth.expand(3, -1, -1))


def test_predict_writes_colour_and_label_pngs_of_the_ensemble(files, tmp_path):
    d, model = files
    out, labels, grid = tmp_path / "pred.png", tmp_path / "labels.png", tmp_path / "grid.png"
    rc = cen_predict(
        d / "best.pt",
        "--rgb",
        d / "rgb.png",
        "--depth",
        d / "depth.png",
        "--out",
        out,
        "--labels",
        labels,
        "--grid",
        grid,
    )
    assert rc == 0
    model.eval()
    x = read_inputs({"rgb": str(d / "rgb.png"), "depth": str(d / "depth.png")})
    expected = predict_scores(model, x)["ensemble"][0].argmax(0)
    got = np.asarray(Image.open(labels))
    assert got.dtype == np.uint8 and got.shape == (18, 22)
    assert np.array_equal(got, expected.numpy())
    assert np.array_equal(np.asarray(Image.open(out)), colorize(expected))
    assert np.asarray(Image.open(grid)).shape == (18, 3 * 22 + 2 * 4, 3)


def test_rgb_only_and_single_branch(files, tmp_path):
    d, model = files
    labels = tmp_path / "l.png"
    assert cen_predict(d / "best.pt", "--rgb", d / "rgb.png", "--out", tmp_path / "p.png", "--labels", labels) == 0
    model.eval()
    x = read_inputs({"rgb": str(d / "rgb.png")})
    assert np.array_equal(np.asarray(Image.open(labels)), predict_scores(model, x)["rgb"][0].argmax(0).numpy())
    assert (
        cen_predict(
            d / "best.pt",
            "--rgb",
            d / "rgb.png",
            "--depth",
            d / "depth.png",
            "--branch",
            "depth",
            "--out",
            tmp_path / "p.png",
            "--labels",
            labels,
        )
        == 0
    )
    full = read_inputs({"rgb": str(d / "rgb.png"), "depth": str(d / "depth.png")})
    assert np.array_equal(np.asarray(Image.open(labels)), predict_scores(model, full)["depth"][0].argmax(0).numpy())


def _err(capsys, argv):
    assert main(argv) == 2
    return capsys.readouterr().err


def test_clear_errors(files, tmp_path, capsys):
    d, _ = files
    ck, out = str(d / "best.pt"), str(tmp_path / "p.png")
    err = _err(capsys, ["predict", "--checkpoint", ck, "--rgb", str(d / "nope.png"), "--out", out])
    assert "--rgb" in err and "nope.png" in err and "no such file" in err
    err = _err(capsys, ["predict", "--checkpoint", str(d / "missing.pt"), "--rgb", str(d / "rgb.png"), "--out", out])
    assert "--checkpoint" in err and "missing.pt" in err
    err = _err(
        capsys,
        ["predict", "--checkpoint", ck, "--rgb", str(d / "small.png"), "--depth", str(d / "depth.png"), "--out", out],
    )
    assert "small.png is 22x10" in err and "depth.png is 22x18" in err
    err = _err(capsys, ["predict", "--checkpoint", ck, "--out", out])
    assert "--rgb PATH, --depth PATH or --input NAME=PATH" in err
    err = _err(capsys, ["predict", "--checkpoint", ck, "--depth", str(d / "rgb.png"), "--out", out])
    assert "rgb.png" in err and "16-bit" in err
    err = _err(capsys, ["predict", "--checkpoint", str(d / "rgb.png"), "--rgb", str(d / "rgb.png"), "--out", out])
    assert "rgb.png" in err and "checkpoint" in err
    err = _err(capsys, ["predict", "--checkpoint", ck, "--rgb", str(d / "rgb.png"), "--branch", "normal", "--out", out])
    assert "'normal'" in err and "ensemble" in err


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict3")
    cfg = load_config(None, ["model.name=tiny", f"data.num_classes={K}", "modalities=[rgb,depth,normal]"])
    torch.manual_seed(1)
    model = build_task(cfg).build_model()
    _save_training_checkpoint(cfg, model, d / "best.pt")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (18, 22, 3), dtype=np.uint8)).save(d / "rgb.png")
    Image.fromarray(rng.integers(500, 6000, (18, 22), dtype=np.uint16)).save(d / "depth.png")
    Image.fromarray(rng.integers(0, 256, (18, 22, 3), dtype=np.uint8)).save(d / "normal.png")
    return d, model


def test_any_modality_by_name_decoded_by_its_kind(three, tmp_path, capsys):
    d, model = three
    paths = {"rgb": str(d / "rgb.png"), "depth": str(d / "depth.png"), "normal": str(d / "normal.png")}
    x = read_inputs(paths)
    raw = torch.from_numpy(np.array(Image.open(d / "normal.png"))).permute(2, 0, 1).float()
    assert torch.allclose(x["normal"][0], raw / 127.5 - 1)  # normals: [-1, 1], not ImageNet-normalised
    labels, grid = tmp_path / "l.png", tmp_path / "g.png"
    assert (
        cen_predict(
            d / "best.pt",
            "--rgb",
            paths["rgb"],
            "--input",
            f"depth={paths['depth']}",
            "--input",
            f"normal={paths['normal']}",
            "--out",
            tmp_path / "p.png",
            "--labels",
            labels,
            "--grid",
            grid,
        )
        == 0
    )
    model.eval()
    assert np.array_equal(np.asarray(Image.open(labels)), predict_scores(model, x)["ensemble"][0].argmax(0).numpy())
    assert np.asarray(Image.open(grid)).shape == (18, 4 * 22 + 3 * 4, 3)  # rgb | depth | normal | prediction
    # normal alone: missing-modality inference
    assert (
        cen_predict(
            d / "best.pt", "--input", f"normal={paths['normal']}", "--out", tmp_path / "p.png", "--labels", labels
        )
        == 0
    )
    alone = predict_scores(model, {"normal": x["normal"]})["normal"][0].argmax(0).numpy()
    assert np.array_equal(np.asarray(Image.open(labels)), alone)
    capsys.readouterr()
    err = _err(
        capsys,
        [
            "predict",
            "--checkpoint",
            str(d / "best.pt"),
            "--input",
            f"normal={paths['depth']}",
            "--out",
            str(tmp_path / "p.png"),
        ],
    )
    assert f"--input normal={paths['depth']}" in err and "8-bit RGB" in err
    err = _err(
        capsys,
        [
            "predict",
            "--checkpoint",
            str(d / "best.pt"),
            "--input",
            f"hha={paths['rgb']}",
            "--out",
            str(tmp_path / "p.png"),
        ],
    )
    assert "['rgb', 'depth', 'normal']" in err and "hha" in err


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_predict_runs_in_the_checkpoints_precision_and_layout(files, tmp_path, monkeypatch, precision):
    d, _ = files
    saved = torch.load(d / "best.pt", weights_only=False)
    saved["config"]["train"].update(precision=precision, channels_last=precision == "bf16")
    atomic_save(saved, tmp_path / "best.pt")
    seen = spy_on_loaded_models(monkeypatch)
    inputs = ("--rgb", d / "rgb.png", "--depth", d / "depth.png")
    assert cen_predict(tmp_path / "best.pt", *inputs, "--out", tmp_path / "pred.png") == 0
    assert seen and set(seen) == {(precision == "bf16", precision == "bf16")}
