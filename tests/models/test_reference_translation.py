"""Reference translation generators convert strictly, and the converted model gives the reference's outputs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import cen
from cen.cli.main import main as cli_main
from cen.core.defaults import TRANSLATION_THRESHOLD
from cen.models import UNetCEN
from cen.models.reference import ReferenceCheckpointError
from cen.models.reference_translation import (
    convert_reference_generator,
    infer_generator_config,
    reference_generator_key_map,
    to_reference_generator_state_dict,
    unused_norm_keys,
)
from tests.models.reference_unet import RefUNetGenerator

ROOT = Path(__file__).resolve().parents[2]
# The reference's state-dict keys and shapes (facts about the official checkpoints), kept in the repository.
REF_DIR = ROOT / "tests" / "fixtures" / "reference"
GEN_TSV = REF_DIR / "cen_official_translation_generator_2inputs_keys.tsv"
DISC_TSV = REF_DIR / "cen_official_translation_discriminator_keys.tsv"

NAMES = ("reshading", "edge_texture")
NGF = 4  # the reference's 8 levels at 256x256, narrow


def read_tsv(path: Path) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of a reference key list (lines ``key<TAB>(64, 3, 4, 4)<TAB>float32``)."""
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith(("#", "key\t")) or not line.strip():
            continue
        key, shape, _ = line.split("\t")
        out[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return out


def tsv_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The reference's keys and shapes as meta tensors (no memory); counters are int64 as there."""
    return {
        k: torch.empty(s, dtype=torch.long if k.endswith("num_batches_tracked") else torch.float32, device="meta")
        for k, s in read_tsv(path).items()
    }


# -- keys and shapes --------------------------------------------------------------


def test_expected_keys_plus_the_unused_norms_are_exactly_the_references():
    with torch.device("meta"):
        model = UNetCEN(NAMES)
    expected = {k: tuple(e.shape) for k, e in reference_generator_key_map(model).items()}
    unused = {k: tuple(s) for k, s in unused_norm_keys(model).items()}
    assert not set(expected) & set(unused)
    assert {**expected, **unused} == read_tsv(GEN_TSV)
    # The reference's never-applied norms: 2,316 parameters (weight + bias) with ngf 64, two inputs.
    assert sum(math.prod(s) for k, s in unused.items() if k.endswith(("weight", "bias"))) == 2_316


def test_reference_key_list_converts_strictly_and_completely():
    sd = tsv_state_dict(GEN_TSV)
    assert infer_generator_config(sd) == {
        "num_modalities": 2,
        "in_channels": 3,
        "out_channels": 3,
        "ngf": 64,
        "num_downs": 8,
    }
    converted = convert_reference_generator(sd, NAMES)
    with torch.device("meta"):
        model = UNetCEN(NAMES)
    target = model.state_dict()
    assert list(converted.state_dict) == list(target)
    assert all(converted.state_dict[k].shape == target[k].shape for k in target)
    model.load_state_dict(converted.state_dict, strict=True)
    # Every reference entry is either used once or dropped, never both: the element counts add up.
    used = sum(e.shape.numel() for e in reference_generator_key_map(model).values())
    dropped = sum(sd[k].numel() for k in converted.dropped)
    assert used + dropped == sum(t.numel() for t in sd.values())
    assert sorted({k.split(".")[0] for k in converted.dropped}) == ["conv1", "conv8", "deconv8"]
    assert len(converted.dropped) == 3 * 2 * 5
    assert converted.config == {
        "task": "translation",
        "modalities": list(NAMES),
        "data": {"dataset": "taskonomy", "target": "rgb"},
        "model": {
            "name": "unet",
            "ngf": 64,
            "num_downs": 8,
            "ndf": 64,
            "ensemble": True,
        },
        "fusion": {"threshold": TRANSLATION_THRESHOLD},
    }


def test_mismatches_are_all_listed_together():
    sd = tsv_state_dict(GEN_TSV)
    del sd["conv4.insnorm_conv.insnorm_1.running_var"]
    sd["conv4.insnorm_conv.insnorm_2.weight"] = torch.empty(512, device="meta")
    sd["deconv7.deconv.module.bias"] = torch.empty(65, device="meta")
    sd["conv8.insnorm_conv.insnorm_0.bias"] = torch.empty(7, device="meta")  # a dropped norm is still checked
    with pytest.raises(ReferenceCheckpointError) as info:
        convert_reference_generator(sd, NAMES, source="G.pth")
    msg = str(info.value)
    assert msg.startswith("G.pth does not match the reference translation generator (2 inputs, ngf 64, 8 levels)")
    assert "unused keys (1)" in msg and "conv4.insnorm_conv.insnorm_2.weight" in msg
    assert "missing keys (1)" in msg and "conv4.insnorm_conv.insnorm_1.running_var" in msg
    assert "shape mismatches (2)" in msg and "deconv7.deconv.module.bias: checkpoint (65,), expected (64,)" in msg
    assert "conv8.insnorm_conv.insnorm_0.bias: checkpoint (7,), expected (512,)" in msg


def test_discriminator_and_foreign_state_dicts_are_refused():
    with pytest.raises(ReferenceCheckpointError, match=r"D.pth: this is the reference translation \*discriminator\*"):
        convert_reference_generator(tsv_state_dict(DISC_TSV), NAMES, source="D.pth")
    with pytest.raises(ReferenceCheckpointError, match="not a reference CEN translation generator"):
        convert_reference_generator({"conv1.weight": torch.zeros(1)}, NAMES)
    with pytest.raises(ReferenceCheckpointError, match=r"generator for 2 inputs .* 3 names were given"):
        convert_reference_generator(tsv_state_dict(GEN_TSV), ("normal", "reshading", "edge_texture"))
    with pytest.raises(ReferenceCheckpointError, match="target 'rgb' is also an input"):
        convert_reference_generator(tsv_state_dict(GEN_TSV), ("rgb", "normal"))


@pytest.mark.parametrize("names", [NAMES, ("depth_zbuffer", "normal", "edge_texture"), ("reshading",)])
def test_round_trip_through_the_reference_format(names):
    torch.manual_seed(3)
    model = UNetCEN(names, ngf=2, num_downs=5)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    ref = to_reference_generator_state_dict(model)
    assert f"conv2.insnorm_conv.insnorm_{len(names) - 1}.weight" in ref and "alpha" in ref
    # As saved under a DataParallel wrapper and a "state_dict" key: both accepted.
    wrapped = {"state_dict": {f"module.{k}": v for k, v in ref.items()}}
    back = convert_reference_generator(wrapped, names)
    own = model.state_dict()
    assert list(back.state_dict) == list(own)
    assert all(torch.equal(back.state_dict[k], own[k]) for k in own)
    single_alpha = ["module.alpha"] if len(names) == 1 else []  # softmax of one alpha is 1: dropped, said
    assert all(k.startswith("module.") for k in back.dropped) and len(back.dropped) == 3 * len(names) * 5 + len(
        single_alpha
    )
    assert [k for k in back.dropped if "insnorm" not in k] == single_alpha


# -- outputs --------------------------------------------------------------------------


def _randomize(ref: RefUNetGenerator) -> int:
    """Random norm parameters and statistics; ~30 % of the exchanging gammas under theta. Returns how many."""
    gen = torch.Generator().manual_seed(1)
    below = 0
    with torch.no_grad():
        for name, mod in ref.named_modules():
            if isinstance(mod, torch.nn.InstanceNorm2d):
                c = mod.num_features
                mod.weight.copy_(torch.rand(c, generator=gen) * 0.8 + 0.4)
                mod.bias.copy_(torch.randn(c, generator=gen) * 0.1)
                mod.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                mod.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                mod.num_batches_tracked.fill_(77)
                if name.startswith(tuple(f"conv{k}." for k in range(2, 8))):
                    small = torch.rand(c, generator=gen) < 0.3
                    signs = torch.where(torch.rand(c, generator=gen) < 0.5, -1.0, 1.0)
                    mod.weight.copy_(torch.where(small, signs * TRANSLATION_THRESHOLD * 0.5, mod.weight))
                    below += int(small.sum())
        ref.alpha.copy_(torch.tensor([0.3, -0.2]))
    return below


@pytest.fixture(scope="module")
def reference_model():
    torch.manual_seed(0)
    ref = RefUNetGenerator(num=2, ngf=NGF, threshold=TRANSLATION_THRESHOLD)
    assert _randomize(ref) > 20
    return ref


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(2)
    return [torch.rand(2, 3, 256, 256, generator=gen) * 2 - 1 for _ in NAMES]


def _set_mode(model: torch.nn.Module, mode: str) -> None:
    """``"instance"``: norms on instance statistics (train mode) with dropout off; ``"running"``: eval mode."""
    model.train(mode == "instance")
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()


def _run_both(ref, model, xs, mode):
    _set_mode(ref, mode)
    _set_mode(model, mode)
    with torch.no_grad():
        ref_outs, ref_ens = ref([x.clone() for x in xs])
        ours = model(dict(zip(NAMES, xs)))
    return ours, [*ref_outs, ref_ens]


@pytest.mark.parametrize("mode", ["instance", "running"])
def test_converted_generator_gives_reference_outputs(reference_model, inputs, mode):
    converted = convert_reference_generator(reference_model.state_dict(), NAMES)
    model = UNetCEN(NAMES, ngf=NGF)
    model.load_state_dict(converted.state_dict, strict=True)
    ours, want = _run_both(reference_model, model, inputs, mode)
    for got, ref in zip((ours[NAMES[0]], ours[NAMES[1]], ours["ensemble"]), want):
        assert got.shape == ref.shape == (2, 3, 256, 256)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)

    # The exchange really happened: the same weights without exchange give other outputs.
    plain = UNetCEN(NAMES, ngf=NGF, exchange=False)
    plain.load_state_dict(converted.state_dict, strict=True)
    other, _ = _run_both(reference_model, plain, inputs, mode)
    assert (other[NAMES[0]] - want[0]).abs().max() > 1e-3


