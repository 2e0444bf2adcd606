"""Reference checkpoints convert strictly, and a converted checkpoint gives the reference model's outputs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import cen
from cen.cli.main import main as cli_main
from cen.models import RefineNetCEN
from cen.models.reference import (
    ReferenceCheckpointError,
    convert_reference_state_dict,
    infer_reference_config,
    load_reference_checkpoint,
    reference_key_map,
    to_reference_state_dict,
)
from tests.models.reference_refinenet import RefRefineNet

ROOT = Path(__file__).resolve().parents[2]
# The reference's state-dict keys and shapes (facts about the official checkpoint), kept in the repository.
TSV = ROOT / "tests" / "fixtures" / "reference" / "cen_official_refinenet101_nyudv2_keys.tsv"

NUM_CLASSES = 5
THRESHOLD = 2e-2
# A ResNet-50 encoder with a narrow decoder (same blocks and names, fewer channels)
# keeps the files and forwards small; the TSV tests cover the real widths.
WIDTHS = (64, 32, 32, 16)


def read_tsv() -> dict[str, tuple[tuple[int, ...], str]]:
    out = {}
    for line in TSV.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        out[key] = ((), dtype) if shape == "scalar" else (tuple(int(s) for s in shape.split("x")), dtype)
    return out


def tsv_state_dict() -> dict[str, torch.Tensor]:
    """The official checkpoint's keys, shapes and dtypes, as meta tensors (no memory)."""
    return {k: torch.empty(s, dtype=getattr(torch, d), device="meta") for k, (s, d) in read_tsv().items()}


@pytest.fixture(scope="module")
def meta_r101():
    with torch.device("meta"):
        return RefineNetCEN("resnet101", 40, ("rgb", "depth"))


# -- keys and shapes ------------------------------------------------------------


def test_expected_reference_keys_are_exactly_the_official_checkpoints(meta_r101):
    expected = {f"module.{k}": tuple(e.shape) for k, e in reference_key_map(meta_r101).items()}
    official = {k: s for k, (s, _) in read_tsv().items()}
    assert sorted(set(expected) - set(official)) == []
    assert sorted(set(official) - set(expected)) == []
    assert {k: s for k, s in expected.items() if official[k] != s} == {}
    assert len(official) == 1233


def test_official_keys_map_onto_refinenet101_each_used_once(meta_r101):
    sd = tsv_state_dict()
    assert infer_reference_config(sd) == {
        "backbone": "resnet101",
        "num_classes": 40,
        "num_modalities": 2,
        "decoder_widths": [512, 256, 256, 256],
    }
    ours = convert_reference_state_dict({"segmenter": sd, "epoch_start": 7})
    target = meta_r101.state_dict()
    assert list(ours) == list(target)
    assert all(ours[k].shape == target[k].shape for k in target)
    # Every official entry is used exactly once: the numbers of elements add up.
    used = sum(e.shape.numel() for e in reference_key_map(meta_r101).values())
    assert used == sum(math.prod(s) for s, _ in read_tsv().values())
    meta_r101.load_state_dict(ours, strict=True)


def test_mismatches_are_all_listed_together():
    sd = tsv_state_dict()
    del sd["module.layer3.7.bn2.bn_1.running_var"]
    sd["module.layer3.7.bn2.bn_2.weight"] = torch.empty(256, device="meta")
    sd["module.clf_conv.module.bias"] = torch.empty(41, device="meta")
    with pytest.raises(ReferenceCheckpointError) as info:
        convert_reference_state_dict(sd, source="ckpt.pth")
    msg = str(info.value)
    assert "ckpt.pth" in msg
    assert "unused keys (1)" in msg and "module.layer3.7.bn2.bn_2.weight" in msg
    assert "missing keys (1)" in msg and "module.layer3.7.bn2.bn_1.running_var" in msg
    assert "shape mismatches (1)" in msg and "module.clf_conv.module.bias: checkpoint (41,), expected (40,)" in msg


def test_checkpoint_for_another_architecture_is_refused(meta_r101):
    with torch.device("meta"):
        r50 = RefineNetCEN("resnet50", 40)
    with pytest.raises(ReferenceCheckpointError, match=r"unused keys \(\d+\)[\s\S]*layer3\.6\."):
        convert_reference_state_dict(tsv_state_dict(), r50)
    with pytest.raises(ReferenceCheckpointError, match="2 modalities .* 3 names"):
        convert_reference_state_dict(tsv_state_dict(), modalities=("rgb", "depth", "normal"))


