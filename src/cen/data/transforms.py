"""Joint transforms of multimodal samples, built on torchvision's transforms v2.

A sample is a dict of tv_tensors (what :class:`~cen.data.base.MultiModalDataset`
hands to its ``transform``): ``tv_tensors.Image`` for RGB and other images,
:class:`~cen.data.tvtensors.Depth`, :class:`~cen.data.tvtensors.NormalMap` and a
``tv_tensors.Mask`` under ``"mask"``. The v2 transforms draw their random parameters
once per call, so every modality and the mask get the same scale, crop and flip:

* resizing uses bilinear interpolation for images and normals, nearest for depth
  and masks;
* padding fills images with 0 and the mask with the ignore id; in the pipelines
  below padding comes *after* normalisation, so the padded image is the mean colour;
* a horizontal flip negates the x component of normal maps;
* normalisation is per kind by default (:func:`default_normalization`): any number of
  modalities, whatever their names.

Ready pipelines: :func:`segmentation_train`, :func:`segmentation_eval`,
:func:`translation_train`, :func:`translation_eval` and, for the reference Taskonomy
decoding, :func:`translation_reference_train`, :func:`translation_reference_eval`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from cen.data.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD

Stats = tuple[Sequence[float], Sequence[float]]


#: Prefix of a normalisation key that names a modality kind rather than a sample key.
KIND_PREFIX = "@"


def default_normalization() -> dict[str, Stats]:
    """Per-kind (mean, std) of the reference recipe: ImageNet statistics for every
    ``image`` modality (``rgb``, ``shading``, ...) and for ``hha``; depth and normals are
    left as loaded (raw x 1/5000, the reference preprocessing; unit normals). Keys
    ``"@<kind>"`` name a kind (:mod:`cen.data.kinds`); add a sample key, e.g.
    ``"depth": (mean, std)`` from :func:`cen.data.stats.mean_std`, for a per-dataset
    normalisation of one modality."""
    return {f"{KIND_PREFIX}image": (IMAGENET_MEAN, IMAGENET_STD), f"{KIND_PREFIX}hha": (IMAGENET_MEAN, IMAGENET_STD)}


class RandomScale(v2.Transform):
    """Resize by a factor drawn uniformly from ``scale_range`` (same for H and W),
    sizes rounded to integers (at least 1).

    With ``shorter_side`` the factor multiplies the one that brings the shorter side to
    ``shorter_side`` pixels: one resize instead of two (the reference "resize and
    scale" step)."""

    def __init__(self, scale_range: tuple[float, float] = (0.5, 2.0), shorter_side: int | None = None) -> None:
        super().__init__()
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        if shorter_side is not None and shorter_side < 1:
            raise ValueError(f"shorter_side must be a positive number of pixels, got {shorter_side}")
        self.scale_range = (float(lo), float(hi))
        self.shorter_side = shorter_side

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        s = float(torch.empty(()).uniform_(*self.scale_range))
        if self.shorter_side is not None:
            s *= self.shorter_side / min(h, w)
        return {"size": [max(1, round(h * s)), max(1, round(w * s))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, size=params["size"], antialias=True)


class NormalizeModalities:
    """Per-modality ``(x - mean) / std`` on the channels of the named keys.

    ``stats`` maps a sample key, or ``"@<kind>"`` for every modality of that kind
    (:mod:`cen.data.kinds`: ``@image``, ``@depth``, ``@normal``, ``@hha``), to (mean, std),
    each one value per channel or a single value for all channels. A sample key wins
    over its kind. The kind of a value is its tv_tensor class; a plain tensor's is
    inferred from its key (:func:`cen.data.kinds.infer_kind`). Entries matched by
    neither, and the mask, are left alone."""

    def __init__(self, stats: Mapping[str, Stats]) -> None:
        from cen.data.kinds import KINDS

        self.stats = {k: (torch.as_tensor(m, dtype=torch.float32), torch.as_tensor(s, dtype=torch.float32))
                      for k, (m, s) in stats.items()}
        for k, (_, s) in self.stats.items():
            if k.startswith(KIND_PREFIX) and k[len(KIND_PREFIX):] not in KINDS:
                raise ValueError(f"normalisation key {k!r} names no modality kind; expected one of "
                                 f"{[KIND_PREFIX + kind for kind in KINDS]} or a sample key")
            if (s <= 0).any():
                raise ValueError(f"std of {k!r} must be positive, got {s.tolist()}")

    def _stats_of(self, key: str, value: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
        from cen.data.kinds import infer_kind
        from cen.data.tvtensors import kind_of

        if key in self.stats:
            return self.stats[key]
        kind = kind_of(value) if isinstance(value, tv_tensors.TVTensor) else infer_kind(key)
        return self.stats.get(f"{KIND_PREFIX}{kind}")

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        out = dict(sample)
        for key, x in sample.items():
            if key == "mask" or isinstance(x, tv_tensors.Mask) or not isinstance(x, torch.Tensor):
                continue
            found = self._stats_of(key, x)
            if found is None:
                continue
            mean, std = found
            plain = x.as_subclass(torch.Tensor)
            c = plain.shape[-3]
            if mean.numel() not in (1, c) or std.numel() not in (1, c):
                raise ValueError(f"normalisation of {key!r}: {c} channels but mean/std have "
                                 f"{mean.numel()}/{std.numel()} values")
            y = (plain - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)
            out[key] = tv_tensors.wrap(y, like=x) if isinstance(x, tv_tensors.TVTensor) else y
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({ {k: (m.tolist(), s.tolist()) for k, (m, s) in self.stats.items()} })"


class ToSignedUnit:
    """Map [0, 1] values to [-1, 1] (``2x - 1``) for every key except the mask and
    normal maps (already in [-1, 1]): the pix2pix convention for translation."""

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        from cen.data.tvtensors import NormalMap

        out = {}
        for key, x in sample.items():
            if isinstance(x, (tv_tensors.Mask, NormalMap)) or key == "mask":
                out[key] = x
            else:
                out[key] = tv_tensors.wrap(x.as_subclass(torch.Tensor) * 2 - 1, like=x)
        return out


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def segmentation_train(
    crop_size: int | Sequence[int],
    scale_range: tuple[float, float] | None = (0.5, 2.0),
    shorter_side: int | None = None,
    hflip_p: float = 0.5,
    normalization: Mapping[str, Stats] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> v2.Compose:
    """Training pipeline of the reference segmentation recipe.

    Steps: resize so that the shorter side is ``shorter_side`` (if given; reference 350)
    times a random scale in ``scale_range`` (if given; reference 0.5-2.0), in one
    resize -> per-modality
    normalisation -> pad to at least ``crop_size`` (images 0 = mean after
    normalisation, mask ``ignore_index``) and random crop of ``crop_size`` (int or
    (H, W); reference 500) -> horizontal flip with probability ``hflip_p``.

    ``normalization`` maps sample keys or ``"@<kind>"`` to (mean, std); default
    :func:`default_normalization` (ImageNet for image and HHA modalities, depth and
    normals as loaded). Output: every modality (C, crop_h, crop_w)
    float, mask (crop_h, crop_w) int64 (after the dataset unwraps it).
    """
    steps: list[Any] = []
    if scale_range is not None:
        steps.append(RandomScale(scale_range, shorter_side=shorter_side))  # one resize for both
    elif shorter_side is not None:
        steps.append(v2.Resize(shorter_side, antialias=True))
    steps.append(NormalizeModalities(default_normalization() if normalization is None else normalization))
    steps.append(v2.RandomCrop(_pair(crop_size), pad_if_needed=True,
                               fill={tv_tensors.Mask: ignore_index, "others": 0}))
    if hflip_p > 0:
        steps.append(v2.RandomHorizontalFlip(p=hflip_p))
    return v2.Compose(steps)


def segmentation_eval(
    shorter_side: int | None = None,
    normalization: Mapping[str, Stats] | None = None,
) -> v2.Compose:
    """Evaluation pipeline: optional shorter-side resize (the reference evaluates at full
    size: leave None), then per-modality normalisation (same default as training)."""
    steps: list[Any] = []
    if shorter_side is not None:
        steps.append(v2.Resize(shorter_side, antialias=True))
    steps.append(NormalizeModalities(default_normalization() if normalization is None else normalization))
    return v2.Compose(steps)


def translation_train(load_size: int = 286, crop_size: int = 256, hflip_p: float = 0.5) -> v2.Compose:
    """pix2pix-style training pipeline for translation: resize to ``load_size`` square,
    random crop ``crop_size``, horizontal flip, values to [-1, 1]."""
    steps: list[Any] = [v2.Resize((load_size, load_size), antialias=True), v2.RandomCrop(crop_size)]
    if hflip_p > 0:
        steps.append(v2.RandomHorizontalFlip(p=hflip_p))
    steps.append(ToSignedUnit())
    return v2.Compose(steps)


def translation_eval(size: int = 256) -> v2.Compose:
    """Translation evaluation: resize to ``size`` square, values to [-1, 1]."""
    return v2.Compose([v2.Resize((size, size), antialias=True), ToSignedUnit()])


class PILBilinearResize:
    """Resize every image of the sample to ``size`` x ``size`` with PIL's bilinear
    filter on 8-bit values, as the reference translation code does.

    Inputs are (C, H, W) floats holding 8-bit values / 255 (what
    ``Taskonomy(decode="reference")`` gives); outputs hold the resized 8-bit values /
    255. 3-channel images are resized as PIL RGB images, others channel by channel."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size}")
        self.size = int(size)

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        plain = x.as_subclass(torch.Tensor)
        arr = (plain * 255).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        box = (self.size, self.size)
        if arr.shape[2] == 3:
            out = np.array(Image.fromarray(arr, "RGB").resize(box, Image.BILINEAR))
        else:
            out = np.stack([np.array(Image.fromarray(arr[..., c], "L").resize(box, Image.BILINEAR))
                            for c in range(arr.shape[2])], axis=2)
        y = torch.from_numpy(out).permute(2, 0, 1).float() / 255.0
        return tv_tensors.wrap(y, like=x) if isinstance(x, tv_tensors.TVTensor) else y

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        return {k: v if isinstance(v, tv_tensors.Mask) or k == "mask" else self._resize(v) for k, v in sample.items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


def translation_reference_train(load_size: int = 286, crop_size: int = 256, hflip_p: float = 0.5) -> v2.Compose:
    """The reference translation training pipeline, for ``Taskonomy(decode="reference")``:
    PIL bilinear resize of the 8-bit images to ``load_size`` square, random crop
    ``crop_size``, horizontal flip (no special case for normal maps), values to [-1, 1]."""
    steps: list[Any] = [PILBilinearResize(load_size), v2.RandomCrop(crop_size)]
    if hflip_p > 0:
        steps.append(v2.RandomHorizontalFlip(p=hflip_p))
    steps.append(ToSignedUnit())
    return v2.Compose(steps)


def translation_reference_eval(size: int = 256) -> v2.Compose:
    """The reference translation evaluation pipeline: PIL bilinear resize to ``size``
    square, values to [-1, 1]."""
    return v2.Compose([PILBilinearResize(size), ToSignedUnit()])


__all__ = [
    "NormalizeModalities",
    "PILBilinearResize",
    "RandomScale",
    "ToSignedUnit",
    "default_normalization",
    "segmentation_eval",
    "segmentation_train",
    "translation_eval",
    "translation_reference_eval",
    "translation_reference_train",
    "translation_train",
]
