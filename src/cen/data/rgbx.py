"""NYUDv2 and SUN RGB-D as the RGB-X methods (CMX, DFormer, GeminiFusion) distribute them.

Layout (``data.dataset: rgbx``)::

    ROOT/
      RGB/<name>.jpg          8-bit RGB
      Depth/<name>.png        single-channel depth, 8-bit (most packs) or 16-bit; 0 = hole
      HHA/<name>.png|.jpg     8-bit RGB HHA (optional)
      Label/<name>.png        NYUDv2; SUN RGB-D packs call the folder labels/
      train.txt, test.txt     one sample a line: RGB/<name>.jpg (or the bare name);
                              further whitespace-separated columns are ignored

Labels are stored as 1..C with 0 = unlabelled; the loader subtracts 1, so class ids are
0..C-1 and unlabelled becomes the ignore index 255. C is 40 for NYUDv2, 37 for SUN RGB-D.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from cen.data.base import Transform, modality_names
from cen.data.constants import IGNORE_INDEX
from cen.data.decode import ImageDecoder, LabelMapDecoder, PackDepthDecoder, decoder_for_kind, shifted_labels
from cen.data.kinds import check_kind, infer_kind
from cen.data.layouts import LAYOUT_INFO
from cen.data.lists import Entry, raise_if_missing, read_lines, resolve_list_file
from cen.data.raw import RawDecodingDataset

#: Folder of each modality in the packs; any other modality is a folder of its own name.
RGBX_FOLDERS: dict[str, str] = {"rgb": "RGB", "depth": "Depth", "hha": "HHA"}
#: Label folders, in the order they are looked for (NYUDv2 packs: Label/, SUN RGB-D packs: labels/).
LABEL_FOLDERS: tuple[str, ...] = ("Label", "labels")
#: Extensions a modality file may have, in the order they are looked for (RGB: the list's own).
EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")
#: 16-bit depth x this = metres (millimetres), unless ``depth_scale`` says otherwise.
RGBX_DEPTH_SCALE = 1e-3


def label_folder(root: Path, given: str | None = None) -> str:
    """The label folder of a pack: ``given``, else the first of :data:`LABEL_FOLDERS` that exists.

    Raises FileNotFoundError naming the folders looked for."""
    if given is not None:
        return given
    for name in LABEL_FOLDERS:
        if (root / name).is_dir():
            return name
    raise FileNotFoundError(
        f"{root}: no label folder; expected {' or '.join(f'{n}/' for n in LABEL_FOLDERS)} "
        "(NYUDv2 packs: Label/, SUN RGB-D packs: labels/)"
    )


def _modality_file(root: Path, folder: str, name: str) -> Path:
    """``root/folder/name.<ext>`` with the first extension that exists (the first if none does,
    so a missing file is reported under its most likely name)."""
    candidates = [root / folder / f"{name}{ext}" for ext in EXTENSIONS]
    return next((p for p in candidates if p.is_file()), candidates[0])


def rgbx_entries(
    root: str | os.PathLike, list_file: str | os.PathLike, modalities: Sequence[str], labels: str | None = None
) -> list[Entry]:
    """Entries of an RGB-X pack's list file.

    A line's first whitespace-separated column names the RGB file with its folder
    (``RGB/123.jpg``) or is the bare name (``123``); further columns are ignored. The other
    modalities are the files of that name in their folders (:data:`RGBX_FOLDERS`), labels in
    ``labels`` (default: :func:`label_folder`).

    Raises FileNotFoundError for a missing list file or label folder, ValueError for an empty
    list or a line whose first column is in another folder (names the file, line and text)."""
    root = Path(root)
    path = resolve_list_file(root, list_file)
    label_dir = label_folder(root, labels)
    rgb_dir = RGBX_FOLDERS["rgb"]
    entries = []
    for n, line in read_lines(path):
        first = line.split()[0]
        folder, _, file = first.rpartition("/")
        if folder not in ("", rgb_dir) or not file:
            raise ValueError(
                f"{path}:{n}: malformed line {line!r}: expected the RGB file with its folder, e.g. "
                f"'{rgb_dir}/123.jpg' (or the bare name '123'), as the first column"
            )
        name = Path(file).stem if folder else file
        files: dict[str, Path] = {}
        for m in modalities:
            if m == "rgb":
                files[m] = root / first if folder else _modality_file(root, rgb_dir, name)
            else:
                files[m] = _modality_file(root, RGBX_FOLDERS.get(m, m), name)
        files["mask"] = root / label_dir / f"{name}.png"
        entries.append(Entry(f"{path}:{n}", line, files))
    return entries


def rgbx_decoders(
    modalities: Sequence[str],
    kinds: Mapping[str, str],
    num_classes: int,
    depth_scale: float = RGBX_DEPTH_SCALE,
    ignore_index: int = IGNORE_INDEX,
) -> dict:
    """The decoders of a pack's modalities (by kind; depth 8- or 16-bit) and of its 1..C labels."""
    decoders = {}
    for m in modalities:
        kind = kinds[m]
        if kind == "depth":
            decoders[m] = PackDepthDecoder(scale=depth_scale)
        elif kind == "image":
            decoders[m] = ImageDecoder(channels=3)
        else:
            decoders[m] = decoder_for_kind(kind)
    decoders["mask"] = LabelMapDecoder(
        num_classes,
        shifted_labels(num_classes, ignore_index=ignore_index),
        f"0 (unlabelled) or 1..{num_classes} (RGB-X pack labels: classes 1..C, 0 = unlabelled)",
        ignore_index=ignore_index,
    )
    return decoders


