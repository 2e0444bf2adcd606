"""Validating a data set on disk: every problem, one line each, naming the file.

Used by ``cen data check``; the loaders raise on the first problem instead. A file
whose bit depth differs from its modality's documented one is a problem (exit status
1), not a warning: the decoded values depend on the bit depth (an 8-bit file among
16-bit ones of the same domain is read on another scale, and the reference Taskonomy
decoding's fixed maxima assume the 16-bit values), so such a data set trains on
inconsistent inputs even where the loader accepts each file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cen.data.constants import IGNORE_INDEX, NYUDV2_NUM_CLASSES
from cen.data.decode import MaskDecoder, decoder_for_kind
from cen.data.images import image_size, read_image
from cen.data.kinds import KIND_BITS, infer_kind
from cen.data.lists import Entry, folder_entries, nyudv2_entries, taskonomy_entries
from cen.data.taskonomy import TASKONOMY_DOMAINS, check_domain, domain_decoder

LAYOUTS: tuple[str, ...] = ("nyudv2", "taskonomy", "folder", "rgbx", "mfnet", "deliver")
#: Layouts read by their data set class sample by sample (:func:`check_dataset` reports each sample's first problem).
SAMPLE_LAYOUTS: tuple[str, ...] = ("rgbx", "mfnet", "deliver")
DEFAULT_LISTS: tuple[str, ...] = ("train.txt", "val.txt", "test.txt")


#: What the bit depth of a role means, added to bit-depth problems.
BIT_HINTS: dict[str, str] = {
    "depth": "16-bit depth; NYUDv2 as distributed with the reference: units of 1/5000 m, 0 = hole",
    "hha": "8-bit RGB HHA, as `cen data hha` writes",
}


def check_entry(entry: Entry, decoders: Mapping[str, Callable], bits: Mapping[str, int] | None = None) -> list[str]:
    """Problems of one sample: missing, unreadable or undecodable files, wrong bit
    depth (``bits`` maps a role to 8 or 16), label values out of range, sizes that
    differ between the files. Each problem names the file and the list line."""
    problems: list[str] = []
    sizes: dict[Path, tuple[int, int]] = {}
    for role, decoder in decoders.items():
        path = entry.files[role]
        try:
            arr = read_image(path)
        except (FileNotFoundError, ValueError) as err:
            problems.append(f"{err} [{role}, {entry.where()}]")
            continue
        sizes[path] = image_size(arr)
        want = (bits or {}).get(role)
        got = 16 if arr.dtype == np.uint16 else 8
        if want is not None and got != want:
            hint = BIT_HINTS.get(role, BIT_HINTS.get(infer_kind(role)) if role != "mask" else None)
            hint = f" ({hint})" if hint else ""
            problems.append(f"{path}: {got}-bit image; expected {want}-bit for {role}{hint} [{entry.where()}]")
            continue
        try:
            decoder(arr, path)
        except ValueError as err:
            problems.append(f"{err} [{role}, {entry.where()}]")
    if len(set(sizes.values())) > 1:
        (p0, s0), *rest = sizes.items()
        for p, s in rest:
            if s != s0:
                problems.append(f"{p}: size {s[0]}x{s[1]} (HxW) differs from {p0} {s0[0]}x{s0[1]} [{entry.where()}]")
    return problems


def _list_files(root: Path, list_files: Sequence[str] | None) -> tuple[list[Path | str], list[str]]:
    if list_files:
        return list(list_files), []
    found = [root / name for name in DEFAULT_LISTS if (root / name).is_file()]
    if not found:
        return [], [f"{root}: no list file found; expected {', '.join(DEFAULT_LISTS)} or --list FILE"]
    return found, []


def _num_classes(root: Path, num_classes: int | None, default: int | None) -> int | None:
    if num_classes is not None:
        return num_classes
    meta = root / "classes.json"
    if meta.is_file():
        try:
            return int(json.loads(meta.read_text())["num_classes"])
        except (ValueError, KeyError, TypeError):
            pass
    return default


def _run(
    groups: Iterable[tuple[list[Entry], Mapping[str, Callable], Mapping[str, int] | None]],
    problems: list[str],
    progress: bool,
) -> list[str]:
    groups = list(groups)
    total = sum(len(entries) for entries, _, _ in groups)
    with tqdm(total=total, desc="check", unit="sample", disable=not progress) as bar:
        for entries, decoders, bits in groups:
            for entry in entries:
                problems.extend(check_entry(entry, decoders, bits))
                bar.update()
    return problems


def check_dataset(
    root: str | os.PathLike,
    layout: str,
    list_files: Sequence[str] | None = None,
    num_classes: int | None = None,
    domains: Sequence[str] | None = None,
    modalities: Sequence[str] | None = None,
    mask: str | None = "masks",
    progress: bool = True,
    image_size: tuple[int, int] | None = None,
) -> list[str]:
    """All problems of a data set on disk, one message per problem (empty: valid).

    Args:
        root: data set root.
        layout: ``"nyudv2"`` (also SUN RGB-D), ``"taskonomy"``, ``"folder"``, or a layout of the
            RGB-X methods, ``"rgbx"``, ``"mfnet"``, ``"deliver"``: every sample is read by the
            layout's data set class and its first problem reported (a missing or malformed file, a
            label above the class count, a size that differs), naming the file and the list line
            (DELIVER: the split and the RGB frame).
        list_files: list / split files; default ``train.txt``, ``val.txt``, ``test.txt``
            found in ``root`` (required for ``folder``); DELIVER: split names, default the
            splits whose ``img/<condition>/<split>`` exists.
        num_classes: label range; default from ``root/classes.json`` if present, else 40
            for nyudv2 (folder: labels are then only checked to be 8-bit), the layout's for
            the RGB-X layouts (rgbx: 37 with a ``labels/`` folder, SUN RGB-D's packs, else 40).
        domains: Taskonomy domains to check; default every known domain folder in root.
        modalities: folder layout: input folders; default every folder except ``mask``.
            nyudv2: modalities besides the list columns ``rgb`` and ``depth`` (e.g. ``hha``);
            default every modality folder holding the first sample's file. RGB-X layouts:
            default every modality folder found.
        mask: folder layout: label folder (None: no labels).
        progress: show a progress bar.
        image_size: rgbx, mfnet, deliver: the (H, W) every file must have, or None.
    """
    root = Path(root)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    if not root.is_dir():
        return [f"{root}: data set root is not a directory"]
    if layout in SAMPLE_LAYOUTS:  # each sample is read by the layout's data set class, as training reads it
        find = _deliver_splits if layout == "deliver" else _list_files
        lists, problems = find(root, list_files)
        datasets = []
        for lf in lists:
            try:
                datasets.append(_layout_dataset(root, layout, lf, num_classes, modalities, image_size))
            except (FileNotFoundError, ValueError) as err:
                problems.append(str(err))
        return _read_samples(datasets, problems, progress)
    problems: list[str] = []
    groups = []
    if layout == "folder" and not list_files:
        return [f"{root}: the folder layout needs a split file of stems (--list FILE)"]
    lists, problems = _list_files(root, list_files)

    if layout == "nyudv2":
        from cen.data.segmentation import available_modalities, with_modalities

        k = _num_classes(root, num_classes, NYUDV2_NUM_CLASSES)

        def parse(lf):  # every modality found beside the list columns, or the ones asked for
            entries = nyudv2_entries(root, lf)
            mods = (
                ("rgb", "depth", *(m for m in modalities if m not in ("rgb", "depth")))
                if modalities
                else available_modalities(root, entries[0])
            )
            return with_modalities(root, entries, tuple(mods))

        def decoders_of(entries):
            mods = [r for r in entries[0].files if r != "mask"]
            decoders = {m: decoder_for_kind(infer_kind(m)) for m in mods}
            decoders["mask"] = MaskDecoder(k, IGNORE_INDEX)
            bits = {m: KIND_BITS[infer_kind(m)] for m in mods if KIND_BITS[infer_kind(m)] is not None}
            return decoders, {**bits, "rgb": 8, "mask": 8}
    elif layout == "taskonomy":
        if domains:
            try:
                for d in domains:
                    check_domain(d)
            except ValueError as err:
                return [str(err)]
            names = list(domains)
        else:
            names = [d for d in TASKONOMY_DOMAINS if (root / d).is_dir()]
            if not names:
                return [f"{root}: no Taskonomy domain folder found; known domains: {', '.join(TASKONOMY_DOMAINS)}"]
        decoders = {d: domain_decoder(d) for d in names}
        bits = {d: TASKONOMY_DOMAINS[d].bits for d in names}
        parse = lambda lf: taskonomy_entries(root, lf, names)
        decoders_of = lambda entries: (decoders, bits)
    else:
        if mask is not None and not (root / mask).is_dir():
            mask = None
        mods = (
            list(modalities)
            if modalities
            else sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != mask and not p.name.startswith("."))
        )
        if not mods:
            return [f"{root}: no modality folders found"]
        decoders = {m: decoder_for_kind(infer_kind(m)) for m in mods}
        if mask is not None:
            k = _num_classes(root, num_classes, 256)
            decoders["mask"] = MaskDecoder(k, IGNORE_INDEX)
        bits = {m: KIND_BITS[infer_kind(m)] for m in mods if KIND_BITS[infer_kind(m)] is not None}
        parse = lambda lf: folder_entries(root, lf, mods, mask=mask)
        decoders_of = lambda entries: (decoders, bits)

    for lf in lists:
        try:
            entries = parse(lf)
        except (FileNotFoundError, ValueError) as err:
            problems.append(str(err))
            continue
        groups.append((entries, *decoders_of(entries)))
    return _run(groups, problems, progress)


def _layout_modalities(root: Path, layout: str) -> list[str]:
    """The modalities a data set of ``layout`` has on disk (its folders)."""
    if layout == "mfnet":
        return ["rgb", "thermal"]
    if layout == "rgbx":
        from cen.data.rgbx import RGBX_FOLDERS

        return ["rgb", *(m for m in ("depth", "hha") if (root / RGBX_FOLDERS[m]).is_dir())]
    from cen.data.deliver import DELIVER_FILES

    return ["rgb", *(m for m in ("depth", "hha", "event", "lidar") if (root / DELIVER_FILES[m][0]).is_dir())]


def _layout_dataset(root: Path, layout: str, list_file, num_classes: int | None, modalities, image_size):
    """The data set class of ``layout`` on one list file (DELIVER: split), not checking files."""
    mods = tuple(modalities) if modalities else tuple(_layout_modalities(root, layout))
    if layout == "rgbx":
        from cen.data.constants import SUNRGBD_NUM_CLASSES
        from cen.data.rgbx import RGBXPack, label_folder

        default = SUNRGBD_NUM_CLASSES if label_folder(root) == "labels" else NYUDV2_NUM_CLASSES
        k = _num_classes(root, num_classes, default)
        return RGBXPack(root, list_file, mods, num_classes=k, image_size=image_size, missing_ok=True)
    if layout == "mfnet":
        from cen.data.mfnet import MFNET_NUM_CLASSES, MFNet

        k = MFNET_NUM_CLASSES if num_classes is None else num_classes
        return MFNet(root, list_file, mods, num_classes=k, image_size=image_size, missing_ok=True)
    from cen.data.deliver import DELIVER, DELIVER_NUM_CLASSES

    k = DELIVER_NUM_CLASSES if num_classes is None else num_classes
    return DELIVER(root, str(list_file), mods, num_classes=k, image_size=image_size, missing_ok=True)


def _deliver_splits(root: Path, splits: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """The DELIVER splits to check (default: those whose ``img/<condition>/<split>`` exists), and the problem if none."""
    from cen.data.deliver import DELIVER_SPLITS

    found = list(splits) if splits else [s for s in DELIVER_SPLITS if any(root.glob(f"img/*/{s}"))]
    return found, [] if found else [f"{root}: no DELIVER split folder img/<condition>/<train|val|test>/ found"]


def _read_samples(datasets: Sequence, problems: list[str], progress: bool) -> list[str]:
    """``problems`` plus the first problem of each sample of ``datasets``, read as training reads it."""
    with tqdm(total=sum(len(ds) for ds in datasets), desc="check", unit="sample", disable=not progress) as bar:
        for ds in datasets:
            for i in range(len(ds)):
                try:
                    ds[i]
                except (FileNotFoundError, ValueError) as err:
                    problems.append(str(err))
                bar.update()
    return problems