# -- the command ---------------------------------------------------------------------------


def _read_written(path: Path) -> dict:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    assert set(obj) == {"format", "version", "kind", "model", "config"}
    assert (obj["format"], obj["version"], obj["kind"]) == ("cen-checkpoint", 2, "weights")
    return obj


def test_convert_checkpoint_command_writes_the_generator(reference_model, inputs, tmp_path, capsys):
    src = tmp_path / "G_epoch_300.pth"
    torch.save(reference_model.state_dict(), src)
    dst = tmp_path / "converted.pt"
    assert cli_main(["convert-checkpoint", str(src), str(dst), "--modalities", *NAMES]) == 0
    out = capsys.readouterr().out
    assert "dropped 30 entries" in out
    assert (
        "(conv1.insnorm_conv, conv8.insnorm_conv, deconv8.insnorm_deconv; 156 parameters)" in out
    )  # 2 * 2 * (4 + 32 + 3)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    obj = _read_written(dst)
    assert obj["config"] == {
        "task": "translation",
        "modalities": list(NAMES),
        "data": {"dataset": "taskonomy", "target": "rgb"},
        "model": {
            "name": "unet",
            "ngf": NGF,
            "num_downs": 8,
            "ndf": 64,
            "ensemble": True,
        },
        "fusion": {"threshold": TRANSLATION_THRESHOLD},
    }
    section = {k: v for k, v in obj["config"]["model"].items() if k not in ("name", "ndf")}
    model = UNetCEN(obj["config"]["modalities"], **section)
    model.load_state_dict(obj["model"], strict=True)
    ours, want = _run_both(reference_model, model, inputs, "instance")
    torch.testing.assert_close(ours["ensemble"], want[2], rtol=0, atol=1e-5)


