"""Users' own data: ``<root>/<modality>/<stem>.<ext>`` with split files of stems."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from cen.data.base import MultiModalDataset, Transform
from cen.data.constants import IGNORE_INDEX, REFERENCE_DEPTH_SCALE
from cen.data.decode import DepthDecoder, ImageDecoder, MaskDecoder, NormalDecoder
from cen.data.lists import folder_entries, raise_if_missing

KINDS: tuple[str, ...] = ("image", "depth", "normal")


def infer_kind(modality: str) -> str:
    """Kind of a modality from its folder name: ``depth*`` -> depth, ``normal*`` ->
    normal, anything else -> image."""
    name = modality.lower()
    if name.startswith("depth"):
        return "depth"
    if name.startswith("normal"):
        return "normal"
    return "image"


class FolderDataset(MultiModalDataset):
    """Aligned modalities stored as ``<root>/<modality>/<stem>.<ext>``.

    Args:
        root: data set root.
        modalities: folder names of the input modalities (sample keys).
        split_file: text file with one stem per line (path or relative to ``root``).
        transform: joint transform of the sample dict.
        mask: folder of the 8-bit label images (sample key ``"mask"``), or None.
        num_classes: required when ``mask`` is set: labels must be < this or ``ignore_index``.
        ext: file extension, one for all folders or a mapping folder -> extension.
        kinds: optional mapping modality -> ``"image" | "depth" | "normal"``; by default
            inferred from the name (:func:`infer_kind`).
        depth_scale: multiplies 16-bit depth (reference 1/5000: metres from NYUDv2's units of 1/5000 m;
            use 1e-3 for millimetres).
        channels: grey images and depth are replicated to this many channels.
        ignore_index: ignored label value.
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
    ) -> None:
        if isinstance(modalities, str):
            modalities = (modalities,)
        if not modalities or len(set(modalities)) != len(modalities) or "mask" in modalities:
            raise ValueError(f"modalities {tuple(modalities)!r} invalid; expected distinct folder names (not 'mask')")
        if mask is not None and num_classes is None:
            raise ValueError("num_classes is required when a mask folder is given")
        kinds = {m: (kinds or {}).get(m, infer_kind(m)) for m in modalities}
        for m, k in kinds.items():
            if k not in KINDS:
                raise ValueError(f"kind {k!r} of modality {m!r} unknown; expected one of {KINDS}")
        self.modalities = tuple(modalities)
        self.num_classes = num_classes
        entries = folder_entries(root, split_file, modalities, mask=mask, ext=ext)
        raise_if_missing(entries)
        makers = {
            "image": lambda: ImageDecoder(channels=channels),
            "depth": lambda: DepthDecoder(scale=depth_scale, channels=channels),
            "normal": NormalDecoder,
        }
        decoders = {m: makers[kinds[m]]() for m in modalities}
        if mask is not None:
            decoders["mask"] = MaskDecoder(int(num_classes), ignore_index)
        super().__init__(entries, decoders, transform)
