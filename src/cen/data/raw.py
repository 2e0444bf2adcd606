"""Datasets that decode with ``torchvision.io`` and turn pixels into floats as late as possible.

:class:`RawDecodingDataset` is :class:`~cen.data.base.MultiModalDataset` with decoders that
work in two steps (``raw``, ``finish``; see :mod:`cen.data.decode`). It reads every file with
:func:`~cen.data.tensor_images.read_image_tensor` and checks it (``raw``), then:

* if the transform has ``from_raw`` (:class:`cen.data.transforms.SegmentationTrain`), hands it
  the integer tensors and the decoders: it resizes, crops and flips 8-bit pixels and finishes
  only the crop;
* otherwise finishes every tensor and applies the transform to the float sample, exactly as
  :class:`~cen.data.base.MultiModalDataset` does.

Both give what :class:`~cen.data.base.MultiModalDataset` gives for the same decoders and
transform (``from_raw`` up to the rounding it documents).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from cen.data.base import MultiModalDataset, load_entry
from cen.data.lists import Entry
from cen.data.tensor_images import read_image_tensor
from cen.data.tvtensors import unwrap_sample, wrap


def load_raw_entry(entry: Entry, decoders: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Read and check every file of ``entry``: ``decoder.raw`` of each role's (C, H, W) tensor.

    The errors of :func:`~cen.data.base.load_entry` (file, list line, sizes that differ)."""
    return load_entry(
        entry,
        decoders,
        read=read_image_tensor,
        size_of=lambda img: (int(img.shape[-2]), int(img.shape[-1])),
        decode=lambda decoder, img, path: decoder.raw(img, path),
    )


class RawDecodingDataset(MultiModalDataset):
    """:class:`~cen.data.base.MultiModalDataset` read with ``torchvision.io``; every decoder
    must have ``raw`` and ``finish`` (:class:`~cen.data.decode.ImageDecoder`,
    :class:`~cen.data.decode.DepthDecoder`, :class:`~cen.data.decode.NormalDecoder`,
    :class:`~cen.data.decode.MaskDecoder`). Same samples, same errors."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        raw = load_raw_entry(self.entries[index], self.decoders)
        keys = {role: self.roles.get(role, role) for role in raw}
        from_raw = getattr(self.transform, "from_raw", None)
        if from_raw is not None:
            sample = from_raw({keys[r]: t for r, t in raw.items()}, {keys[r]: self.decoders[r] for r in raw})
        else:
            sample = {keys[r]: wrap(self.decoders[r].finish(t), self.decoders[r].kind) for r, t in raw.items()}
            if self.transform is not None:
                sample = self.transform(sample)
        return unwrap_sample(sample)
