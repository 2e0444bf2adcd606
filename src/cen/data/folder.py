"""Users' own data: ``<root>/<modality>/<stem>.<ext>`` with split files of stems."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from cen.data.base import Transform, modality_names
from cen.data.constants import IGNORE_INDEX, REFERENCE_DEPTH_SCALE
from cen.data.decode import MaskDecoder, decoder_for_kind
from cen.data.kinds import KINDS, check_kind, infer_kind
from cen.data.lists import folder_entries, raise_if_missing
from cen.data.raw import RawDecodingDataset

__all__ = ["KINDS", "FolderDataset", "infer_kind"]


class FolderDataset(RawDecodingDataset):
    """Aligned modalities stored as ``<root>/<modality>/<stem>.<ext>``.

    Args:
        root: data set root.
        modalities: folder names of the input modalities (sample keys).
        split_file: text file with one stem per line (path or relative to ``root``).
        transform: joint transform of the sample dict.
        mask: folder of the 8-bit label images (sample key ``"mask"``), or None.
        num_classes: required when ``mask`` is set: labels must be < this or ``ignore_index``.
        ext: file extension, one for all folders or a mapping folder -> extension.
        kinds: optional mapping modality -> a kind of :data:`~cen.data.kinds.KINDS` (``"image"``,
            ``"depth"``, ``"normal"``, ``"hha"``, ``"thermal"``, ``"event"``, ``"lidar"``); by
            default inferred from the name (:func:`infer_kind`).
        depth_scale: multiplies 16-bit depth (reference 1/5000: metres from NYUDv2's units of 1/5000 m;
            use 1e-3 for millimetres).
        channels: grey images and depth are replicated to this many channels.
        ignore_index: ignored label value.
        cache_dir: a folder that keeps the decoded pixels, so each file is decoded once
            (:class:`~cen.data.decoded_cache.DecodedCache`; the same samples), or None.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        modalities: Sequence[str],
        split_file: str | os.PathLike,
        transform: Transform | None = None,
        mask: str | None = "masks",
        num_classes: int | None = None,
        ext: str | Mapping[str, str] = "png",
        kinds: Mapping[str, str] | None = None,
        depth_scale: float = REFERENCE_DEPTH_SCALE,
        channels: int = 3,
        ignore_index: int = IGNORE_INDEX,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        modalities = modality_names(modalities, type(self).__name__)
        if mask is not None and num_classes is None:
            raise ValueError("num_classes is required when a mask folder is given")
        kinds = {m: check_kind((kinds or {}).get(m, infer_kind(m)), m) for m in modalities}
        self.kinds = kinds
        self.modalities = tuple(modalities)
        self.num_classes = num_classes
        entries = folder_entries(root, split_file, modalities, mask=mask, ext=ext)
        raise_if_missing(entries)
        decoders = {m: decoder_for_kind(kinds[m], depth_scale=depth_scale, channels=channels) for m in modalities}
        if mask is not None:
            decoders["mask"] = MaskDecoder(int(num_classes), ignore_index)
        super().__init__(entries, decoders, transform, cache_dir=cache_dir)
