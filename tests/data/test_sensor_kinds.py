"""The kinds thermal, event and lidar: inferred from names, decoded to 3 channels, resized by
kind, left as loaded by the default normalisation, never colour-jittered, drawn in panels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from cen.data.decode import decoder_for_kind
from cen.data.kinds import NEAREST_KINDS, PHOTOMETRIC_KINDS, infer_kind, panel_of
from cen.data.transforms import ColorJitterImages, NormalizeModalities, default_normalization
from cen.data.tvtensors import EventFrame, LidarMap, ThermalMap, kind_of, wrap
from cen.tasks.segmentation.visualize import input_panel


def test_kinds_from_names_and_their_treatment():
    assert [infer_kind(n) for n in ("thermal", "event", "lidar", "lidar_front", "rgb")] == [
        "thermal",
        "event",
        "lidar",
        "lidar",
        "image",
    ]
    assert NEAREST_KINDS == {"depth", "event", "lidar"} and PHOTOMETRIC_KINDS == {"image"}
    assert [kind_of(wrap(torch.zeros(3, 2, 2), k)) for k in ("thermal", "event", "lidar")] == [
        "thermal",
        "event",
        "lidar",
    ]
    assert (panel_of("thermal"), panel_of("event"), panel_of("lidar")) == ("unit", "unit", "range")


def test_sensor_decoders_replicate_grey_to_three_channels():
    grey8 = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    for kind in ("thermal", "event", "lidar"):
        out = decoder_for_kind(kind)(grey8, "f.png")
        assert out.shape == (3, 3, 4) and torch.allclose(out[2], torch.from_numpy(grey8).float() / 255), kind
    lidar16 = np.full((3, 4), 65535, np.uint16)
    assert torch.allclose(decoder_for_kind("lidar")(lidar16, "l.png"), torch.ones(3, 3, 4))
    with pytest.raises(ValueError, match=r"t\.png: thermal image is uint8 with shape \(3, 4, 3\); expected an 8- or "
                       r"16-bit single-channel PNG"):  # fmt: skip
        decoder_for_kind("thermal")(np.zeros((3, 4, 3), np.uint8), "t.png")
    with pytest.raises(
        ValueError, match=r"e\.png: event image is uint16 .* expected an 8-bit single-channel or RGB PNG"
    ):
        decoder_for_kind("event")(np.zeros((3, 4), np.uint16), "e.png")


def test_event_and_lidar_resize_with_nearest_neighbours_thermal_bilinear():
    sparse = torch.zeros(3, 4, 4)
    sparse[:, 1, 1] = 1.0
    for cls in (EventFrame, LidarMap):
        up = v2.Resize((8, 8), antialias=True)(cls(sparse))
        assert isinstance(up, cls) and set(up.unique().tolist()) == {0.0, 1.0}  # no blending into empty pixels
    thermal = v2.Resize((8, 8), antialias=True)(ThermalMap(sparse))
    assert len(thermal.unique()) > 2


def test_default_normalisation_leaves_sensors_as_loaded():
    x = torch.rand(3, 4, 4)
    sample = {
        "rgb": wrap(x, "image"),
        "thermal": wrap(x, "thermal"),
        "event": wrap(x, "event"),
        "lidar": wrap(x, "lidar"),
    }
    out = NormalizeModalities(default_normalization())(sample)
    assert not torch.allclose(out["rgb"], x)
    assert all(torch.equal(out[k].as_subclass(torch.Tensor), x) for k in ("thermal", "event", "lidar"))


def test_colour_jitter_touches_rgb_only():
    torch.manual_seed(0)
    x = torch.rand(3, 8, 8)
    sample = {k: wrap(x.clone(), kind) for k, kind in (("rgb", "image"), ("depth", "depth"), ("hha", "hha"))}
    sample |= {k: wrap(x.clone(), k) for k in ("thermal", "event", "lidar")}
    sample["mask"] = wrap(torch.zeros(8, 8, dtype=torch.int64), "mask")
    out = ColorJitterImages(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.1)(sample)
    assert not torch.equal(out["rgb"], sample["rgb"]) and isinstance(out["rgb"], type(sample["rgb"]))
    assert all(out[k] is sample[k] for k in ("depth", "hha", "thermal", "event", "lidar", "mask"))
    assert all(ColorJitterImages(brightness=0.5, p=0.0)(sample)[k] is sample[k] for k in sample)
    with pytest.raises(ValueError, match="p must be a probability"):
        ColorJitterImages(p=2)


def test_panels_of_the_sensor_kinds():
    x = torch.zeros(3, 4, 4)
    x[:, 0, 0] = 1.0
    assert (input_panel(x, "thermal")[0, 0] == 255).all() and (input_panel(x, "event")[1, 1] == 0).all()
    lidar = input_panel(x, "lidar")
    assert (lidar[1, 1] == 0).all() and lidar[0, 0].any()  # no return black, a return coloured
    with pytest.raises(ValueError, match="unknown modality kind 'radar'"):
        input_panel(x, "radar")
