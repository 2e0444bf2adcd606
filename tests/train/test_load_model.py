"""``cen.load_model``: one way back from any checkpoint the project writes to its model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import cen
from cen.atomic import atomic_torch_save
from cen.cli.main import main
from cen.models import RefineNetCEN
from cen.tasks.segmentation import TinySegNet
from cen.train.checkpoint import FORMAT, CheckpointError, weights_checkpoint
from cen.train.config import load_config
from cen.train.trainer import Trainer
from tests.train.fakes import fake_datasets, tiny_overrides

WIDTHS = [24, 16, 16, 8]  # not the reference's


def _refinenet(threshold=0.05):
    torch.manual_seed(0)
    model = RefineNetCEN(
        "resnet18", num_classes=5, modalities=["rgb", "depth"], threshold=threshold, decoder_widths=WIDTHS
    )
    with torch.no_grad():  # running statistics away from their initial values too
        for _name, buf in model.named_buffers():
            if buf.is_floating_point():
                buf.add_(0.1 * torch.rand_like(buf))
    return model


def _converted_config(threshold=0.05):
    return {
        "task": "segmentation",
        "modalities": ["rgb", "depth"],
        "data": {"num_classes": 5},
        "model": {
            "name": "refinenet",
            "backbone": "resnet18",
            "threshold": threshold,
            "exchange": True,
            "ensemble": True,
            "decoder_widths": WIDTHS,
        },
    }


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def _inputs(size=32):
    g = torch.Generator().manual_seed(1)
    return {"rgb": torch.randn(1, 3, size, size, generator=g), "depth": torch.randn(1, 3, size, size, generator=g)}


def test_converted_checkpoint_round_trip_keeps_widths_threshold_and_outputs(tmp_path):
    model = _refinenet()
    path = tmp_path / "converted.pt"
    atomic_torch_save(weights_checkpoint(model.state_dict(), _converted_config()), path)
    loaded = cen.load_model(path)
    assert isinstance(loaded, RefineNetCEN) and loaded.names == ("rgb", "depth")
    assert loaded.threshold == 0.05 and loaded.config["decoder_widths"] == WIDTHS
    thresholds = {m.threshold for m in loaded.modules() if getattr(m, "exchange", False)}
    assert thresholds == {0.05}  # every exchanging norm, not only the attribute
    _same_state(model, loaded)
    model.eval(), loaded.eval()
    x = _inputs()
    with torch.no_grad():
        a, b = model(x), loaded(x)
    for key in ("rgb", "depth", "ensemble"):
        assert torch.equal(a[key], b[key]), key


def test_older_converted_form_is_still_read(tmp_path):
    model = _refinenet(threshold=0.03)
    path = tmp_path / "old.pt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "config": {
                "backbone": "resnet18",
                "num_classes": 5,
                "modalities": ["rgb", "depth"],
                "threshold": 0.03,
                "decoder_widths": WIDTHS,
            },
        },
        path,
    )
    loaded = cen.load_model(path)
    assert loaded.threshold == 0.03
    _same_state(model, loaded)


def test_training_checkpoints_round_trip(tmp_path):
    cfg = load_config(
        None,
        tiny_overrides(
            tmp_path,
            "eval.test=false",
            "fusion.threshold=0.07",
            "optim.stages=[{epochs: 1, encoder_lr: 0.05, decoder_lr: 0.05}]",
        ),
    )
    trainer = Trainer(cfg, datasets=fake_datasets())
    trainer.fit()
    for name in ("last.pt", "best.pt"):
        loaded = cen.load_model(tmp_path / "run" / name)
        assert isinstance(loaded, TinySegNet) and loaded.num_classes == 3
        assert {m.threshold for m in loaded.modules() if getattr(m, "exchange", False)} == {0.07}
    _same_state(trainer.model, cen.load_model(tmp_path / "run" / "last.pt"))
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["version"] == 2 and set(ckpt["models"]) == set(ckpt["optimizers"]) == {"model"}
    # a version-1 training checkpoint (one "model", one "optimizer") is still read
    v1 = {k: v for k, v in ckpt.items() if k not in ("models", "optimizers", "kind")}
    v1.update(version=1, model=ckpt["models"]["model"], optimizer=ckpt["optimizers"]["model"])
    torch.save(v1, tmp_path / "v1.pt")
    _same_state(trainer.model, cen.load_model(tmp_path / "v1.pt"))


def test_loading_is_strict_and_errors_name_the_problem(tmp_path):
    model = TinySegNet(3, ["rgb", "depth"])
    config = {"modalities": ["rgb", "depth"], "data": {"num_classes": 3}, "model": {"name": "tiny"}}
    state = model.state_dict()

    def write(name, state=state, config=config):
        path = tmp_path / name
        atomic_torch_save(weights_checkpoint(state, config), path)
        return path

    cen.load_model(write("ok.pt"))  # the right model loads
    missing = {k: v for k, v in state.items() if k != "model.1.bias"}
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint \(1\): model.1.bias"):
        cen.load_model(write("missing.pt", missing))
    extra = {**state, "surplus.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"not in the model \(1\): surplus.weight"):
        cen.load_model(write("extra.pt", extra))
    with pytest.raises(CheckpointError, match=r"shape mismatches .*model.1.weight"):
        cen.load_model(write("classes.pt", config={**config, "data": {"num_classes": 4}}))
    with pytest.raises(CheckpointError, match="unknown config key 'model.nonsense'"):
        cen.load_model(write("badcfg.pt", config={**config, "model": {"name": "tiny", "nonsense": 1}}))
    torch.save({"format": FORMAT, "version": 2, "kind": "weights", "model": state}, tmp_path / "nocfg.pt")
    with pytest.raises(CheckpointError, match="holds no config"):
        cen.load_model(tmp_path / "nocfg.pt")
    torch.save(state, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="bare state dict"):
        cen.load_model(tmp_path / "bare.pt")
    torch.save({"format": FORMAT, "version": 3, "model": state}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="version 3"):
        cen.load_model(tmp_path / "future.pt")


def test_predict_uses_the_converted_model(tmp_path):
    # non-default decoder widths and threshold used to fail (or silently reset) in cen predict
    model = _refinenet()
    path = tmp_path / "converted.pt"
    atomic_torch_save(weights_checkpoint(model.state_dict(), _converted_config()), path)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray(rng.integers(500, 6000, (32, 32), dtype=np.uint16)).save(tmp_path / "depth.png")
    labels = tmp_path / "labels.png"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(path),
                "--rgb",
                str(tmp_path / "rgb.png"),
                "--depth",
                str(tmp_path / "depth.png"),
                "--out",
                str(tmp_path / "pred.png"),
                "--labels",
                str(labels),
            ]
        )
        == 0
    )
    from cen.tasks import build_task
    from cen.tasks.segmentation.evaluate import predict_scores

    model.eval()
    task = build_task(load_config(None, []))
    x = task.read_inputs({"rgb": str(tmp_path / "rgb.png"), "depth": str(tmp_path / "depth.png")})
    expected = predict_scores(model, x)["ensemble"][0].argmax(0).numpy()
    assert np.array_equal(np.asarray(Image.open(labels)), expected)
