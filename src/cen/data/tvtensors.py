"""tv_tensor types that let torchvision's transforms v2 treat each modality correctly.

* :class:`Depth` — resized with nearest-neighbour interpolation, so holes (0) never
  blend into valid depth and no flying pixels appear at object boundaries.
* :class:`NormalMap` — a horizontal flip also negates the x component (channel 0),
  so the flipped normals still describe the flipped surface.

* :class:`HHAMap` — an HHA encoding: transformed like an image (its disparity, height
  and angle channels do not change under a horizontal flip); the class only keeps its
  kind, so the default normalisation and the prediction images can tell it apart.
* :class:`ThermalMap` — a thermal image: resized bilinearly like an image; its own class so
  that normalisation, colour jitter and corruptions can tell it from RGB.
* :class:`EventFrame` and :class:`LidarMap` — sparse sensors (event frames, projected LiDAR
  returns, 0 = nothing measured): resized with nearest neighbours, as depth.

Everything else about them is :class:`torchvision.tv_tensors.Image` behaviour. RGB and
other images are plain ``tv_tensors.Image``; labels are ``tv_tensors.Mask``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F


class Depth(tv_tensors.Image):
    """Depth map (C, H, W); resized with nearest-neighbour interpolation."""


class NormalMap(tv_tensors.Image):
    """Surface normals (3, H, W) in [-1, 1], channel 0 = x (right)."""


class HHAMap(tv_tensors.Image):
    """HHA encoding (3, H, W) in [0, 1]: disparity, height above the floor, angle with gravity."""


class ThermalMap(tv_tensors.Image):
    """Thermal image (3, H, W) in [0, 1] (one channel replicated)."""


class EventFrame(tv_tensors.Image):
    """Event frame (3, H, W) in [0, 1]; resized with nearest-neighbour interpolation."""


class LidarMap(tv_tensors.Image):
    """LiDAR points projected to the image (3, H, W) in [0, 1], 0 = no return; resized with
    nearest-neighbour interpolation."""


def _resize_nearest(inpt: Any, size: Any, interpolation: Any = None, max_size: Any = None, antialias: Any = True):
    out = F.resize_image(
        inpt.as_subclass(torch.Tensor),
        size,
        interpolation=InterpolationMode.NEAREST,
        max_size=max_size,
        antialias=False,
    )
    return tv_tensors.wrap(out, like=inpt)


for _cls in (Depth, EventFrame, LidarMap):  # cen.data.kinds.NEAREST_KINDS
    F.register_kernel(functional=F.resize, tv_tensor_cls=_cls)(_resize_nearest)


@F.register_kernel(functional=F.horizontal_flip, tv_tensor_cls=NormalMap)
def _hflip_normals(inpt: NormalMap) -> NormalMap:
    out = F.horizontal_flip_image(inpt.as_subclass(torch.Tensor)).clone()
    out[..., 0, :, :].neg_()
    return tv_tensors.wrap(out, like=inpt)


_WRAPPERS = {
    "image": tv_tensors.Image,
    "depth": Depth,
    "normal": NormalMap,
    "hha": HHAMap,
    "thermal": ThermalMap,
    "event": EventFrame,
    "lidar": LidarMap,
    "mask": tv_tensors.Mask,
}


def kind_of(value: Any) -> str | None:
    """The kind of a sample value from its tv_tensor class (``"image"``, ``"depth"``,
    ``"normal"``, ``"hha"``, ``"thermal"``, ``"event"``, ``"lidar"``, ``"mask"``), or None for a
    plain tensor."""
    for kind, cls in _WRAPPERS.items():
        if kind != "image" and isinstance(value, cls):
            return kind
    return "image" if isinstance(value, tv_tensors.Image) else None


def wrap(tensor: torch.Tensor, kind: str) -> torch.Tensor:
    """Wrap a plain tensor as the tv_tensor of its kind (:data:`cen.data.kinds.KINDS` or ``"mask"``)."""
    try:
        return _WRAPPERS[kind](tensor)
    except KeyError:
        raise ValueError(f"unknown modality kind {kind!r}; expected one of {sorted(_WRAPPERS)}") from None


def unwrap_sample(sample: Mapping[str, Any]) -> dict[str, Any]:
    """Plain tensors again: tv_tensors become ``torch.Tensor``; masks (key ``"mask"`` or
    any ``tv_tensors.Mask``) become int64 (H, W)."""
    out = {}
    for key, value in sample.items():
        if isinstance(value, tv_tensors.Mask) or key == "mask":
            value = value.as_subclass(torch.Tensor).long()
            if value.ndim == 3 and value.shape[0] == 1:
                value = value[0]
        elif isinstance(value, torch.Tensor):
            value = value.as_subclass(torch.Tensor)
        out[key] = value
    return out
