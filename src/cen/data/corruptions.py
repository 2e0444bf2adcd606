"""Sensor corruptions of one modality of a sample, for robustness training and evaluation.

Every corruption acts on the **decoded values, before resizing, normalisation and cropping**
(the dataset's ``transform`` is ``with_corruption(corruption, pipeline)``): depth in its decoded
unit (metres for 16-bit depth, [0, 1] for 8-bit pack depth) with holes as the real zeros a
sensor returns, RGB in [0, 1]. Each has five severities (1 = mild .. 5 = severe; 0 = none):

=================== ============ ==========================================================
name                kinds        what it does (severity 1 .. 5)
=================== ============ ==========================================================
depth_holes         depth        blobs of invalid pixels set to 0, 5 / 10 / 20 / 35 / 50 %
                                 of the image (the same blobs grow with the severity)
depth_noise         depth        Gaussian noise proportional to the depth, sigma 1 / 2 / 4 /
                                 7 / 10 % of the value; holes stay 0, valid pixels stay > 0
depth_quantisation  depth        disparity (1 / depth) rounded to 64 / 32 / 16 / 8 / 4 levels
                                 over the sample's range, as stereo and structured-light
                                 sensors quantise it; holes stay 0
low_light           image        brightness x 0.6 / 0.45 / 0.3 / 0.2 / 0.1
over_exposure       image        brightness x 1.4 / 1.8 / 2.3 / 3 / 4, clipped at 1
motion_blur         image        a line kernel 3 / 5 / 9 / 13 / 17 pixels long at a random angle
image_noise         image        Gaussian noise sigma 0.03 / 0.06 / 0.1 / 0.15 / 0.22, clipped
dead_sensor         every kind   all zeros (a sensor that returns nothing; the same at every
                                 severity)
=================== ============ ==========================================================

``image`` is the RGB kind (:data:`cen.data.kinds.PHOTOMETRIC_KINDS`); thermal, event, LiDAR,
HHA and normals take ``dead_sensor`` only. A corruption asked of a kind it is not defined for
is a ValueError naming the corruption, the modality, its kind and what applies to it.

Randomness comes from a ``torch.Generator``: the same generator state gives the same output.
:class:`CorruptModality` (evaluation: one corruption, one severity, one modality) seeds it from
its ``seed`` and the sample's values, so each sample is corrupted the same way in every run,
whatever the order or the worker that reads it; :class:`RandomCorruption` (training: a random
corruption and severity per sample, with a probability) draws from its generator, or torch's
global one as torchvision's transforms do.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as nnf
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from cen.data.kinds import KINDS, PHOTOMETRIC_KINDS, infer_kind

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

CorruptFn = Callable[[Tensor, int, "torch.Generator | None"], Tensor]


@dataclass(frozen=True)
class Corruption:
    """A corruption: ``fn(x, severity, generator)`` maps a float (C, H, W) tensor to a new one;
    ``kinds`` are the modality kinds it is defined for; ``grows`` says what increases with the
    severity (None: the same at every severity)."""

    name: str
    kinds: frozenset[str]
    fn: CorruptFn
    description: str
    grows: str | None


#: name -> :class:`Corruption`
CORRUPTIONS: dict[str, Corruption] = {}


def _register(name: str, kinds: Iterable[str], description: str, grows: str | None):
    def add(fn: CorruptFn) -> CorruptFn:
        CORRUPTIONS[name] = Corruption(name, frozenset(kinds), fn, description, grows)
        return fn

    return add


def _rand(shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.rand(tuple(shape), generator=generator).to(device)


def _randn(shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.randn(tuple(shape), generator=generator).to(device)


def _seed_from(generator: torch.Generator | None) -> int:
    """A seed drawn from ``generator`` (or torch's global generator), for ops that take none."""
    return int(torch.randint(0, 2**62, (1,), generator=generator))


# -- depth -----------------------------------------------------------------------------------------

_HOLE_FRACTION = (0.05, 0.10, 0.20, 0.35, 0.50)


@_register("depth_holes", {"depth"}, "blobs of invalid pixels (0) over 5-50 % of the image", "share of holes")
def depth_holes(x: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """Blobs of invalid pixels, set to 0 as a depth sensor reports them. A smooth random field
    (uniform noise on a grid 1/8 of the image, bilinearly upsampled) is drawn once; the holes are
    its lowest :data:`_HOLE_FRACTION` share, so a higher severity keeps every hole of a lower one.
    One field for all channels (replicated depth stays replicated)."""
    h, w = x.shape[-2:]
    coarse = _rand((1, 1, max(2, math.ceil(h / 8)), max(2, math.ceil(w / 8))), generator, x.device)
    field = nnf.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    k = max(1, round(_HOLE_FRACTION[severity - 1] * h * w))
    threshold = field.flatten().kthvalue(k).values
    return x.masked_fill(field <= threshold, 0.0)


_DEPTH_NOISE = (0.01, 0.02, 0.04, 0.07, 0.10)


@_register("depth_noise", {"depth"}, "Gaussian noise, sigma 1-10 % of the depth", "noise amplitude")
def depth_noise(x: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """``x * (1 + sigma * n)`` with ``n`` standard normal per pixel (shared by the channels),
    ``sigma`` :data:`_DEPTH_NOISE` of the severity: the error grows with the range, as a depth
    sensor's does. Holes stay 0; a valid pixel never drops to 0 or below (clamped at 1 % of its value)."""
    n = _randn(x.shape[-2:], generator, x.device)
    noisy = x * (1 + _DEPTH_NOISE[severity - 1] * n)
    return torch.where(x > 0, torch.maximum(noisy, 0.01 * x), x)


_DISPARITY_LEVELS = (64, 32, 16, 8, 4)


@_register("depth_quantisation", {"depth"}, "disparity rounded to 64-4 levels", "quantisation error")
def depth_quantisation(x: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """Disparity ``1 / depth`` rounded to :data:`_DISPARITY_LEVELS` levels spread over the sample's
    valid range, so far depth gets coarser steps than near depth. Holes stay 0; no randomness."""
    valid = x > 0
    if not bool(valid.any()):
        return x.clone()
    near, far = float(x[valid].min()), float(x[valid].max())
    if far <= near:
        return x.clone()
    lo, hi = 1.0 / far, 1.0 / near  # disparity range
    step = (hi - lo) / _DISPARITY_LEVELS[severity - 1]
    disparity = 1.0 / torch.where(valid, x, torch.ones((), dtype=x.dtype, device=x.device))
    rounded = lo + torch.round((disparity - lo) / step) * step
    return torch.where(valid, 1.0 / rounded, x)


# -- RGB ------------------------------------------------------------------------------------------------

_LOW_LIGHT = (0.6, 0.45, 0.3, 0.2, 0.1)
_OVER_EXPOSURE = (1.4, 1.8, 2.3, 3.0, 4.0)


@_register("low_light", PHOTOMETRIC_KINDS, "brightness x 0.6-0.1", "darkening")
def low_light(x: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """``torchvision``'s ``adjust_brightness`` by :data:`_LOW_LIGHT` of the severity (values in [0, 1])."""
    return F.adjust_brightness(x, _LOW_LIGHT[severity - 1])


@_register("over_exposure", PHOTOMETRIC_KINDS, "brightness x 1.4-4, clipped at 1", "share of saturated pixels")
def over_exposure(x: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """``torchvision``'s ``adjust_brightness`` by :data:`_OVER_EXPOSURE` of the severity, which clips at 1."""
    return F.adjust_brightness(x, _OVER_EXPOSURE[severity - 1])


_BLUR_LENGTH = (3, 5, 9, 13, 17)


def line_kernel(length: int, angle: float) -> Tensor:
    """A (length, length) kernel of a straight line through its centre at ``angle`` radians
    (0 = horizontal), summing to 1: the blur of a camera moving ``length`` pixels in that direction."""
    kernel = torch.zeros(length, length)
    centre = (length - 1) / 2
    t = torch.linspace(-centre, centre, 4 * length)
    cols = (centre + t * math.cos(angle)).round().long().clamp(0, length - 1)
    rows = (centre - t * math.sin(angle)).round().long().clamp(0, length - 1)
    kernel.index_put_((rows, cols), torch.ones_like(t), accumulate=True)
    return kernel / kernel.sum()


@_register("motion_blur", PHOTOMETRIC_KINDS, "a line blur 3-17 pixels long at a random angle", "blur length")
def motion_blur(x: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """Convolution with :func:`line_kernel` of :data:`_BLUR_LENGTH` pixels at an angle drawn
    uniformly from [0, pi); borders replicate the edge pixels. (torchvision has a Gaussian blur but
    no motion blur.)"""
    length = _BLUR_LENGTH[severity - 1]
    angle = float(_rand((), generator, torch.device("cpu"))) * math.pi
    c = x.shape[-3]
    kernel = line_kernel(length, angle).to(x.device, x.dtype).expand(c, 1, length, length)
    pad = length // 2
    padded = nnf.pad(x.reshape(1, c, *x.shape[-2:]), (pad, pad, pad, pad), mode="replicate")
    return nnf.conv2d(padded, kernel, groups=c).reshape(x.shape)


_IMAGE_NOISE = (0.03, 0.06, 0.10, 0.15, 0.22)


@_register("image_noise", PHOTOMETRIC_KINDS, "Gaussian noise sigma 0.03-0.22, clipped to [0, 1]", "noise amplitude")
def image_noise(x: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """``torchvision``'s ``gaussian_noise`` (per pixel and channel, clipped to [0, 1]) with sigma
    :data:`_IMAGE_NOISE` of the severity; its random numbers come from ``generator`` (torch's
    global generator is saved and put back)."""
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    seed = _seed_from(generator)
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return F.gaussian_noise(x, sigma=_IMAGE_NOISE[severity - 1], clip=True)


# -- any sensor --------------------------------------------------------------------------------------------


@_register("dead_sensor", KINDS, "all zeros: a sensor that returns nothing", None)
def dead_sensor(x: Tensor, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """Zeros: what a dead camera, depth or LiDAR sensor returns (for depth: every pixel a hole)."""
    return torch.zeros_like(x)


# -- checks and the functional form ---------------------------------------------------------------------------


def corruption_kinds() -> dict[str, tuple[str, ...]]:
    """``{corruption name: the modality kinds it applies to}``."""
    return {name: tuple(k for k in KINDS if k in c.kinds) for name, c in CORRUPTIONS.items()}


def corruptions_for(kind: str) -> tuple[str, ...]:
    """Names of the corruptions defined for modality ``kind``."""
    return tuple(name for name, c in CORRUPTIONS.items() if kind in c.kinds)


def check_corruption(name: str, kind: str, modality: str | None = None) -> Corruption:
    """The :class:`Corruption` ``name`` if it is defined for ``kind``; ValueError otherwise, naming
    the corruption, the modality and its kind, and what applies to that kind."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; expected one of {list(CORRUPTIONS)}")
    c = CORRUPTIONS[name]
    if kind not in c.kinds:
        of = f"modality {modality!r} of kind {kind!r}" if modality else f"modality kind {kind!r}"
        raise ValueError(
            f"corruption {name!r} is not defined for {of}; it applies to kinds "
            f"{', '.join(corruption_kinds()[name])}; for {kind} use one of {list(corruptions_for(kind))}"
        )
    return c


def check_severity(severity: int) -> int:
    """``severity`` as an int in 0..5 (0 = none); ValueError otherwise."""
    if isinstance(severity, bool) or not isinstance(severity, int) or not 0 <= severity <= SEVERITIES[-1]:
        raise ValueError(f"severity must be an integer in 0..{SEVERITIES[-1]} (0 = none), got {severity!r}")
    return severity


def corrupt(
    x: Tensor,
    name: str,
    severity: int,
    kind: str,
    generator: torch.Generator | None = None,
    modality: str | None = None,
) -> Tensor:
    """Corruption ``name`` at ``severity`` (0 = none: ``x`` as it is) of a decoded float
    (C, H, W) tensor of a modality of ``kind``; a new tensor, ``x`` is not changed.

    Raises ValueError for an unknown corruption, one not defined for ``kind`` (naming
    ``modality`` if given), a severity outside 0..5, or ``x`` not a float (C, H, W) tensor."""
    c = check_corruption(name, kind, modality)
    check_severity(severity)
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim != 3:
        what = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{modality or 'the modality'}: expected a decoded float (C, H, W) tensor, got {what}")
    if severity == 0:
        return x
    return c.fn(x.as_subclass(Tensor), severity, generator)


# -- joint transforms --------------------------------------------------------------------------------------------


def _kind(key: str, value: Any, kinds: Mapping[str, str] | None) -> str:
    from cen.data.tvtensors import kind_of

    if kinds and key in kinds:
        return kinds[key]
    found = kind_of(value) if isinstance(value, tv_tensors.TVTensor) else None
    return found or infer_kind(key)


def _rewrap(y: Tensor, like: Any) -> Any:
    return tv_tensors.wrap(y, like=like) if isinstance(like, tv_tensors.TVTensor) else y


def sample_seed(seed: int, x: Tensor) -> int:
    """A seed from ``seed`` and the values of ``x``: the same sample gets the same random numbers
    whatever the order of reading or the worker."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(int(seed).to_bytes(8, "little", signed=True))
    digest.update(x.detach().contiguous().cpu().numpy().tobytes())
    return int.from_bytes(digest.digest(), "little") & (2**62 - 1)


class CorruptModality:
    """Evaluation form: ``corruption`` at ``severity`` of the sample's ``modality``, every other
    entry (the other modalities, the mask) untouched. Deterministic: the random numbers are
    seeded by ``seed`` and the modality's values (:func:`sample_seed`).

    ``kind``: the modality's kind; default from its tv_tensor class, else its name. Apply it to
    decoded samples, before the pipeline (:func:`with_corruption`).

    Raises ValueError (when called, or at once if ``kind`` is given) for a corruption not defined
    for the modality's kind, and for a sample without ``modality``."""

    def __init__(self, modality: str, corruption: str, severity: int, seed: int = 0, kind: str | None = None) -> None:
        if corruption not in CORRUPTIONS:
            raise ValueError(f"unknown corruption {corruption!r}; expected one of {list(CORRUPTIONS)}")
        if kind is not None:
            check_corruption(corruption, kind, modality)
        self.modality, self.corruption, self.severity = modality, corruption, check_severity(severity)
        self.seed, self.kind = int(seed), kind

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        if self.modality not in sample:
            have = [k for k in sample if k != "mask"]
            raise ValueError(f"the sample has no modality {self.modality!r} to corrupt; it has {have}")
        x = sample[self.modality]
        kind = self.kind or _kind(self.modality, x, None)
        check_corruption(self.corruption, kind, self.modality)
        out = dict(sample)
        if self.severity == 0:
            return out
        plain = x.as_subclass(Tensor)
        generator = torch.Generator().manual_seed(sample_seed(self.seed, plain))
        out[self.modality] = _rewrap(corrupt(plain, self.corruption, self.severity, kind, generator, self.modality), x)
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.modality!r}, {self.corruption!r}, severity={self.severity}, seed={self.seed})"
        )


class RandomCorruption:
    """Training form: with probability ``p``, one modality of the sample gets one corruption at
    one severity, drawn uniformly among the (modality, corruption) pairs that apply (by kind)
    and ``severities``; otherwise the sample is unchanged. Other modalities and the mask are
    never touched.

    Args:
        p: probability of corrupting a sample.
        corruptions: the names to draw from (default: all of :data:`CORRUPTIONS`).
        severities: the severities to draw from (1..5).
        modalities: the sample keys that may be corrupted (default: every key but the mask).
        kinds: optional ``{modality: kind}``; default from the tv_tensor class, else the name.
        generator: the source of every random number (default: torch's global generator, which
            the DataLoader seeds per worker).
    """

    def __init__(
        self,
        p: float = 0.5,
        corruptions: Sequence[str] | None = None,
        severities: Sequence[int] = SEVERITIES,
        modalities: Sequence[str] | None = None,
        kinds: Mapping[str, str] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p}")
        names = list(CORRUPTIONS) if corruptions is None else list(corruptions)
        unknown = [n for n in names if n not in CORRUPTIONS]
        if unknown or not names:
            raise ValueError(f"corruptions {names}: expected some of {list(CORRUPTIONS)}")
        severities = [check_severity(s) for s in severities]
        if not severities or 0 in severities:
            raise ValueError(f"severities {severities}: expected some of {list(SEVERITIES)} (0 is no corruption)")
        self.p, self.corruptions, self.severities = float(p), names, severities
        self.modalities = None if modalities is None else list(modalities)
        self.kinds = dict(kinds or {})
        self.generator = generator

    def _draw(self, n: int) -> int:
        return int(torch.randint(0, n, (1,), generator=self.generator))

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(sample)
        if float(torch.rand((), generator=self.generator)) >= self.p:
            return out
        keys = self.modalities if self.modalities is not None else list(sample)
        pairs = []  # (modality, corruption, kind) that apply
        for key in keys:
            if key == "mask" or key not in sample:
                continue
            kind = _kind(key, sample[key], self.kinds)
            pairs += [(key, name, kind) for name in self.corruptions if kind in CORRUPTIONS[name].kinds]
        if not pairs:
            return out
        key, name, kind = pairs[self._draw(len(pairs))]
        severity = self.severities[self._draw(len(self.severities))]
        x = sample[key]
        y = corrupt(x.as_subclass(Tensor), name, severity, kind, self.generator, key)
        out[key] = _rewrap(y, x)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, corruptions={self.corruptions}, severities={self.severities})"


class WithCorruption:
    """``transform(corruption(sample))``: the corruption on the decoded sample, then the pipeline
    (resize, normalisation, crop, flip). It has no ``from_raw``, so
    :class:`~cen.data.raw.RawDecodingDataset` hands it the decoded float sample: depth holes are
    real zeros in the decoded unit and RGB corruptions act on [0, 1], before any normalisation."""

    def __init__(self, corruption: Callable, transform: Callable | None = None) -> None:
        self.corruption, self.transform = corruption, transform

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        out = self.corruption(sample)
        return out if self.transform is None else self.transform(out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.corruption!r}, then {self.transform!r})"


def with_corruption(corruption: Callable, transform: Callable | None = None) -> WithCorruption:
    """A dataset ``transform`` that corrupts the decoded sample, then runs ``transform``
    (:class:`WithCorruption`), e.g. ``with_corruption(CorruptModality("depth", "depth_holes", 3),
    segmentation_eval())``."""
    return WithCorruption(corruption, transform)


__all__ = [
    "CORRUPTIONS",
    "SEVERITIES",
    "CorruptModality",
    "Corruption",
    "RandomCorruption",
    "WithCorruption",
    "check_corruption",
    "corrupt",
    "corruption_kinds",
    "corruptions_for",
    "line_kernel",
    "sample_seed",
    "with_corruption",
]