def test_not_a_reference_state_dict():
    with pytest.raises(ReferenceCheckpointError, match="bn1.bn_0.weight"):
        convert_reference_state_dict({"conv1.weight": torch.zeros(1)})
    with pytest.raises(ReferenceCheckpointError, match="expected a state dict"):
        convert_reference_state_dict({"epoch": 3, "best_val": 0.5})


def test_truncated_and_foreign_files_name_the_file(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"segmenter": {"module.alpha": torch.ones(2)}}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(ReferenceCheckpointError, match="truncated.pth: not a readable PyTorch checkpoint"):
        load_reference_checkpoint(truncated)
    foreign = tmp_path / "notes.txt"
    foreign.write_text("hello")
    with pytest.raises(ReferenceCheckpointError, match="notes.txt"):
        load_reference_checkpoint(foreign)
    listed = tmp_path / "list.pth"
    torch.save([torch.ones(1)], listed)
    with pytest.raises(ReferenceCheckpointError, match="list.pth: expected a state dict"):
        load_reference_checkpoint(listed)
    with pytest.raises(ReferenceCheckpointError, match="missing.pth: no such file"):
        load_reference_checkpoint(tmp_path / "missing.pth")
    assert cli_main(["convert-checkpoint", str(truncated), str(tmp_path / "out.pth")]) == 1
    assert not (tmp_path / "out.pth").exists()


# -- outputs --------------------------------------------------------------------


def _randomize(ref: RefRefineNet) -> int:
    """Random norm parameters and statistics; some bn2 gammas under the threshold. Returns how many."""
    gen = torch.Generator().manual_seed(1)
    below = 0
    with torch.no_grad():
        for name, mod in ref.named_modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                c = mod.num_features
                mod.weight.copy_(torch.rand(c, generator=gen) * 0.8 + 0.4)
                mod.bias.copy_(torch.randn(c, generator=gen) * 0.1)
                mod.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                mod.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                mod.num_batches_tracked.fill_(123)
                if ".bn2.bn_" in name:
                    small = torch.rand(c, generator=gen) < 0.3
                    signs = torch.where(torch.rand(c, generator=gen) < 0.5, -1.0, 1.0)
                    mod.weight.copy_(torch.where(small, signs * THRESHOLD * 0.5, mod.weight))
                    below += int(small.sum())
        ref.alpha.copy_(torch.tensor([0.3, -0.2]))
    return below


@pytest.fixture(scope="module")
def reference_model():
    torch.manual_seed(0)
    ref = RefRefineNet(layers=(3, 4, 6, 3), num=2, num_classes=NUM_CLASSES, threshold=THRESHOLD, widths=WIDTHS)
    assert _randomize(ref) > 100
    return ref.eval()


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(2)
    return torch.randn(2, 3, 64, 64, generator=gen), torch.randn(2, 3, 64, 64, generator=gen)


def _assert_same(ours: dict, ref_outs: list):
    for got, want in zip((ours["rgb"], ours["depth"], ours["ensemble"]), ref_outs):
        assert got.shape == want.shape == (2, NUM_CLASSES, 16, 16)
        scale = want.abs().max().item()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * scale)


def test_converted_checkpoint_gives_reference_outputs(reference_model, inputs):
    rgb, depth = inputs
    with torch.no_grad():
        ref_outs, ref_alpha = reference_model([rgb.clone(), depth.clone()])
    # As the reference training script saves it: DataParallel prefix, under "segmenter".
    saved = {"segmenter": {f"module.{k}": v for k, v in reference_model.state_dict().items()}, "epoch_start": 5}
    sd = convert_reference_state_dict(saved)
    model = RefineNetCEN("resnet50", NUM_CLASSES, ("rgb", "depth"), THRESHOLD, decoder_widths=WIDTHS).eval()
    model.load_state_dict(sd, strict=True)
    with torch.no_grad():
        ours = model({"rgb": rgb, "depth": depth})
    _assert_same(ours, ref_outs)
    torch.testing.assert_close(torch.stack(list(model.ensemble.weights().values())), ref_alpha)

    # The exchange really happened: without it the outputs differ.
    for norm in model.modules():
        if getattr(norm, "exchange", False):
            norm.exchange = False
    with torch.no_grad():
        plain = model({"rgb": rgb, "depth": depth})
    assert (plain["rgb"] - ref_outs[0]).abs().max() > 1e-2 * ref_outs[0].abs().max()