def test_converted_generator_loads_with_cen_load_model(reference_model, inputs, tmp_path):
    src, dst = tmp_path / "G.pth", tmp_path / "converted.pt"
    torch.save(reference_model.state_dict(), src)
    assert cli_main(["convert-checkpoint", str(src), str(dst), "--modalities", *NAMES]) == 0
    loaded = cen.load_model(dst)
    assert isinstance(loaded, UNetCEN) and loaded.names == NAMES and loaded.threshold == TRANSLATION_THRESHOLD
    ours, want = _run_both(reference_model, loaded, inputs, "instance")
    for got, ref in zip((ours[NAMES[0]], ours[NAMES[1]], ours["ensemble"]), want):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


def test_convert_checkpoint_command_options_and_errors(reference_model, tmp_path, capsys):
    src = tmp_path / "G.pth"
    torch.save(reference_model.state_dict(), src)
    dst = tmp_path / "out.pt"
    assert cli_main(["convert-checkpoint", str(src), str(dst)]) == 1
    assert "translation generator with 2 inputs; name them" in capsys.readouterr().err
    assert cli_main(["convert-checkpoint", str(src), str(dst), "--modalities", "reshading", "shading"]) == 1
    assert "unknown Taskonomy domain 'shading'" in capsys.readouterr().err
    assert cli_main(["convert-checkpoint", str(src), str(dst), "--model", "refinenet"]) == 1
    assert "bn1.bn_0.weight" in capsys.readouterr().err
    assert not dst.exists()
    args = [
        "--model",
        "unet",
        "--modalities",
        "normal",
        "reshading",
        "--threshold",
        "0.03",
        "--target",
        "depth_zbuffer",
    ]
    assert cli_main(["convert-checkpoint", str(src), str(dst), *args]) == 0
    config = _read_written(dst)["config"]
    assert config["modalities"] == ["normal", "reshading"] and config["data"]["target"] == "depth_zbuffer"
    assert config["fusion"]["threshold"] == 0.03


@pytest.mark.parametrize("kwargs", [{"head": "concat"}, {"fusion": "sum"}])
def test_reference_export_refuses_what_the_format_cannot_hold(kwargs):
    from cen.models import UNetCEN
    from cen.models.reference_translation import to_reference_generator_state_dict

    model = UNetCEN(["reshading", "edge_texture"], ngf=4, num_downs=5, **kwargs)
    with pytest.raises(ValueError, match="reference format cannot hold"):
        to_reference_generator_state_dict(model)


def test_every_model_kind_of_the_command_has_a_converter():
    from cen.cli.convert_checkpoint import CONVERTERS, MODEL_KINDS

    assert set(MODEL_KINDS) == {"auto", *CONVERTERS}