class RGBXPack(RawDecodingDataset):
    """NYUDv2 / SUN RGB-D in the layout of the RGB-X packs (see the module docstring).

    Args:
        root: the pack's folder (``RGB/``, ``Depth/`` or ``HHA/``, ``Label/`` or ``labels/``).
        list_file: ``train.txt`` / ``test.txt``, as a path or relative to ``root``.
        modalities: which to load, in this order in the sample: ``rgb``, ``depth``, ``hha`` or
            another folder's name; decoded by kind (:mod:`cen.data.kinds`) unless ``kinds`` says.
        transform: joint transform of the sample (:mod:`cen.data.transforms`).
        num_classes: C; label files hold 1..C and 0 (40 for NYUDv2, 37 for SUN RGB-D).
        depth_scale: 16-bit depth x this = metres (default 1/1000: millimetres). 8-bit depth is
            x / 255, a relative depth in [0, 1] (the packs do not state its scale).
        kinds: optional ``{modality: kind}`` overriding the kinds inferred from the names.
        labels: the label folder; default ``Label/`` or else ``labels/``, whichever exists.
        cache_dir: decoded-pixel cache folder (:class:`~cen.data.decoded_cache.DecodedCache`), or None.
        image_size: (H, W) every file must have (NYUDv2: 480x640), or None.
        missing_ok: do not check that every listed file exists (``cen data check`` reads each sample).

    A sample: ``{"rgb": (3, H, W) in [0, 1], "depth": (3, H, W) (8-bit: [0, 1]; 16-bit: metres),
    "mask": (H, W) int64 0..C-1 or 255}`` before the transform.

    Raises:
        FileNotFoundError: a missing list file, label folder or listed file (names it and the line).
        ValueError: malformed list line, label value above C (when read), a file of another size.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        list_file: str | os.PathLike,
        modalities: Sequence[str] = ("rgb", "depth"),
        transform: Transform | None = None,
        num_classes: int = 40,
        depth_scale: float = RGBX_DEPTH_SCALE,
        kinds: Mapping[str, str] | None = None,
        labels: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        image_size: tuple[int, int] | None = None,
        *,
        missing_ok: bool = False,
    ) -> None:
        modalities = modality_names(modalities, type(self).__name__)
        if not 1 <= int(num_classes) <= 254:
            raise ValueError(f"num_classes must be in 1..254 for labels stored as 1..C, got {num_classes}")
        self.num_classes = int(num_classes)
        self.modalities = modalities
        self.kinds = {m: check_kind((kinds or {}).get(m, infer_kind(m)), m) for m in modalities}
        info = {40: LAYOUT_INFO["rgbx_nyudv2"], 37: LAYOUT_INFO["rgbx_sunrgbd"]}.get(self.num_classes)
        self.classes = info.classes if info else None
        self.palette = info.palette if info else None
        entries = rgbx_entries(root, list_file, modalities, labels)
        if not missing_ok:  # cen data check reports every missing file instead
            raise_if_missing(entries)
        decoders = rgbx_decoders(modalities, self.kinds, self.num_classes, depth_scale)
        super().__init__(entries, decoders, transform, cache_dir=cache_dir, image_size=image_size)
