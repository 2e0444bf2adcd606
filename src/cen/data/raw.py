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
transform (``from_raw`` up to the rounding it documents). With ``cache_dir`` the files are
read through a :class:`~cen.data.decoded_cache.DecodedCache`: the same pixels, each PNG decoded
once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch

from cen.data.base import MultiModalDataset, load_entry
from cen.data.decoded_cache import DecodedCache
from cen.data.lists import Entry
from cen.data.tensor_images import read_image_tensor
from cen.data.tvtensors import unwrap_sample, wrap


def load_raw_entry(
    entry: Entry,
    decoders: Mapping[str, Any],
    read: Callable[[Any], torch.Tensor] = read_image_tensor,
    expected_size: tuple[int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Read and check every file of ``entry``: ``decoder.raw`` of each role's (C, H, W) tensor.

    ``read(path)`` gives a file's integer (C, H, W) pixels: :func:`~cen.data.tensor_images.read_image_tensor`
    or :meth:`DecodedCache.read <cen.data.decoded_cache.DecodedCache.read>`, which return the same.
    The errors of :func:`~cen.data.base.load_entry` (file, list line, sizes that differ or that are
    not ``expected_size``)."""
    return load_entry(
        entry,
        decoders,
        read=read,
        size_of=lambda img: (int(img.shape[-2]), int(img.shape[-1])),
        decode=lambda decoder, img, path: decoder.raw(img, path),
        expected_size=expected_size,
    )


def check_image_size(image_size: Any) -> tuple[int, int] | None:
    """``image_size`` as (H, W) of positive ints, or None; ValueError naming ``data.image_size`` otherwise."""
    if image_size is None:
        return None
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"data.image_size={image_size!r}: expected [H, W] in pixels, or null") from None
    if h < 1 or w < 1 or [h, w] != [float(v) for v in image_size]:
        raise ValueError(f"data.image_size={list(image_size)!r}: expected two positive integers [H, W], or null")
    return h, w


class RawDecodingDataset(MultiModalDataset):
    """:class:`~cen.data.base.MultiModalDataset` read with ``torchvision.io``; every decoder
    must have ``raw`` and ``finish`` (:class:`~cen.data.decode.ImageDecoder`,
    :class:`~cen.data.decode.DepthDecoder`, :class:`~cen.data.decode.NormalDecoder`,
    :class:`~cen.data.decode.MaskDecoder`). Same samples, same errors.

    ``cache_dir``: a folder for the decoded pixels (:class:`~cen.data.decoded_cache.DecodedCache`,
    created if missing; ``data.cache_dir`` in a config), or None to decode every file every time.
    The samples are the same either way. ``image_size``: the (H, W) every file must have, or None.

    Layouts change how a file is read through :attr:`file_reader` (with :attr:`cache_tag` naming
    it in the cache) and :meth:`read_file`; a file named by several roles of a sample (MFNet's
    RGB-T PNG) is read once per sample."""

    #: The pixels of one file, (C, H, W) integers (a staticmethod, so it pickles with the class).
    file_reader = staticmethod(read_image_tensor)
    #: Names ``file_reader`` in the cache's keys when it is not the default.
    cache_tag = ""
    #: The class of the error a bad file raises when a sample is read (a ValueError subclass):
    #: the command line sets :class:`cen.errors.DataError` so it prints one line.
    data_error: type[ValueError] = ValueError

    def __init__(
        self,
        *args,
        cache_dir: str | os.PathLike | None = None,
        image_size: tuple[int, int] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)  # MultiModalDataset's entries, decoders, transform, roles
        reader = self.file_reader if self.cache_tag else None  # None: the cache's default, read_image_tensor
        self.cache = None if cache_dir is None else DecodedCache(cache_dir, read=reader, tag=self.cache_tag)
        self.image_size = check_image_size(image_size)

    def read_file(self, path) -> torch.Tensor:
        """The integer (C, H, W) pixels of ``path``, from the cache when there is one."""
        return self.file_reader(path) if self.cache is None else self.cache.read(path)

    def __getitem__(self, index: int) -> dict[str, Any]:
        read_once: dict[str, torch.Tensor] = {}

        def read(path) -> torch.Tensor:
            key = str(path)
            if key not in read_once:
                read_once[key] = self.read_file(path)
            return read_once[key]

        try:
            raw = load_raw_entry(self.entries[index], self.decoders, read=read, expected_size=self.image_size)
        except ValueError as err:
            if isinstance(err, self.data_error):
                raise
            raise self.data_error(str(err)) from err
        keys = {role: self.roles.get(role, role) for role in raw}
        from_raw = getattr(self.transform, "from_raw", None)
        if from_raw is not None:
            sample = from_raw({keys[r]: t for r, t in raw.items()}, {keys[r]: self.decoders[r] for r in raw})
        else:
            sample = {keys[r]: wrap(self.decoders[r].finish(t), self.decoders[r].kind) for r, t in raw.items()}
            if self.transform is not None:
                sample = self.transform(sample)
        return unwrap_sample(sample)
