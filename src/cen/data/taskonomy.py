"""Taskonomy domains for image-to-image translation."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from cen.data.base import MultiModalDataset, Transform
from cen.data.constants import TASKONOMY_REFERENCE_MAXIMA
from cen.data.decode import (
    ImageDecoder,
    NormalDecoder,
    TaskonomyDepthDecoder,
    TaskonomyReferenceDecoder,
)
from cen.data.lists import raise_if_missing, taskonomy_entries


@dataclass(frozen=True)
class DomainSpec:
    """How a Taskonomy domain is stored: ``kind`` (image, depth or normal) and the
    expected bit depth of its PNGs (8 or 16)."""

    kind: str
    bits: int


#: The Taskonomy domains the loader knows, with their storage.
TASKONOMY_DOMAINS: dict[str, DomainSpec] = {
    "rgb": DomainSpec("image", 8),
    "normal": DomainSpec("normal", 8),
    "reshading": DomainSpec("image", 8),
    "depth_euclidean": DomainSpec("depth", 16),
    "depth_zbuffer": DomainSpec("depth", 16),
    "principal_curvature": DomainSpec("image", 8),
    "edge_occlusion": DomainSpec("image", 16),
    "edge_texture": DomainSpec("image", 16),
    "segment_unsup2d": DomainSpec("image", 8),
    "segment_unsup25d": DomainSpec("image", 8),
    "keypoints2d": DomainSpec("image", 16),
    "keypoints3d": DomainSpec("image", 16),
}
#: The reference translation task: shading + texture edges -> RGB.
DEFAULT_INPUTS: tuple[str, ...] = ("reshading", "edge_texture")
DEFAULT_TARGET = "rgb"
#: ``linear``: stored values scaled linearly (8-bit / 255, 16-bit / 65535, depth in metres
#: / ``depth_max_m``, normals to [-1, 1]); ``reference``: the reference code's 8-bit
#: quantisation (see :class:`~cen.data.decode.TaskonomyReferenceDecoder`).
DECODINGS: tuple[str, ...] = ("linear", "reference")


def check_domain(name: str) -> DomainSpec:
    """The spec of a domain; ValueError listing the known domains if it is unknown."""
    try:
        return TASKONOMY_DOMAINS[name]
    except KeyError:
        raise ValueError(f"unknown Taskonomy domain {name!r}; known domains: {', '.join(TASKONOMY_DOMAINS)}") from None


def domain_decoder(name: str, channels: int = 3, depth_max_m: float = 16.0, decode: str = "linear"):
    """Decoder of a domain.

    ``decode="linear"``: 8-bit / 255 or 16-bit / 65535 to [0, 1] (grey replicated to
    ``channels``); normals to [-1, 1]; depth (1/512 m, 65535 invalid) to metres /
    ``depth_max_m`` in [0, 1] with invalid pixels 0. ``decode="reference"``: the
    reference's 8-bit values / 255, 3 channels (``channels`` must be 3)."""
    spec = check_domain(name)
    if decode == "reference":
        if channels != 3:
            raise ValueError(
                f"decode='reference' gives 3 channels (16-bit grey -> RGB as the reference); got channels={channels}"
            )
        return TaskonomyReferenceDecoder(name, TASKONOMY_REFERENCE_MAXIMA.get(name))
    if decode != "linear":
        raise ValueError(f"decode={decode!r} unknown; expected one of {DECODINGS}")
    if spec.kind == "normal":
        return NormalDecoder()
    if spec.kind == "depth":
        return TaskonomyDepthDecoder(max_m=depth_max_m, channels=channels)
    return ImageDecoder(channels=channels)


class Taskonomy(MultiModalDataset):
    """Aligned Taskonomy domains: ``<root>/<domain>/point_<P>_view_<V>_domain_<domain>.png``.

    By default the reference task: inputs ``reshading`` and ``edge_texture``, target ``rgb``.

    Args:
        root: data set root.
        list_file: file of ``{domain}`` path templates, one per line, e.g.
            ``{domain}/point_407_view_2_domain_{domain}.png`` (path or relative to root).
        inputs: input domains (sample keys are the domain names).
        target: target domain (sample key ``"target"``), or None for inputs only.
        transform: joint transform (``linear``: :func:`cen.data.transforms.translation_train`
            / ``translation_eval``; ``reference``: ``translation_reference_train`` / ``_eval``).
        channels: grey domains are replicated to this many channels (3: the shared
            convolutions of CEN need equal channel counts).
        depth_max_m: ``linear`` decoding: depth domains are divided by this (m) and
            clipped to [0, 1].
        decode: ``"linear"`` (default) or ``"reference"``, see :data:`DECODINGS`.

    Values before the transform, float (C, H, W): ``linear``: [0, 1] for images and
    depth, [-1, 1] for normals; ``reference``: 8-bit values / 255 in [0, 1] for every
    domain. The translation transforms map [0, 1] to [-1, 1].

    Raises:
        ValueError: unknown domain (lists the known ones), target among the inputs,
            repeated input, unknown ``decode``, empty or malformed list.
        FileNotFoundError: a listed view lacks the file of a domain (names it and the
            list line).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        list_file: str | os.PathLike,
        inputs: Sequence[str] = DEFAULT_INPUTS,
        target: str | None = DEFAULT_TARGET,
        transform: Transform | None = None,
        channels: int = 3,
        depth_max_m: float = 16.0,
        decode: str = "linear",
    ) -> None:
        if isinstance(inputs, str):
            inputs = (inputs,)
        if not inputs:
            raise ValueError("inputs must name at least one Taskonomy domain")
        if decode not in DECODINGS:
            raise ValueError(f"decode={decode!r} unknown; expected one of {DECODINGS}")
        for name in (*inputs, *([target] if target else [])):
            check_domain(name)
        if len(set(inputs)) != len(inputs):
            raise ValueError(f"inputs {tuple(inputs)} repeat a domain; expected distinct Taskonomy domains")
        if target is not None and target in inputs:
            raise ValueError(f"target domain {target!r} is also an input; inputs were {tuple(inputs)}")
        self.inputs = tuple(inputs)
        self.target = target
        self.decode = decode
        domains = (*self.inputs, *([target] if target else []))
        entries = taskonomy_entries(root, list_file, domains)
        raise_if_missing(entries)
        decoders = {d: domain_decoder(d, channels, depth_max_m, decode) for d in domains}
        super().__init__(entries, decoders, transform, roles={target: "target"} if target else None)
