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
from cen.data.kinds import NEAREST_KINDS as KIND_NEAREST
from cen.data.kinds import PHOTOMETRIC_KINDS

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

        self.stats = {
            k: (torch.as_tensor(m, dtype=torch.float32), torch.as_tensor(s, dtype=torch.float32))
            for k, (m, s) in stats.items()
        }
        for k, (_, s) in self.stats.items():
            if k.startswith(KIND_PREFIX) and k[len(KIND_PREFIX) :] not in KINDS:
                raise ValueError(
                    f"normalisation key {k!r} names no modality kind; expected one of "
                    f"{[KIND_PREFIX + kind for kind in KINDS]} or a sample key"
                )
            if (s <= 0).any():
                raise ValueError(f"std of {k!r} must be positive, got {s.tolist()}")

    def stats_for(self, key: str, kind: str | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(mean, std) of sample key ``key`` holding a modality of ``kind``, or None (left alone)."""
        if key in self.stats:
            return self.stats[key]
        return self.stats.get(f"{KIND_PREFIX}{kind}")

    def apply(
        self, key: str, x: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor], out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(x - mean) / std`` per channel of the plain (C, H, W) tensor ``x`` of ``key``, into ``out`` if given."""
        mean, std = stats
        c = (x if out is None else out).shape[-3]
        if mean.numel() not in (1, c) or std.numel() not in (1, c):
            raise ValueError(
                f"normalisation of {key!r}: {c} channels but mean/std have {mean.numel()}/{std.numel()} values"
            )
        return torch.sub(x, mean.view(-1, 1, 1), out=out).div_(std.view(-1, 1, 1))

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        from cen.data.kinds import infer_kind
        from cen.data.tvtensors import kind_of

        out = dict(sample)
        for key, x in sample.items():
            if key == "mask" or isinstance(x, tv_tensors.Mask) or not isinstance(x, torch.Tensor):
                continue
            found = self.stats_for(key, kind_of(x) if isinstance(x, tv_tensors.TVTensor) else infer_kind(key))
            if found is None:
                continue
            y = self.apply(key, x.as_subclass(torch.Tensor), found)
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


class ColorJitterImages:
    """Colour jitter (brightness, contrast, saturation, hue as ``v2.ColorJitter``) of every
    modality whose kind is photometric (:data:`cen.data.kinds.PHOTOMETRIC_KINDS`: ``image``),
    one draw per call shared by them; depth, HHA, normals, thermal, event and LiDAR values and the
    mask are never touched. Put it before normalisation: it acts on values in [0, 1].

    ``p``: probability of jittering a sample at all. Random numbers come from torch's global
    generator, as every torchvision v2 transform."""

    def __init__(
        self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0, p: float = 1.0
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p}")
        self.jitter = v2.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)
        self.p = float(p)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        from cen.data.kinds import infer_kind
        from cen.data.tvtensors import kind_of

        def kind(key: str, x: Any) -> str | None:
            if key == "mask" or not isinstance(x, torch.Tensor):
                return None
            return kind_of(x) if isinstance(x, tv_tensors.TVTensor) else infer_kind(key)

        keys = [k for k, x in sample.items() if kind(k, x) in PHOTOMETRIC_KINDS]
        if not keys or float(torch.rand(())) >= self.p:
            return dict(sample)
        params = self.jitter.make_params([])
        out = dict(sample)
        for key in keys:
            x = sample[key]
            plain = x.as_subclass(torch.Tensor) if isinstance(x, tv_tensors.TVTensor) else x
            y = self.jitter.transform(tv_tensors.Image(plain), params).as_subclass(torch.Tensor)
            out[key] = tv_tensors.wrap(y, like=x) if isinstance(x, tv_tensors.TVTensor) else y
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.jitter!r}, p={self.p})"


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


#: Kinds resized with nearest neighbours (depth, event and LiDAR by the kernel of
#: :mod:`cen.data.tvtensors`, masks by torchvision's); every other kind is resized bilinearly
#: with antialiasing.
NEAREST_KINDS = KIND_NEAREST | {"mask"}


