"""Sensor corruptions: each changes what it should and nothing else, grows with the severity,
is deterministic, and refuses a modality kind it is not defined for."""

from __future__ import annotations

import pytest
import torch

from cen.data.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    CorruptModality,
    RandomCorruption,
    corrupt,
    corruption_kinds,
    corruptions_for,
    line_kernel,
    with_corruption,
)
from cen.data.kinds import KINDS
from cen.data.mfnet import MFNet
from cen.data.rgbx import RGBXPack
from cen.data.transforms import segmentation_eval
from cen.data.tvtensors import Depth, wrap
from tests.data.layout_fixtures import make_mfnet, make_rgbx

H, W = 32, 48
DEPTH_CORRUPTIONS = ("depth_holes", "depth_noise", "depth_quantisation")
RGB_CORRUPTIONS = ("low_light", "over_exposure", "motion_blur", "image_noise")


def _rgb(seed: int = 0) -> torch.Tensor:
    return torch.rand(3, H, W, generator=torch.Generator().manual_seed(seed))


def _depth(seed: int = 0) -> torch.Tensor:
    """Metres 0.5-5.5 as a ramp plus noise, replicated to 3 channels, with a few holes."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0.5, 5.0, W).expand(H, W) + 0.5 * torch.rand(H, W, generator=g)
    ramp[::7, ::5] = 0.0
    return ramp.expand(3, H, W).clone()


def _sample(seed: int = 0) -> dict:
    thermal = torch.rand(1, H, W, generator=torch.Generator().manual_seed(seed + 1)).expand(3, H, W).clone()
    mask = torch.randint(0, 9, (H, W), generator=torch.Generator().manual_seed(seed + 2))
    return {
        "rgb": wrap(_rgb(seed), "image"),
        "depth": wrap(_depth(seed), "depth"),
        "thermal": wrap(thermal, "thermal"),
        "mask": wrap(mask, "mask"),
    }


def _gen(seed: int = 5) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_registry_names_the_kinds_of_each_corruption():
    kinds = corruption_kinds()
    assert set(kinds) == {*DEPTH_CORRUPTIONS, *RGB_CORRUPTIONS, "dead_sensor"}
    assert all(kinds[n] == ("depth",) for n in DEPTH_CORRUPTIONS)
    assert all(kinds[n] == ("image",) for n in RGB_CORRUPTIONS)
    assert kinds["dead_sensor"] == KINDS
    assert corruptions_for("thermal") == ("dead_sensor",) and corruptions_for("lidar") == ("dead_sensor",)


@pytest.mark.parametrize(
    "name, kind", [*((n, "depth") for n in DEPTH_CORRUPTIONS), *((n, "image") for n in RGB_CORRUPTIONS)]
)
def test_corruption_changes_only_its_modality_and_keeps_shape(name, kind):
    sample = _sample()
    key = "depth" if kind == "depth" else "rgb"
    before = {k: v.clone() for k, v in sample.items()}
    out = CorruptModality(key, name, 3, seed=1)(sample)
    assert not torch.equal(out[key], before[key])
    assert out[key].shape == before[key].shape and type(out[key]) is type(sample[key])  # stays a tv_tensor
    for k in sample:
        assert torch.equal(sample[k], before[k]), k  # the input sample is not modified in place
        if k != key:
            assert out[k] is sample[k], k  # the other modalities and the mask are untouched


def test_depth_corruptions_keep_holes_zero_and_replicated_channels():
    x = _depth()
    holes = x[0] == 0
    for name in DEPTH_CORRUPTIONS:
        for severity in SEVERITIES:
            y = corrupt(x, name, severity, "depth", _gen())
            assert bool((y[:, holes] == 0).all()), (name, severity)  # a hole stays a real zero
            assert torch.equal(y[0], y[1]) and torch.equal(y[0], y[2]), name
            if name != "depth_holes":
                assert bool((y[:, ~holes] > 0).all()), name  # noise and quantisation never invent holes


def test_depth_holes_are_zeros_nested_and_grow_with_severity():
    x = _depth()
    masks = [corrupt(x, "depth_holes", s, "depth", _gen())[0] == 0 for s in SEVERITIES]
    shares = [float(m.float().mean()) for m in masks]
    assert shares == sorted(shares) and shares[0] >= 0.05 and shares[-1] >= 0.5
    for lower, higher in zip(masks, masks[1:]):
        assert bool((higher | ~lower).all())  # every hole of a lower severity stays a hole
    y = corrupt(x, "depth_holes", 4, "depth", _gen())
    kept = y[0] != 0
    assert torch.equal(y[:, kept], x[:, kept])  # untouched where no hole was made


@pytest.mark.parametrize(
    "name, kind", [*((n, "depth") for n in DEPTH_CORRUPTIONS), *((n, "image") for n in RGB_CORRUPTIONS)]
)
def test_error_grows_with_severity(name, kind):
    x = _depth() if kind == "depth" else _rgb()
    errors = [float((corrupt(x, name, s, kind, _gen()) - x).abs().mean()) for s in (0, *SEVERITIES)]
    assert errors[0] == 0.0
    assert all(a < b for a, b in zip(errors, errors[1:])), errors


def test_rgb_corruptions_act_in_unit_range():
    x = _rgb()
    dark = [float(corrupt(x, "low_light", s, "image").mean()) for s in SEVERITIES]
    assert dark == sorted(dark, reverse=True) and dark[0] < float(x.mean())
    saturated = [float((corrupt(x, "over_exposure", s, "image") >= 1).float().mean()) for s in SEVERITIES]
    assert saturated == sorted(saturated) and saturated[-1] > 0.7
    for name in RGB_CORRUPTIONS:
        y = corrupt(x, name, 5, "image", _gen())
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0, name

    # motion blur lowers the high frequencies more as the line gets longer
    def total_variation(y: torch.Tensor) -> float:
        return float(y.diff(dim=-1).abs().mean() + y.diff(dim=-2).abs().mean())

    tv = [total_variation(corrupt(x, "motion_blur", s, "image", _gen())) for s in (0, *SEVERITIES)]
    assert tv == sorted(tv, reverse=True), tv
    k = line_kernel(5, 0.0)
    assert torch.allclose(k.sum(), torch.tensor(1.0)) and torch.equal(k[2] > 0, torch.ones(5, dtype=torch.bool))


def test_dead_sensor_is_zeros_for_every_kind():
    for kind in KINDS:
        assert torch.equal(corrupt(_rgb(), "dead_sensor", 1, kind), torch.zeros(3, H, W)), kind
    out = CorruptModality("thermal", "dead_sensor", 2)(_sample())
    assert not bool(out["thermal"].any()) and bool(out["rgb"].any()) and bool(out["depth"].any())


def test_severity_zero_is_no_corruption():
    x = _rgb()
    for name in CORRUPTIONS:
        kind = "depth" if name.startswith("depth") else "image"
        assert torch.equal(corrupt(x, name, 0, kind), x)
    sample = _sample()
    out = CorruptModality("rgb", "image_noise", 0)(sample)
    assert all(out[k] is sample[k] for k in sample)


def test_deterministic_given_generator_and_seed():
    x = _rgb()
    for name in ("depth_holes", "depth_noise", "motion_blur", "image_noise"):
        kind = "depth" if name.startswith("depth") else "image"
        base = _depth() if kind == "depth" else x
        a, b = corrupt(base, name, 3, kind, _gen(7)), corrupt(base, name, 3, kind, _gen(7))
        assert torch.equal(a, b), name
        assert not torch.equal(a, corrupt(base, name, 3, kind, _gen(8))), name
    # the evaluation form: the same sample gets the same corruption, whatever came before it
    noisy = CorruptModality("rgb", "image_noise", 2, seed=3)
    first = noisy(_sample(0))["rgb"]
    noisy(_sample(1))
    torch.manual_seed(123)  # the global generator does not matter
    assert torch.equal(noisy(_sample(0))["rgb"], first)
    assert not torch.equal(CorruptModality("rgb", "image_noise", 2, seed=4)(_sample(0))["rgb"], first)
    # the training form: the same generator seed draws the same corruptions
    runs = []
    for _ in range(2):
        random = RandomCorruption(p=0.7, generator=_gen(11))
        runs.append([random(_sample(i)) for i in range(6)])
    for a, b in zip(*runs):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_random_corruption_touches_one_modality_by_kind():
    random = RandomCorruption(p=1.0, generator=_gen(2))
    changed = []
    for i in range(30):
        sample = _sample(i)
        out = random(sample)
        diff = [k for k in sample if not torch.equal(out[k], sample[k])]
        assert len(diff) <= 1 and "mask" not in diff
        changed += diff
    assert {"rgb", "depth", "thermal"} <= set(changed)  # thermal only through dead_sensor
    never = RandomCorruption(p=0.0, generator=_gen(2))
    sample = _sample()
    assert all(never(sample)[k] is sample[k] for k in sample)
    only_rgb = RandomCorruption(p=1.0, corruptions=["low_light"], generator=_gen(3))
    out = only_rgb(sample)
    assert not torch.equal(out["rgb"], sample["rgb"]) and out["depth"] is sample["depth"]
    with pytest.raises(ValueError, match="corruptions \\['fog'\\]"):
        RandomCorruption(corruptions=["fog"])
    with pytest.raises(ValueError, match="severity must be an integer in 0..5"):
        RandomCorruption(severities=[6])


def test_clear_errors_for_kinds_names_and_severities():
    with pytest.raises(ValueError, match=r"corruption 'depth_holes' is not defined for modality 'rgb' of kind 'image'; "
                       r"it applies to kinds depth; for image use one of \['low_light'"):  # fmt: skip
        CorruptModality("rgb", "depth_holes", 2)(_sample())
    with pytest.raises(ValueError, match="'motion_blur' is not defined for modality 'thermal' of kind 'thermal'"):
        CorruptModality("thermal", "motion_blur", 2, kind="thermal")
    with pytest.raises(ValueError, match="'low_light' is not defined for modality kind 'depth'"):
        corrupt(_depth(), "low_light", 1, "depth")
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        CorruptModality("rgb", "fog", 1)
    with pytest.raises(ValueError, match="severity must be an integer in 0..5"):
        CorruptModality("rgb", "low_light", 6)
    with pytest.raises(ValueError, match="the sample has no modality 'event'"):
        CorruptModality("event", "dead_sensor", 1)(_sample())


def test_in_a_dataset_pipeline_corruption_acts_before_normalisation(tmp_path):
    root = make_rgbx(tmp_path / "pack", depth_bits=16)
    clean = RGBXPack(root, "test.txt", transform=segmentation_eval())
    holes = RGBXPack(
        root, "test.txt", transform=with_corruption(CorruptModality("depth", "depth_holes", 5), segmentation_eval())
    )
    a, b = clean[0], holes[0]
    assert torch.equal(a["rgb"], b["rgb"]) and torch.equal(a["mask"], b["mask"])
    made = (b["depth"][0] == 0) & (a["depth"][0] != 0)
    assert float(made.float().mean()) > 0.4  # holes are real zeros (depth is not normalised by default)
    assert torch.equal(holes[0]["depth"], b["depth"])  # the same sample, the same holes
    # RGB corruption on [0, 1] values, then the ImageNet normalisation
    dark = RGBXPack(
        root, "test.txt", transform=with_corruption(CorruptModality("rgb", "low_light", 5), segmentation_eval())
    )[0]
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    assert torch.allclose(dark["rgb"] * std + mean, (a["rgb"] * std + mean) * 0.1, atol=1e-5)
    assert isinstance(wrap(torch.zeros(3, 2, 2), "depth"), Depth)


def test_thermal_takes_dead_sensor_only_in_a_dataset(tmp_path):
    root = make_mfnet(tmp_path / "mfnet")
    dead = MFNet(root, "val.txt", transform=with_corruption(CorruptModality("thermal", "dead_sensor", 1)))[0]
    assert not bool(dead["thermal"].any()) and bool(dead["rgb"].any())
    with pytest.raises(ValueError, match="'image_noise' is not defined for modality 'thermal' of kind 'thermal'"):
        MFNet(root, "val.txt", transform=with_corruption(CorruptModality("thermal", "image_noise", 1)))[0]


def test_random_corruption_in_the_training_pipeline(tmp_path):
    from cen.data.transforms import segmentation_train

    root = make_rgbx(tmp_path / "pack")
    crop = segmentation_train(24, scale_range=None)  # no rescale: the crop never pads
    train = with_corruption(RandomCorruption(p=1.0, corruptions=["dead_sensor"]), crop)
    ds = RGBXPack(root, "train.txt", transform=train)
    for i in range(3):
        s = ds[i]
        assert {k: tuple(v.shape) for k, v in s.items()} == {"rgb": (3, 24, 24), "depth": (3, 24, 24), "mask": (24, 24)}
        dead_depth = not bool(s["depth"].any())  # depth is not normalised: a dead sensor stays all zeros
        dead_rgb = bool(
            torch.allclose(s["rgb"], s["rgb"][:, :1, :1].expand_as(s["rgb"]))
        )  # one colour: black, normalised
        assert dead_depth != dead_rgb  # exactly one modality died
