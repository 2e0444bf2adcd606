"""Taskonomy domains for image-to-image translation."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

from cen.data.base import MultiModalDataset, Transform
from cen.data.decode import ImageDecoder, NormalDecoder, TaskonomyDepthDecoder
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


def check_domain(name: str) -> DomainSpec:
    """The spec of a domain; ValueError listing the known domains if it is unknown."""
    try:
        return TASKONOMY_DOMAINS[name]
    except KeyError:
        raise ValueError(f"unknown Taskonomy domain {name!r}; known domains: {', '.join(TASKONOMY_DOMAINS)}") from None


def domain_decoder(name: str, channels: int = 3, depth_max_m: float = 16.0):
    """Decoder of a domain: 8-bit / 255 or 16-bit / 65535 to [0, 1] (grey replicated to
    ``channels``); normals to [-1, 1]; depth (1/512 m, 65535 invalid) to
    metres / ``depth_max_m`` in [0, 1] with invalid pixels 0."""
    spec = check_domain(name)
    if spec.kind == "normal":
        return NormalDecoder()
    if spec.kind == "depth":
        return TaskonomyDepthDecoder(max_m=depth_max_m, channels=channels)
    return ImageDecoder(channels=channels)


class Taskonomy(MultiModalDataset):
    """Aligned Taskonomy domains: ``<root>/<domain>/point_<P>_view_<V>_domain_<domain>.png``.

    Args:
        root: data set root.
        list_file: file of ``{domain}`` path templates, one per line, e.g.
            ``{domain}/point_407_view_2_domain_{domain}.png`` (path or relative to root).
        inputs: input domains (sample keys are the domain names).
        target: target domain (sample key ``"target"``), or None for inputs only.
        transform: joint transform (see :func:`cen.data.transforms.translation_train`).
        channels: grey domains are replicated to this many channels (3: the shared
            convolutions of CEN need equal channel counts).
        depth_max_m: depth domains are divided by this (m) and clipped to [0, 1].

    Values: [0, 1] for images and depth, [-1, 1] for normals, float (C, H, W). The
    translation transforms map [0, 1] to [-1, 1].

    Raises:
        ValueError: unknown domain (lists the known ones), target among the inputs,
            empty or malformed list.
        FileNotFoundError: a listed file is missing (names it and the list line).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        list_file: str | os.PathLike,
        inputs: Sequence[str] = ("rgb",),
        target: str | None = "rgb",
        transform: Transform | None = None,
        channels: int = 3,
        depth_max_m: float = 16.0,
    ) -> None:
        if isinstance(inputs, str):
            inputs = (inputs,)
        if not inputs:
            raise ValueError("inputs must name at least one Taskonomy domain")
        for name in (*inputs, *([target] if target else [])):
            check_domain(name)
        if target is not None and target in inputs:
            raise ValueError(f"target domain {target!r} is also an input; inputs were {tuple(inputs)}")
        self.inputs = tuple(inputs)
        self.target = target
        domains = (*self.inputs, *([target] if target else []))
        entries = taskonomy_entries(root, list_file, domains)
        raise_if_missing(entries)
        decoders = {d: domain_decoder(d, channels, depth_max_m) for d in domains}
        super().__init__(entries, decoders, transform, roles={target: "target"} if target else None)
