"""Turning decoded image arrays into the tensors of a sample.

A decoder is a callable ``(array, path) -> Tensor`` with a ``kind`` attribute
(``"image"``, ``"depth"``, ``"normal"``, ``"hha"`` or ``"mask"``; see
:mod:`cen.data.kinds`) that tells the joint transforms how to treat the tensor.
:func:`decoder_for_kind` gives the decoder of an input modality's kind. Float outputs are (C, H, W) float32; masks are (H, W) uint8
(the datasets return them as int64).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cen.data.constants import (
    IGNORE_INDEX,
    REFERENCE_DEPTH_SCALE,
    TASKONOMY_REFERENCE_MAXIMA,
)


def _chw(arr: np.ndarray, channels: int | None, path: Path) -> torch.Tensor:
    """(H, W) or (H, W, C) array -> float32 (C, H, W); grey replicated to ``channels``."""
    t = torch.from_numpy(np.ascontiguousarray(arr).astype(np.float32, copy=False))
    t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
    if channels is not None and t.shape[0] != channels:
        if t.shape[0] == 1:
            t = t.expand(channels, -1, -1)
        else:
            raise ValueError(f"{path}: image has {t.shape[0]} channels; expected {channels} or 1")
    return t.contiguous()


@dataclass(frozen=True)
class ImageDecoder:
    """8-bit -> [0, 1] (x / 255), 16-bit -> [0, 1] (x / 65535); (C, H, W) float32,
    grey replicated to ``channels`` (None keeps the file's channels). ``kind="hha"``
    decodes an HHA encoding (8-bit RGB) the same way but keeps its kind."""

    channels: int | None = 3
    kind: str = "image"

    def __call__(self, arr: np.ndarray, path: Path) -> torch.Tensor:
        scale = 1.0 / 65535.0 if arr.dtype == np.uint16 else 1.0 / 255.0
        return _chw(arr, self.channels, path) * scale


@dataclass(frozen=True)
class DepthDecoder:
    """16-bit depth x ``scale`` -> (C, H, W) float32, one channel replicated to
    ``channels``. Holes (0) stay 0. The reference preprocessing is ``scale = 1/5000``
    with 3 channels: NYUDv2 as distributed with the reference stores depth in units of
    1/5000 m, so this gives metres."""

    scale: float = REFERENCE_DEPTH_SCALE
    channels: int = 3
    kind: str = "depth"

    def __call__(self, arr: np.ndarray, path: Path) -> torch.Tensor:
        if arr.dtype != np.uint16 or arr.ndim != 2:
            raise ValueError(
                f"{path}: depth image is {arr.dtype} with shape {arr.shape}; expected a 16-bit single-channel PNG "
                "(NYUDv2: depth in units of 1/5000 m, 0 = hole)"
            )
        return _chw(arr, self.channels, path) * self.scale


@dataclass(frozen=True)
class TaskonomyDepthDecoder:
    """Taskonomy depth (uint16 in 1/512 m, 65535 = invalid) -> metres / ``max_m``
    clipped to [0, 1]; invalid pixels are 0 (like NYUDv2 holes). (C, H, W) float32."""

    units_per_m: float = 512.0
    max_m: float = 16.0
    invalid: int = 65535
    channels: int = 3
    kind: str = "depth"

    def __call__(self, arr: np.ndarray, path: Path) -> torch.Tensor:
        if arr.dtype != np.uint16 or arr.ndim != 2:
            raise ValueError(f"{path}: depth image is {arr.dtype} with shape {arr.shape}; expected 16-bit grey PNG")
        t = _chw(arr, self.channels, path)
        valid = t != self.invalid
        return torch.where(valid, (t / (self.units_per_m * self.max_m)).clamp_(0, 1), torch.zeros(()))


@dataclass(frozen=True)
class NormalDecoder:
    """8-bit RGB normal map ``(n + 1) / 2 * 255`` -> unit-range normals in [-1, 1],
    (3, H, W) float32, channel 0 = x (right)."""

    kind: str = "normal"

    def __call__(self, arr: np.ndarray, path: Path) -> torch.Tensor:
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"{path}: normal map is {arr.dtype} with shape {arr.shape}; expected an 8-bit RGB PNG")
        return _chw(arr, 3, path) / 127.5 - 1.0


@dataclass(frozen=True)
class MaskDecoder:
    """Label image -> (H, W) uint8 class ids; values must be < ``num_classes`` or
    equal ``ignore_index``."""

    num_classes: int
    ignore_index: int = IGNORE_INDEX
    kind: str = "mask"

    def __call__(self, arr: np.ndarray, path: Path) -> torch.Tensor:
        if arr.ndim != 2:
            raise ValueError(f"{path}: label image has shape {arr.shape}; expected a single-channel PNG of class ids")
        bad = (arr >= self.num_classes) & (arr != self.ignore_index)
        if bad.any():
            values = np.unique(arr[bad])
            shown = ", ".join(str(int(v)) for v in values[:8]) + (", ..." if len(values) > 8 else "")
            raise ValueError(
                f"{path}: label value(s) {shown} out of range; expected class ids 0..{self.num_classes - 1} "
                f"or {self.ignore_index} (ignore)"
            )
        if arr.max(initial=0) > 255:
            raise ValueError(f"{path}: label values above 255; expected 8-bit class ids")
        return torch.from_numpy(np.ascontiguousarray(arr).astype(np.uint8, copy=False))


@dataclass(frozen=True)
class TaskonomyReferenceDecoder:
    """A Taskonomy domain decoded as the reference translation code does, (3, H, W)
    float32 holding ``k / 255`` for 8-bit values ``k`` (so ``x * 255`` recovers them
    exactly):

    * 8-bit files as they are (grey replicated to 3 channels);
    * 16-bit files of a domain with a fixed maximum in
      :data:`~cen.data.constants.TASKONOMY_REFERENCE_MAXIMA`: depth domains
      ``log(1 + raw)`` computed in uint16 (so the invalid value 65535 wraps to 0 and
      gives ``log 0 = -inf``, which the cast to 8 bits turns into 0), then
      ``value / maximum * 255`` truncated to uint8 (values above the maximum, absent
      from Taskonomy, are clipped to 255), replicated to 3 channels.

    Every domain is an ordinary image afterwards (``kind="image"``): the reference
    resizes all of them bilinearly and flips normal maps like pictures.
    """

    domain: str
    maximum: float | None = None
    kind: str = "image"

    def __call__(self, arr: np.ndarray, path: Path) -> torch.Tensor:
        if arr.dtype == np.uint16:
            if self.maximum is None:
                raise ValueError(
                    f"{path}: 16-bit image of domain {self.domain!r}; decode='reference' knows fixed maxima only for "
                    f"{', '.join(TASKONOMY_REFERENCE_MAXIMA)} (use decode='linear')"
                )
            arr = reference_quantise(arr, self.domain, self.maximum)
        elif arr.dtype != np.uint8:
            raise ValueError(f"{path}: {arr.dtype} image; expected an 8- or 16-bit PNG")
        return _chw(arr, 3, path) / 255.0


def decoder_for_kind(kind: str, *, depth_scale: float = REFERENCE_DEPTH_SCALE, channels: int = 3):
    """The decoder of an input modality of ``kind`` (:data:`cen.data.kinds.KINDS`):
    images and HHA -> :class:`ImageDecoder`, depth -> :class:`DepthDecoder` (x ``depth_scale``),
    normals -> :class:`NormalDecoder`. Grey images and depth are replicated to ``channels``."""
    if kind == "image":
        return ImageDecoder(channels=channels)
    if kind == "hha":
        return ImageDecoder(channels=3, kind="hha")
    if kind == "depth":
        return DepthDecoder(scale=depth_scale, channels=channels)
    if kind == "normal":
        return NormalDecoder()
    raise ValueError(f"unknown modality kind {kind!r}; expected image, depth, normal or hha")


def reference_quantise(raw: np.ndarray, domain: str, maximum: float) -> np.ndarray:
    """uint16 ``raw`` (H, W) of ``domain`` -> uint8 (H, W) as the reference: depth
    domains ``log(1 + raw)`` (uint16 arithmetic: 65535 -> log 0 -> 0), edges ``raw``;
    then ``/ maximum * 255``, truncated (not rounded) to 0..255."""
    if domain.startswith("depth"):
        with np.errstate(divide="ignore"):
            value = np.log(raw + np.uint16(1))  # float32, as numpy computes it on uint16; 65535 wraps to 0 -> -inf
    else:
        value = raw
    with np.errstate(invalid="ignore"):
        scaled = value / maximum * 255
    scaled = np.where(np.isfinite(scaled), scaled, 0)
    return np.clip(np.floor(scaled), 0, 255).astype(np.uint8)
