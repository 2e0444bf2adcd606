"""MFNet (RGB-thermal urban scenes, Ha et al. IROS 2017) as its authors distribute it.

Layout (``data.dataset: mfnet``)::

    ROOT/
      images/<name>.png       ONE 4-channel 8-bit PNG per image: R, G, B, thermal (480x640)
      labels/<name>.png       8-bit class ids 0..8 (0 = unlabelled, scored as a class)
      train.txt, val.txt, test.txt   one name (stem) a line

The two modalities, ``rgb`` and ``thermal``, are channels of the same file: it is read once per
sample with all four channels (PIL and :func:`~cen.data.tensor_images.read_image_tensor` would
drop the fourth as alpha). 9 classes as the RGB-T methods evaluate them, unlabelled included.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cen.data.base import Transform, modality_names
from cen.data.constants import IGNORE_INDEX
from cen.data.decode import ChannelsOf, ImageDecoder, MaskDecoder, UnitDecoder
from cen.data.layouts import LAYOUT_INFO
from cen.data.lists import Entry, raise_if_missing, read_lines, resolve_list_file
from cen.data.raw import RawDecodingDataset
from cen.data.tensor_images import read_all_channels

MFNET_MODALITIES: tuple[str, ...] = ("rgb", "thermal")
MFNET_NUM_CLASSES = 9
#: (H, W) of every MFNet image; the recipe checks it with ``data.image_size``.
MFNET_SIZE: tuple[int, int] = (480, 640)
_CHANNELS = "R, G, B, thermal: MFNet's RGB-T images"


def mfnet_entries(root: str | os.PathLike, list_file: str | os.PathLike, modalities: Sequence[str]) -> list[Entry]:
    """Entries of an MFNet split file: one stem a line (a first whitespace-separated column;
    further columns ignored); every modality is ``images/<stem>.png``, the mask ``labels/<stem>.png``.

    Raises FileNotFoundError for a missing list file, ValueError for an empty list or a line
    that names a folder (names the file, line and text)."""
    root = Path(root)
    path = resolve_list_file(root, list_file)
    entries = []
    for n, line in read_lines(path):
        stem = line.split()[0]
        if "/" in stem or "\\" in stem:
            raise ValueError(f"{path}:{n}: malformed line {line!r}: expected one image name a line, e.g. '00001D'")
        stem = stem.removesuffix(".png")
        files = {m: root / "images" / f"{stem}.png" for m in modalities}
        files["mask"] = root / "labels" / f"{stem}.png"
        entries.append(Entry(f"{path}:{n}", line, files))
    return entries


class MFNet(RawDecodingDataset):
    """MFNet's RGB-thermal images (see the module docstring).

    Args:
        root: the data set folder (``images/``, ``labels/``, split files).
        list_file: ``train.txt`` / ``val.txt`` / ``test.txt``, a path or relative to ``root``.
        modalities: ``("rgb", "thermal")``, either alone, in the sample's order.
        transform: joint transform of the sample (:mod:`cen.data.transforms`).
        num_classes: must be 9 (MFNet's classes, unlabelled included).
        cache_dir: decoded-pixel cache folder (it keeps all four channels), or None.
        image_size: (H, W) every file must have (:data:`MFNET_SIZE`), or None.
        missing_ok: do not check that every listed file exists (``cen data check`` reads each sample).

    A sample: ``{"rgb": (3, H, W) in [0, 1], "thermal": (3, H, W) in [0, 1] (the 8-bit thermal
    channel / 255, replicated), "mask": (H, W) int64 0..8 or 255}`` before the transform.

    Raises:
        FileNotFoundError: a missing split file or listed file (names it and the line).
        ValueError: an image that is not a 4-channel PNG, labels above 8, a file of another size
            (when read; naming the file), a modality other than rgb / thermal.
    """

    file_reader = staticmethod(read_all_channels)
    cache_tag = "-all-channels"

    def __init__(
        self,
        root: str | os.PathLike,
        list_file: str | os.PathLike,
        modalities: Sequence[str] = MFNET_MODALITIES,
        transform: Transform | None = None,
        num_classes: int = MFNET_NUM_CLASSES,
        cache_dir: str | os.PathLike | None = None,
        image_size: tuple[int, int] | None = None,
        *,
        missing_ok: bool = False,
    ) -> None:
        modalities = modality_names(modalities, "MFNet", known=MFNET_MODALITIES)
        if int(num_classes) != MFNET_NUM_CLASSES:
            raise ValueError(
                f"MFNet has {MFNET_NUM_CLASSES} classes (unlabelled included); got num_classes={num_classes}"
            )
        info = LAYOUT_INFO["mfnet"]
        self.num_classes, self.classes, self.palette = MFNET_NUM_CLASSES, info.classes, info.palette
        self.modalities = modalities
        self.kinds = {"rgb": "image", "thermal": "thermal"}
        self.kinds = {m: self.kinds[m] for m in modalities}
        entries = mfnet_entries(root, list_file, modalities)
        if not missing_ok:  # cen data check reports every missing file instead
            raise_if_missing(entries)
        parts = {
            "rgb": ChannelsOf(ImageDecoder(channels=3), 0, 3, 4, _CHANNELS),
            "thermal": ChannelsOf(UnitDecoder("thermal", (1,), 8), 3, 4, 4, _CHANNELS),
        }
        decoders = {m: parts[m] for m in modalities}
        decoders["mask"] = MaskDecoder(MFNET_NUM_CLASSES, IGNORE_INDEX)
        super().__init__(entries, decoders, transform, cache_dir=cache_dir, image_size=image_size)
