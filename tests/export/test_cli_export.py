"""``cen export`` through its ``register`` (the lead adds it to the ``cen`` command)."""

import argparse

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("onnx", reason="ONNX export needs onnx: pip install -e '.[export]'")
pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript: pip install -e '.[export]'")
pytest.importorskip("onnxruntime", reason="running ONNX needs onnxruntime: pip install -e '.[export]'")

import cen  # noqa: E402
from cen.cli import export as export_cli  # noqa: E402
from cen.export import OnnxRunner  # noqa: E402

from .helpers import inputs, randomise_norms  # noqa: E402

CONFIG = {
    "task": "segmentation",
    "modalities": ["rgb", "depth"],
    "data": {"num_classes": 5},
    "model": {"name": "refinenet", "backbone": "resnet18", "decoder_widths": [32, 16, 16, 16]},
}


def _parse(argv):
    parser = argparse.ArgumentParser(prog="cen")
    export_cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


@pytest.fixture
def checkpoint(tmp_path):
    from cen.tasks import build_task
    from cen.train.checkpoint import weights_checkpoint
    from cen.train.config import from_container

    load_model = cen.load_model
    model = randomise_norms(build_task(from_container(CONFIG)).build_model())
    path = tmp_path / "weights.pt"
    torch.save(weights_checkpoint(model.state_dict(), CONFIG), path)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    return path, config, load_model(path).eval()


def test_cen_export_writes_a_file_equal_to_the_checkpoint(checkpoint, tmp_path, capsys):
    path, config, model = checkpoint
    out = tmp_path / "sub" / "model.onnx"
    args = _parse(["export", str(config), "--checkpoint", str(path), "--out", str(out), "--size", "32", "48"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "max |onnxruntime - pytorch|" in printed
    runner = OnnxRunner(out)
    assert runner.inputs == ("rgb", "depth") and runner.model_config["backbone"] == "resnet18"
    x = inputs(runner.inputs, 2, (40, 56))
    with torch.no_grad():
        expected = model(x)
    for key, value in runner(x).items():
        assert np.abs(expected[key].numpy() - value).max() < 1e-4, key


def test_cen_export_subset_and_overrides(checkpoint, tmp_path):
    path, config, _ = checkpoint
    out = tmp_path / "rgb.onnx"
    args = _parse(["export", str(config), "--checkpoint", str(path), "--out", str(out), "--modalities", "rgb",
                   "--no-verify"])  # fmt: skip
    assert args.func(args) == 0
    assert OnnxRunner(out).inputs == ("rgb",)


def test_cen_export_config_with_other_modalities_is_an_error(checkpoint, tmp_path):
    path, config, _ = checkpoint
    args = _parse(
        ["export", str(config), "modalities=[rgb]", "--checkpoint", str(path), "--out", str(tmp_path / "m.onnx")]
    )
    with pytest.raises(
        export_cli.ExportCommandError, match=r"modalities \['rgb', 'depth'\], but .*config.yaml gives \['rgb'\]"
    ):
        args.func(args)


def test_cen_export_unknown_subset_is_a_user_error(checkpoint, tmp_path):
    from cen.errors import UserError

    path, config, _ = checkpoint
    args = _parse(["export", str(config), "--checkpoint", str(path), "--out", str(tmp_path / "m.onnx"),
                   "--modalities", "hha"])  # fmt: skip
    with pytest.raises(UserError, match=r"\['hha'\] are not the model's"):
        args.func(args)


def test_cen_export_missing_checkpoint(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    args = _parse(["export", str(config), "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "m.onnx")])
    with pytest.raises(FileNotFoundError, match="--checkpoint .*none.pt: no such file"):
        args.func(args)
