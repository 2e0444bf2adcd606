"""RGB-D semantic segmentation data in the reference layout (NYUDv2, SUN RGB-D)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from cen.data.base import MultiModalDataset, Transform
from cen.data.constants import (
    IGNORE_INDEX,
    NYUDV2_NUM_CLASSES,
    REFERENCE_DEPTH_SCALE,
    SUNRGBD_NUM_CLASSES,
)
from cen.data.decode import DepthDecoder, ImageDecoder, MaskDecoder
from cen.data.lists import nyudv2_entries, raise_if_missing

SEGMENTATION_MODALITIES: tuple[str, ...] = ("rgb", "depth")


class NYUDv2(MultiModalDataset):
    """NYUDv2 as distributed with the reference code (and the generated scenes).

    Layout: ``root/rgb/*.png`` (8-bit RGB), ``root/depth/*.png`` (16-bit, units of
    1/5000 m as distributed with the reference, millimetres in the generated scenes,
    0 = hole), ``root/masks/*.png`` (8-bit class ids, 255 = ignore) and list files with
    lines ``rgb/000003.png<TAB>masks/000003.png<TAB>depth/000003.png``.

    Args:
        root: data set root; list paths are relative to it.
        list_file: list file, as a path or relative to ``root`` (e.g. ``"train.txt"``).
        modalities: which of ``"rgb"``, ``"depth"`` to load, in this order in the sample.
        transform: joint transform of the sample dict (see :mod:`cen.data.transforms`).
        num_classes: label values must be < this or ``ignore_index`` (40 for NYUDv2;
            pass the generated scenes' ``NUM_CLASSES`` for them).
        depth_scale: multiplies the raw 16-bit depth; the reference 1/5000 gives metres for NYUDv2 (raw
            25000 = 5 m) and metres / 5 for the generated scenes (millimetres).
        depth_channels: depth is replicated to this many channels (3, as the reference).
        ignore_index: label value that is ignored.

    A sample is ``{"rgb": (3, H, W) float in [0, 1], "depth": (3, H, W) float raw x
    depth_scale, "mask": (H, W) int64}`` before normalisation (which the transforms do).

    Raises:
        FileNotFoundError: missing list file, or a listed file is missing (names the file
            and the list line).
        ValueError: empty or malformed list file, unknown modality, bad ``num_classes``.
    """

    default_num_classes = NYUDV2_NUM_CLASSES

    def __init__(
        self,
        root: str | os.PathLike,
        list_file: str | os.PathLike,
        modalities: Sequence[str] = SEGMENTATION_MODALITIES,
        transform: Transform | None = None,
        num_classes: int | None = None,
        depth_scale: float = REFERENCE_DEPTH_SCALE,
        depth_channels: int = 3,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        if isinstance(modalities, str):
            modalities = (modalities,)
        unknown = [m for m in modalities if m not in SEGMENTATION_MODALITIES]
        if unknown or not modalities or len(set(modalities)) != len(modalities):
            raise ValueError(
                f"modalities {tuple(modalities)!r} invalid; expected distinct names from {SEGMENTATION_MODALITIES}"
            )
        num_classes = self.default_num_classes if num_classes is None else int(num_classes)
        if not 1 <= num_classes <= 255 or num_classes > ignore_index:
            raise ValueError(f"num_classes must be in 1..{min(255, ignore_index)}, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.modalities = tuple(modalities)
        entries = nyudv2_entries(root, list_file)
        roles = (*self.modalities, "mask")
        entries = [e.__class__(e.source, e.text, {r: e.files[r] for r in roles}) for e in entries]
        raise_if_missing(entries)
        decoders = {
            "rgb": ImageDecoder(channels=3),
            "depth": DepthDecoder(scale=depth_scale, channels=depth_channels),
        }
        chosen = {m: decoders[m] for m in self.modalities}
        chosen["mask"] = MaskDecoder(num_classes, ignore_index)
        super().__init__(entries, chosen, transform)


class SUNRGBD(NYUDv2):
    """SUN RGB-D in the same layout as :class:`NYUDv2`, 37 classes by default."""

    default_num_classes = SUNRGBD_NUM_CLASSES
