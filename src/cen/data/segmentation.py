"""RGB-D semantic segmentation data in the reference layout (NYUDv2, SUN RGB-D)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from cen.data.base import Transform, modality_names
from cen.data.constants import (
    IGNORE_INDEX,
    NYUDV2_NUM_CLASSES,
    REFERENCE_DEPTH_SCALE,
    SUNRGBD_NUM_CLASSES,
)
from cen.data.decode import MaskDecoder, decoder_for_kind
from cen.data.kinds import check_kind, infer_kind
from cen.data.lists import Entry, nyudv2_entries, raise_if_missing
from cen.data.raw import RawDecodingDataset

#: The modalities every list line names (its columns); others are folders beside them.
SEGMENTATION_MODALITIES: tuple[str, ...] = ("rgb", "depth")
#: Folders of the layout that are not input modalities.
NOT_MODALITIES: frozenset[str] = frozenset({"masks", "taskonomy"})


def available_modalities(root: str | os.PathLike, entry: Entry) -> tuple[str, ...]:
    """The modalities of a data set in the NYUDv2 layout: ``rgb``, ``depth`` and every other
    folder of ``root`` that holds the file of ``entry`` (e.g. ``hha/``, ``normal/``)."""
    name = entry.files["depth"].name
    extra = sorted(
        p.name
        for p in Path(root).iterdir()
        if p.is_dir()
        and p.name not in NOT_MODALITIES
        and p.name not in SEGMENTATION_MODALITIES
        and not p.name.startswith(".")
        and (p / name).is_file()
    )
    return (*SEGMENTATION_MODALITIES, *extra)


def with_modalities(root: str | os.PathLike, entries: list[Entry], modalities: tuple[str, ...]) -> list[Entry]:
    """Entries restricted to ``modalities`` and the mask; a modality that is not a list column is
    the file of the depth column's name in the folder of that modality (``hha/000003.png``).

    Raises ValueError naming the modality and the ones the data set has (by its first sample)."""
    root = Path(root)
    for m in modalities:
        if m in SEGMENTATION_MODALITIES:
            continue
        if m in NOT_MODALITIES or m == "mask" or not (root / m / entries[0].files["depth"].name).is_file():
            have = available_modalities(root, entries[0])
            hint = " (make it with `cen data hha ROOT`)" if infer_kind(m) == "hha" else ""
            raise ValueError(f"modality {m!r} is not in the data set {root}{hint}; it has: {', '.join(have)}")
    out = []
    for e in entries:
        files = {
            m: e.files[m] if m in SEGMENTATION_MODALITIES else root / m / e.files["depth"].name for m in modalities
        }
        files["mask"] = e.files["mask"]
        out.append(Entry(e.source, e.text, files))
    return out


class NYUDv2(RawDecodingDataset):
    """NYUDv2 as distributed with the reference code (and the generated scenes).

    Layout: ``root/rgb/*.png`` (8-bit RGB), ``root/depth/*.png`` (16-bit, units of
    1/5000 m as distributed with the reference and in the generated scenes, 0 = hole), ``root/masks/*.png`` (8-bit class ids, 255 = ignore) and list files with
    lines ``rgb/000003.png<TAB>masks/000003.png<TAB>depth/000003.png``. Any other folder
    of ``root`` holding files named as the depth column's is a modality too: ``hha/``
    (``cen data hha``), and in the generated scenes ``normal/``, ``shading/``, ``texture/``.

    Args:
        root: data set root; list paths are relative to it.
        list_file: list file, as a path or relative to ``root`` (e.g. ``"train.txt"``).
        modalities: which modalities to load (``"rgb"``, ``"depth"`` or another folder's name),
            in this order in the sample; each is decoded by its kind (:mod:`cen.data.kinds`:
            ``depth*`` depth, ``normal*`` normals, ``hha*`` HHA, anything else an image) unless
            ``kinds`` says otherwise.
        transform: joint transform of the sample dict (see :mod:`cen.data.transforms`).
        num_classes: label values must be < this or ``ignore_index`` (40 for NYUDv2;
            pass the generated scenes' ``NUM_CLASSES`` for them).
        depth_scale: multiplies the raw 16-bit depth; the reference 1/5000 gives metres for NYUDv2 and
            the generated scenes (raw 25000 = 5 m).
        depth_channels: depth is replicated to this many channels (3, as the reference).
        ignore_index: label value that is ignored.
        kinds: optional ``{modality: kind}`` overriding the kinds inferred from the names.
        cache_dir: a folder that keeps the decoded pixels, so each PNG is decoded once
            (:class:`~cen.data.decoded_cache.DecodedCache`; the same samples), or None.

    A sample is ``{"rgb": (3, H, W) float in [0, 1], "depth": (3, H, W) float raw x
    depth_scale, "mask": (H, W) int64}`` before normalisation (which the transforms do).

    Raises:
        FileNotFoundError: missing list file, or a listed file is missing (names the file
            and the list line).
        ValueError: empty or malformed list file, a modality the data set does not have (lists
            those it has), bad ``num_classes``.
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
        kinds: Mapping[str, str] | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        modalities = modality_names(modalities, type(self).__name__)
        num_classes = self.default_num_classes if num_classes is None else int(num_classes)
        if not 1 <= num_classes <= 255 or num_classes > ignore_index:
            raise ValueError(f"num_classes must be in 1..{min(255, ignore_index)}, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.modalities = tuple(modalities)
        self.kinds = {m: check_kind((kinds or {}).get(m, infer_kind(m)), m) for m in self.modalities}
        entries = with_modalities(root, nyudv2_entries(root, list_file), self.modalities)
        raise_if_missing(entries)
        chosen = {
            m: decoder_for_kind(self.kinds[m], depth_scale=depth_scale, channels=depth_channels)
            for m in self.modalities
        }
        chosen["mask"] = MaskDecoder(num_classes, ignore_index)
        super().__init__(entries, chosen, transform, cache_dir=cache_dir)


class SUNRGBD(NYUDv2):
    """SUN RGB-D in the same layout as :class:`NYUDv2`, 37 classes by default."""

    default_num_classes = SUNRGBD_NUM_CLASSES
