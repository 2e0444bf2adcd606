"""Turning decoded images into the tensors of a sample.

A decoder has a ``kind`` attribute (one of :data:`cen.data.kinds.KINDS` or ``"mask"``;
see :mod:`cen.data.kinds`) that tells the joint transforms how to treat the
tensor, and is a callable ``(array, path) -> Tensor`` on the arrays of
:func:`cen.data.images.read_image`. :func:`decoder_for_kind` gives the decoder of an input
modality's kind. Float outputs are (C, H, W) float32; masks are (H, W) uint8 (the datasets
return them as int64).

The decoders of the segmentation loaders work in two steps, so that the loaders can
crop, flip and resize the integer pixels before any float exists
(:meth:`cen.data.transforms.SegmentationTrain.from_raw`):

* ``raw(img, path)``: checks the (C, H, W) uint8/uint16 tensor of
  :func:`cen.data.tensor_images.read_image_tensor` (errors name the file) and returns it
  compact: images, depth and normals as they are, masks as (H, W) uint8;
* ``finish(raw, out=None)``: the float values, grey replicated to the decoder's channels
  and a per-pixel map (x / 255, raw x scale, ...), so it commutes with cropping, flipping,
  padding and nearest-neighbour resizing; a new tensor, or written into ``out`` (e.g. the
  part of a padded crop that shows the image).

``decoder(arr, path)`` is ``finish(raw(...))`` on the array's (C, H, W) view.
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
from cen.data.tensor_images import chw


def _hwc_shape(img: torch.Tensor) -> tuple[int, ...]:
    """The shape of the read_image array of a (C, H, W) tensor: (H, W) for one channel, else (H, W, C)."""
    return tuple(img.shape[1:]) if img.shape[0] == 1 else (*img.shape[1:], img.shape[0])


def _describe(img: torch.Tensor) -> str:
    """'uint8 with shape (H, W)': a (C, H, W) tensor described as its read_image array, for errors."""
    return f"{str(img.dtype).removeprefix('torch.')} with shape {_hwc_shape(img)}"


def _check_channels(img: torch.Tensor, channels: int | None, path: Path) -> None:
    if channels is not None and img.shape[0] not in (1, channels):
        raise ValueError(f"{path}: image has {img.shape[0]} channels; expected {channels} or 1")


def _float(img: torch.Tensor, channels: int | None, out: torch.Tensor | None = None) -> torch.Tensor:
    """(C, H, W) integers -> float32 (C, H, W) in one pass, one channel replicated to ``channels``
    (None keeps C): a new contiguous tensor, or written into ``out`` (any strides)."""
    if out is None:
        c = img.shape[0] if channels is None else channels
        out = torch.empty((c, *img.shape[1:]), dtype=torch.float32)
    return out.copy_(img)


def _chw(arr: np.ndarray, channels: int | None, path: Path) -> torch.Tensor:
    """(H, W) or (H, W, C) array -> float32 (C, H, W); grey replicated to ``channels``."""
    img = chw(arr)
    _check_channels(img, channels, path)
    return _float(img, channels)


class _TwoStep:
    """``decoder(arr, path)`` of a decoder with ``raw`` and ``finish`` (see the module docstring)."""

    def __call__(self, arr: np.ndarray, path: Path) -> torch.Tensor:
        return self.finish(self.raw(chw(arr), path))


@dataclass(frozen=True)
class ImageDecoder(_TwoStep):
    """8-bit -> [0, 1] (x / 255), 16-bit -> [0, 1] (x / 65535); (C, H, W) float32,
    grey replicated to ``channels`` (None keeps the file's channels). ``kind="hha"``
    decodes an HHA encoding (8-bit RGB) the same way but keeps its kind."""

    channels: int | None = 3
    kind: str = "image"

    def raw(self, img: torch.Tensor, path: Path) -> torch.Tensor:
        _check_channels(img, self.channels, path)
        return img

    def finish(self, raw: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        scale = 1.0 / 65535.0 if raw.dtype == torch.uint16 else 1.0 / 255.0
        return _float(raw, self.channels, out).mul_(scale)


@dataclass(frozen=True)
class DepthDecoder(_TwoStep):
    """16-bit depth x ``scale`` -> (C, H, W) float32, one channel replicated to
    ``channels``. Holes (0) stay 0. The reference preprocessing is ``scale = 1/5000``
    with 3 channels: NYUDv2 as distributed with the reference stores depth in units of
    1/5000 m, so this gives metres."""

    scale: float = REFERENCE_DEPTH_SCALE
    channels: int = 3
    kind: str = "depth"

    def raw(self, img: torch.Tensor, path: Path) -> torch.Tensor:
        if img.dtype != torch.uint16 or img.shape[0] != 1:
            raise ValueError(
                f"{path}: depth image is {_describe(img)}; expected a 16-bit single-channel PNG "
                "(NYUDv2: depth in units of 1/5000 m, 0 = hole)"
            )
        return img

    def finish(self, raw: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return _float(raw, self.channels, out).mul_(self.scale)


@dataclass(frozen=True)
class PackDepthDecoder(_TwoStep):
    """Single-channel depth of the RGB-X packs and DELIVER, 8- or 16-bit, -> (C, H, W) float32,
    replicated to ``channels``; 0 stays 0 (a hole) at both bit depths.

    * 16-bit: raw x ``scale`` (1/1000: millimetres -> metres);
    * 8-bit: raw / 255 in [0, 1]: the packs' 8-bit depth is depth rescaled to 0-255 with a
      scale they do not state, so it is a relative depth, not metres.

    (:class:`DepthDecoder` is the reference layout's, which takes 16-bit only.)"""

    scale: float = 1e-3
    channels: int = 3
    kind: str = "depth"
    layout: str = "RGB-X pack"

    def raw(self, img: torch.Tensor, path: Path) -> torch.Tensor:
        if img.shape[0] != 1:
            raise ValueError(
                f"{path}: depth image is {_describe(img)}; expected a single-channel 8- or 16-bit PNG "
                f"({self.layout}: 0 = hole)"
            )
        return img

    def finish(self, raw: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        scale = self.scale if raw.dtype == torch.uint16 else 1.0 / 255.0
        return _float(raw, self.channels, out).mul_(scale)


@dataclass(frozen=True)
class UnitDecoder(_TwoStep):
    """A sensor image of ``kind`` (``thermal``, ``event``, ``lidar``) -> [0, 1]: 8-bit / 255,
    16-bit / 65535; (C, H, W) float32, one channel replicated to ``channels``.

    ``accepts``: the channel counts a file may have (thermal: grey only; event and LiDAR
    frames: grey or RGB). ``bits``: 8 or 16 if only that bit depth is accepted, else None."""

    kind: str = "thermal"
    accepts: tuple[int, ...] = (1,)
    bits: int | None = None
    channels: int = 3

    def raw(self, img: torch.Tensor, path: Path) -> torch.Tensor:
        got_bits = 16 if img.dtype == torch.uint16 else 8
        if img.shape[0] not in self.accepts or (self.bits is not None and got_bits != self.bits):
            bits = f"{self.bits}-bit" if self.bits else "8- or 16-bit"
            chans = " or ".join({1: "single-channel", 3: "RGB", 4: "4-channel"}[c] for c in self.accepts)
            raise ValueError(f"{path}: {self.kind} image is {_describe(img)}; expected an {bits} {chans} PNG")
        return img

    def finish(self, raw: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        scale = 1.0 / 65535.0 if raw.dtype == torch.uint16 else 1.0 / 255.0
        c = self.channels if raw.shape[0] == 1 else raw.shape[0]
        return _float(raw, c, out).mul_(scale)


@dataclass(frozen=True)
class ChannelsOf(_TwoStep):
    """Some channels of a file that packs several modalities (MFNet: R, G, B, thermal in one
    PNG), decoded by ``decoder``: ``raw`` checks that the file has ``total`` channels and hands
    channels ``start:stop`` to ``decoder.raw``; ``finish`` is the decoder's. ``what`` names the
    file's channels for the error."""

    decoder: object
    start: int
    stop: int
    total: int
    what: str

    @property
    def kind(self) -> str:
        return self.decoder.kind

    def raw(self, img: torch.Tensor, path: Path) -> torch.Tensor:
        if img.shape[0] != self.total:
            raise ValueError(f"{path}: image is {_describe(img)}; expected a {self.total}-channel PNG ({self.what})")
        return self.decoder.raw(img[self.start : self.stop], path)

    def finish(self, raw: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder.finish(raw, out)


@dataclass(frozen=True)
class LabelMapDecoder(_TwoStep):
    """Label image -> (H, W) uint8 class ids through a table of the stored values.

    ``table`` maps each stored value to a class id (0..``num_classes``-1) or ``ignore_index``;
    values it does not name are errors that name the file, the values and ``expected``. E.g.
    the RGB-X packs store 1..C with 0 = unlabelled: ``{0: 255, 1: 0, ..., C: C - 1}``.
    ``first_channel``: an RGB label file gives its first channel (DELIVER's semantic PNGs, as
    CMNeXt reads them); otherwise the file must have one channel."""

    num_classes: int
    table: tuple[tuple[int, int], ...]
    expected: str
    first_channel: bool = False
    ignore_index: int = IGNORE_INDEX
    kind: str = "mask"

    def _lut(self) -> torch.Tensor:
        lut = torch.full((65536,), -1, dtype=torch.int32)
        for stored, cls in self.table:
            lut[stored] = cls
        return lut

    def raw(self, img: torch.Tensor, path: Path) -> torch.Tensor:
        if img.shape[0] != 1 and not (self.first_channel and img.shape[0] == 3):
            want = "a single-channel (or RGB, first channel read) PNG" if self.first_channel else "a single-channel PNG"
            raise ValueError(f"{path}: label image has shape {_hwc_shape(img)}; expected {want} of class ids")
        lut = getattr(self, "_cached_lut", None)
        if lut is None:
            lut = self._lut()
            object.__setattr__(self, "_cached_lut", lut)
        mapped = lut[img[0].to(torch.int64)]
        if bool((mapped < 0).any()):
            bad = torch.unique(img[0][mapped < 0].to(torch.int64)).tolist()
            shown = ", ".join(str(v) for v in bad[:8]) + (", ..." if len(bad) > 8 else "")
            raise ValueError(f"{path}: label value(s) {shown} out of range; expected {self.expected}")
        return mapped.to(torch.uint8)

    def finish(self, raw: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return raw if out is None else out.copy_(raw)


def shifted_labels(num_classes: int, *, also_ignored: tuple[int, ...] = (), ignore_index: int = IGNORE_INDEX):
    """Table of labels stored as 1..``num_classes`` with 0 = unlabelled (the RGB-X packs,
    DELIVER): stored k -> class k - 1, 0 (and ``also_ignored``) -> ``ignore_index``."""
    table = [(0, ignore_index), *((k, k - 1) for k in range(1, num_classes + 1))]
    table += [(v, ignore_index) for v in also_ignored]
    return tuple(table)


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
class NormalDecoder(_TwoStep):
    """8-bit RGB normal map ``(n + 1) / 2 * 255`` -> unit-range normals in [-1, 1],
    (3, H, W) float32, channel 0 = x (right)."""

    kind: str = "normal"

    def raw(self, img: torch.Tensor, path: Path) -> torch.Tensor:
        if img.dtype != torch.uint8 or img.shape[0] != 3:
            raise ValueError(f"{path}: normal map is {_describe(img)}; expected an 8-bit RGB PNG")
        return img

    def finish(self, raw: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return _float(raw, 3, out).div_(127.5).sub_(1.0)


@dataclass(frozen=True)
class MaskDecoder(_TwoStep):
    """Label image -> (H, W) uint8 class ids; values must be < ``num_classes`` or
    equal ``ignore_index``."""

    num_classes: int
    ignore_index: int = IGNORE_INDEX
    kind: str = "mask"

    def raw(self, img: torch.Tensor, path: Path) -> torch.Tensor:
        if img.shape[0] != 1:
            raise ValueError(
                f"{path}: label image has shape {_hwc_shape(img)}; expected a single-channel PNG of class ids"
            )
        ids = img[0] if img.dtype == torch.uint8 else img[0].to(torch.int32)  # uint16 has no bincount
        if ids.dtype == torch.uint8 and self.ignore_index == 255 and int((ids + 1).max()) <= self.num_classes:
            return ids  # every value < num_classes or 255: uint8 wraps 255 + 1 to 0 (one cheap pass)
        present = torch.bincount(ids.flatten(), minlength=256).nonzero().flatten().tolist()  # sorted
        bad = [v for v in present if v >= self.num_classes and v != self.ignore_index]
        if bad:
            shown = ", ".join(str(v) for v in bad[:8]) + (", ..." if len(bad) > 8 else "")
            raise ValueError(
                f"{path}: label value(s) {shown} out of range; expected class ids 0..{self.num_classes - 1} "
                f"or {self.ignore_index} (ignore)"
            )
        if present and present[-1] > 255:
            raise ValueError(f"{path}: label values above 255; expected 8-bit class ids")
        return ids.to(torch.uint8)

    def finish(self, raw: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return raw if out is None else out.copy_(raw)


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
    normals -> :class:`NormalDecoder`, thermal (grey), event and LiDAR (grey or RGB) ->
    :class:`UnitDecoder`. Grey images, depth and the grey sensors are replicated to ``channels``."""
    if kind == "image":
        return ImageDecoder(channels=channels)
    if kind == "hha":
        return ImageDecoder(channels=3, kind="hha")
    if kind == "depth":
        return DepthDecoder(scale=depth_scale, channels=channels)
    if kind == "normal":
        return NormalDecoder()
    if kind == "thermal":
        return UnitDecoder("thermal", (1,), channels=channels)
    if kind in ("event", "lidar"):
        return UnitDecoder(kind, (1, 3), 8 if kind == "event" else None, channels=channels)
    raise ValueError(f"unknown modality kind {kind!r}; expected image, depth, normal, hha, thermal, event or lidar")


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