def test_convert_checkpoint_command_writes_a_loadable_checkpoint(reference_model, inputs, tmp_path, capsys):
    rgb, depth = inputs
    src = tmp_path / "refinenet_ckpt.pth.tar"
    torch.save({"segmenter": {f"module.{k}": v for k, v in reference_model.state_dict().items()}}, src)
    dst = tmp_path / "converted.pt"
    assert cli_main(["convert-checkpoint", str(src), str(dst), "--threshold", str(THRESHOLD)]) == 0
    assert "resnet50" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    obj = torch.load(dst, map_location="cpu", weights_only=True)
    assert set(obj) == {"format", "version", "kind", "model", "config"}
    assert (obj["format"], obj["version"], obj["kind"]) == ("cen-checkpoint", 2, "weights")
    # Everything that rebuilds the model is recorded, non-default decoder widths and threshold included.
    assert obj["config"] == {
        "task": "segmentation",
        "modalities": ["rgb", "depth"],
        "data": {"num_classes": NUM_CLASSES},
        "model": {
            "name": "refinenet",
            "backbone": "resnet50",
            "ensemble": True,
            "decoder_widths": list(WIDTHS),
        },
        "fusion": {
            "strategy": "exchange",
            "options": {},
            "threshold": THRESHOLD,
            "points": "auto",
            "shared_convs": True,
        },
    }
    model = cen.load_model(dst).eval()
    assert model.names == ("rgb", "depth") and model.num_classes == NUM_CLASSES
    assert model.decoder.widths == WIDTHS and model.threshold == THRESHOLD
    with torch.no_grad():
        ref_outs, _ = reference_model([rgb.clone(), depth.clone()])
        ours = model({"rgb": rgb, "depth": depth})
    _assert_same(ours, ref_outs)

    # A threshold other than the default comes back, in the model's norms too.
    other = tmp_path / "theta.pt"
    assert cli_main(["convert-checkpoint", str(src), str(other), "--threshold", "0.05"]) == 0
    assert torch.load(other, weights_only=True)["config"]["fusion"]["threshold"] == 0.05
    reloaded = cen.load_model(other)
    assert reloaded.threshold == 0.05
    assert {m.threshold for m in reloaded.modules() if getattr(m, "exchange", False)} == {0.05}


def test_command_lists_mismatches(reference_model, tmp_path, capsys):
    sd = {f"module.{k}": v for k, v in reference_model.state_dict().items()}
    sd.pop("module.layer2.1.conv2.module.weight")
    sd["module.extra.weight"] = torch.zeros(1)
    src = tmp_path / "broken.pth"
    torch.save(sd, src)
    assert cli_main(["convert-checkpoint", str(src), str(tmp_path / "out.pt")]) == 1
    err = capsys.readouterr().err
    assert "broken.pth" in err and "module.extra.weight" in err and "module.layer2.1.conv2.module.weight" in err
    assert not (tmp_path / "out.pt").exists()


@pytest.mark.parametrize("modalities", [("rgb", "depth"), ("rgb", "depth", "normal"), ("depth",)])
def test_round_trip_through_the_reference_format(modalities):
    torch.manual_seed(4)
    model = RefineNetCEN("resnet18", 3, modalities, decoder_widths=(16, 8, 8, 8))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    ref = to_reference_state_dict(model)
    assert "module.bn1.bn_0.weight" in ref and "module.alpha" in ref
    assert f"module.bn1.bn_{len(modalities) - 1}.weight" in ref
    back = convert_reference_state_dict(ref, modalities=modalities)
    own = model.state_dict()
    assert list(back) == list(own)
    assert all(torch.equal(back[k], own[k]) for k in own)


def test_numpy_extras_load_safely_and_other_objects_need_trust(tmp_path):
    import argparse

    import numpy as np

    sd = {"module.alpha": torch.ones(2)}
    with_numpy = tmp_path / "best.pth"
    torch.save({"segmenter": sd, "best_val": np.float64(51.1), "epoch_start": 3}, with_numpy)
    assert list(load_reference_checkpoint(with_numpy)) == ["module.alpha"]
    with_args = tmp_path / "args.pth"
    torch.save({"segmenter": sd, "args": argparse.Namespace(lr=1)}, with_args)
    with pytest.raises(
        ReferenceCheckpointError, match=r"args.pth: holds Python objects \(argparse.Namespace\).*--trust"
    ):
        load_reference_checkpoint(with_args)
    assert list(load_reference_checkpoint(with_args, trust=True)) == ["module.alpha"]