def _size_probe(height: int, width: int) -> tv_tensors.BoundingBoxes:
    """A one-box stand-in for a sample of ``height`` x ``width``: the v2 steps draw their random
    parameters from its size as they would from the sample's, and resize its ``canvas_size``."""
    return tv_tensors.BoundingBoxes([[0, 0, 1, 1]], format="XYXY", canvas_size=(height, width))


def _nearest_indices(n_in: int, n_out: int) -> torch.Tensor:
    """Source index of each of ``n_out`` outputs of torchvision's nearest resize along an axis of
    ``n_in`` pixels. The kernel treats the two axes separately, so a one-pixel-wide ramp gives
    the indices that the 2-D resize uses for every row (or column)."""
    ramp = torch.arange(n_in, dtype=torch.float32).view(1, n_in, 1)
    out = F.resize_image(ramp, [n_out, 1], interpolation=v2.InterpolationMode.NEAREST, antialias=False)
    return out.view(-1).long()


class SegmentationTrain(v2.Compose):
    """The steps of :func:`segmentation_train` (resize, normalise, pad/crop, flip).

    Called on a float sample it is a ``v2.Compose`` of them. :meth:`from_raw` computes the
    same from the integer pixels of :class:`~cen.data.raw.RawDecodingDataset` and the decoders'
    ``finish`` (a per-pixel map, see :mod:`cen.data.decode`), drawing the same random numbers
    in the same order, but in a cheaper order of operations: depth and mask are resampled only
    inside the crop window (nearest neighbours: the same source pixels), images are resized
    in uint8 with torchvision's fast kernel when ``uint8_resize`` (else as floats), flips
    happen on the integers, and only the part of the crop that shows the image is finished
    to floats and normalised, in place in the output, whose margins get the padding (0,
    masks ``ignore_index``). Per-pixel maps commute with cropping, flipping, padding and
    nearest neighbours, so only the uint8 resize changes values.

    Equal to the steps one by one, bit for bit, except for 8-bit bilinear images with
    ``uint8_resize``: torchvision rounds each of its two resampling passes to 8 bits, so a
    pixel differs from the float resize by at most one 8-bit level (1/255 before
    normalisation, 1/127.5 for normals) -- the precision the file itself has.
    """

    def __init__(
        self,
        resize: v2.Transform | None,
        normalize: NormalizeModalities,
        crop: v2.RandomCrop,
        flip: v2.RandomHorizontalFlip | None,
        ignore_index: int = IGNORE_INDEX,
        uint8_resize: bool = True,
    ) -> None:
        super().__init__([s for s in (resize, normalize, crop, flip) if s is not None])
        self._steps = (resize, normalize, crop, flip)  # a tuple: not registered twice as submodules
        self.ignore_index = ignore_index
        self.uint8_resize = uint8_resize

    def from_raw(self, raw: Mapping[str, torch.Tensor], decoders: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The transformed sample (tv_tensors by kind; the mask int64) from the checked integer
        tensors ``raw`` ((C, H, W), masks (H, W)) and the decoders that finish them (same keys)."""
        from cen.data.tvtensors import wrap

        resize, normalize, crop_step, flip_step = self._steps
        h, w = (int(n) for n in next(iter(raw.values())).shape[-2:])
        size = (h, w) if resize is None else tuple(resize(_size_probe(h, w)).canvas_size)
        crop = crop_step.make_params([_size_probe(*size)])
        flip = flip_step is not None and not bool(torch.rand(1) >= flip_step.p)  # as RandomHorizontalFlip draws
        out_h, out_w = crop["height"], crop["width"]
        # the crop window in resized coordinates (pad left/top shift it); outside the image is padding
        top, left = crop["top"] - crop["padding"][1], crop["left"] - crop["padding"][0]
        rows = slice(max(0, top), min(size[0], top + out_h))
        cols = slice(max(0, left), min(size[1], left + out_w))
        # where that part of the image lands in the output; flipping mirrors it and its columns
        dst_rows = slice(rows.start - top, rows.stop - top)
        dst_cols = slice(cols.start - left, cols.stop - left)
        if flip:
            dst_cols = slice(out_w - dst_cols.stop, out_w - dst_cols.start)
        padded = (rows.stop - rows.start, cols.stop - cols.start) != (out_h, out_w)
        nearest = None  # source rows and columns of depth and masks
        out = {}
        for key, x in raw.items():
            decoder, kind = decoders[key], decoders[key].kind
            finished = False  # y holds integers that the decoder has yet to finish
            if kind in NEAREST_KINDS:
                if nearest is None:
                    c = _nearest_indices(w, size[1])[cols]
                    nearest = (_nearest_indices(h, size[0])[rows], c.flip(0) if flip else c)
                # on a (N, H, W) view: index_select is twice as slow on a 2-D mask
                y = x.view(-1, *x.shape[-2:]).index_select(-2, nearest[0]).index_select(-1, nearest[1])
                y = y.view(*x.shape[:-2], *y.shape[-2:])
            elif x.dtype == torch.uint8 and self.uint8_resize:
                y = F.resize_image(x, list(size), antialias=True)[..., rows, cols]
                y = y.flip(-1) if flip else y
            else:
                y = F.resize_image(decoder.finish(x), list(size), antialias=True)[..., rows, cols]
                y, finished = (y.flip(-1) if flip else y), True
            # the decoder replicates grey to its channels: ask it with an empty crop
            channels = y.shape[:-2] if finished else decoder.finish(y[..., :0, :0]).shape[:-2]
            # masks int64 at once: the dataset hands them out as int64 (cen.data.tvtensors.unwrap_sample)
            canvas = torch.empty((*channels, out_h, out_w), dtype=torch.int64 if kind == "mask" else torch.float32)
            if padded:  # fill only the margins around the image part
                fill = self.ignore_index if kind == "mask" else 0
                canvas[..., : dst_rows.start, :].fill_(fill)
                canvas[..., dst_rows.stop :, :].fill_(fill)
                canvas[..., dst_rows, : dst_cols.start].fill_(fill)
                canvas[..., dst_rows, dst_cols.stop :].fill_(fill)
            region = canvas[..., dst_rows, dst_cols]
            if finished:
                region.copy_(y)
            else:
                decoder.finish(y, out=region)
            stats = None if kind == "mask" else normalize.stats_for(key, kind)
            if stats is not None:
                normalize.apply(key, region, stats, out=region)
            if flip and kind == "normal":
                canvas[0].neg_()  # after normalising, as the NormalMap flip kernel of cen.data.tvtensors
            out[key] = wrap(canvas, kind)
        return out


def segmentation_train(
    crop_size: int | Sequence[int],
    scale_range: tuple[float, float] | None = (0.5, 2.0),
    shorter_side: int | None = None,
    hflip_p: float = 0.5,
    normalization: Mapping[str, Stats] | None = None,
    ignore_index: int = IGNORE_INDEX,
    uint8_resize: bool = True,
) -> SegmentationTrain:
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

    The segmentation datasets run it on integer pixels (:meth:`SegmentationTrain.from_raw`);
    ``uint8_resize`` resizes 8-bit images in uint8 there (the fastest loading, within one
    8-bit level of the float resize); False keeps the float resize, bit-identical to the steps.
    """
    resize: v2.Transform | None = None
    if scale_range is not None:
        resize = RandomScale(scale_range, shorter_side=shorter_side)  # one resize for both
    elif shorter_side is not None:
        resize = v2.Resize(shorter_side, antialias=True)
    normalize = NormalizeModalities(default_normalization() if normalization is None else normalization)
    crop = v2.RandomCrop(_pair(crop_size), pad_if_needed=True, fill={tv_tensors.Mask: ignore_index, "others": 0})
    flip = v2.RandomHorizontalFlip(p=hflip_p) if hflip_p > 0 else None
    return SegmentationTrain(resize, normalize, crop, flip, ignore_index=ignore_index, uint8_resize=uint8_resize)


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
            out = np.stack(
                [np.array(Image.fromarray(arr[..., c], "L").resize(box, Image.BILINEAR)) for c in range(arr.shape[2])],
                axis=2,
            )
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
    "ColorJitterImages",
    "NormalizeModalities",
    "PILBilinearResize",
    "RandomScale",
    "SegmentationTrain",
    "ToSignedUnit",
    "default_normalization",
    "segmentation_eval",
    "segmentation_train",
    "translation_eval",
    "translation_reference_eval",
    "translation_reference_train",
    "translation_train",
]
