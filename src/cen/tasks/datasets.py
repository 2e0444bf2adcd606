"""Data sets by name (``data.dataset``) and the splits of a config.

Each entry of :data:`~cen.tasks.registry.DATASETS` says, per task, how to read one
list file of the data set; :func:`build_splits` turns the config's ``data`` keys
(``root``, ``train_list`` / ``val_list`` / ``test_list``, or a held-out share of
the training list) into ``{split: Dataset}``.

========== ====================================== ===========================
name       layout                                 tasks
========== ====================================== ===========================
scenes     generated scenes (cached in data.root) segmentation, translation
nyudv2     NYUDv2 as distributed with the ref.    segmentation
sunrgbd    SUN RGB-D, same layout                 segmentation
taskonomy  ``<root>/<domain>/point_..._<domain>`` translation
folder     ``<root>/<modality>/<stem>.<ext>``     segmentation
rgbx       NYUDv2 / SUN RGB-D as the RGB-X packs  segmentation
mfnet      MFNet (RGB-thermal, 4-channel PNGs)    segmentation
deliver    DELIVER (RGB, depth, event, LiDAR)     segmentation
========== ====================================== ===========================

DELIVER has no list files: its ``data.train_list`` / ``val_list`` / ``test_list`` name the split
folders (``train``, ``val``, ``test``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from cen.errors import DataError
from cen.tasks.registry import DATASETS

#: ``(root, list_file, cfg, transform) -> Dataset``
Reader = Callable[..., Dataset]


@dataclass(frozen=True)
class DatasetEntry:
    """How to read a data set for each task it serves, and how to make it first (optional)."""

    readers: Mapping[str, Reader]
    prepare: Callable | None = None  # (cfg) -> None: e.g. generate the scenes once
    subdir: Mapping[str, str] = field(default_factory=dict)  # task -> folder under data.root
    split_folders: bool = False  # True: the data.*_list keys name split folders, not list files (DELIVER)

    def reader(self, name: str, task: str) -> Reader:
        if task not in self.readers:
            have = [n for n in DATASETS.names() if task in DATASETS.get(n).readers]
            raise DataError(
                f"data.dataset={name!r} has no data for task {task!r}; for {task} use one of: {', '.join(have)}"
            )
        return self.readers[task]


def _class_options(cfg, transform) -> dict:
    """The keywords the segmentation data set classes take from the config alike: ``modalities``,
    ``transform``, ``num_classes`` and ``cache_dir``."""
    return {
        "modalities": tuple(cfg.modalities),
        "transform": transform,
        "num_classes": int(cfg.data.num_classes),
        "cache_dir": cfg.data.get("cache_dir"),
    }


def _nyudv2_layout(class_name: str) -> Reader:
    """The reader of a data set in NYUDv2's layout: ``cen.data.<class_name>`` (NYUDv2, SUNRGBD)."""

    def read(root, list_file, cfg, transform):
        import cen.data

        return getattr(cen.data, class_name)(root, list_file, **_class_options(cfg, transform))

    return read


_nyudv2, _sunrgbd = _nyudv2_layout("NYUDv2"), _nyudv2_layout("SUNRGBD")


def _folder(root, list_file, cfg, transform):
    from cen.data import FolderDataset

    return FolderDataset(root, split_file=list_file, **_class_options(cfg, transform))


def _taskonomy(root, list_file, cfg, transform):
    from cen.data import Taskonomy

    return Taskonomy(
        root,
        list_file,
        inputs=tuple(cfg.modalities),
        target=cfg.data.target,
        transform=transform,
        decode=cfg.data.decode,
    )


def _image_size(cfg):
    size = cfg.data.get("image_size")
    return None if size is None else tuple(size)


def _depth_scale(cfg, default: float) -> float:
    scale = cfg.data.get("depth_scale")
    return default if scale is None else float(scale)


def _rgbx(root, list_file, cfg, transform):
    from cen.data.rgbx import RGBX_DEPTH_SCALE, RGBXPack

    return RGBXPack(
        root,
        list_file,
        depth_scale=_depth_scale(cfg, RGBX_DEPTH_SCALE),
        image_size=_image_size(cfg),
        **_class_options(cfg, transform),
    )


def _mfnet(root, list_file, cfg, transform):
    from cen.data.mfnet import MFNet

    return MFNet(root, list_file, image_size=_image_size(cfg), **_class_options(cfg, transform))


def _deliver(root, split, cfg, transform):
    from cen.data.deliver import DELIVER, DELIVER_DEPTH_SCALE

    d = cfg.data
    return DELIVER(
        root,
        str(split),
        conditions=None if d.deliver_conditions is None else tuple(d.deliver_conditions),
        cases=None if d.deliver_cases is None else tuple(d.deliver_cases),
        depth_scale=_depth_scale(cfg, DELIVER_DEPTH_SCALE),
        image_size=_image_size(cfg),
        **_class_options(cfg, transform),
    )


def _generate_scenes(cfg) -> None:
    from cen.data import synth

    g = cfg.data.generate
    synth.ensure_generated(
        cfg.data.root, num=g.num, height=g.height, width=g.width, seed=g.seed, progress=True, workers=g.workers
    )


DATASETS.register("nyudv2")(DatasetEntry({"segmentation": _nyudv2}))
DATASETS.register("sunrgbd")(DatasetEntry({"segmentation": _sunrgbd}))
DATASETS.register("folder")(DatasetEntry({"segmentation": _folder}))
DATASETS.register("taskonomy")(DatasetEntry({"translation": _taskonomy}))
DATASETS.register("rgbx")(DatasetEntry({"segmentation": _rgbx}))
DATASETS.register("mfnet")(DatasetEntry({"segmentation": _mfnet}))
DATASETS.register("deliver")(DatasetEntry({"segmentation": _deliver}, split_folders=True))
DATASETS.register("scenes")(
    DatasetEntry(
        {"segmentation": _nyudv2, "translation": _taskonomy},
        prepare=_generate_scenes,
        subdir={"translation": "taskonomy"},
    )
)


def prepare_data(cfg) -> None:
    """Make the data set once if it is made rather than read (``scenes``); a no-op otherwise."""
    entry = DATASETS.get(cfg.data.dataset)
    if entry.prepare is not None:
        entry.prepare(cfg)


def build_splits(
    cfg, task: str, transforms: Mapping[str, object], splits: Sequence[str] = ("train", "val", "test")
) -> dict[str, Dataset]:
    """``{split: Dataset}`` read from ``data.root`` with the list files of the config.

    ``transforms`` maps ``"train"`` and ``"eval"`` to the task's joint transforms. With
    ``data.val_list: null`` the validation samples are a fixed share of the training list
    (:func:`holdout_split`), read with the evaluation transform.
    """
    d = cfg.data
    entry = DATASETS.get(d.dataset)
    read_one = entry.reader(d.dataset, task)
    root = Path(d.root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.root={str(root)!r} is not a folder; point data.root at the {d.dataset} data")
    root = root / entry.subdir.get(task, "")

    def read(list_name: str, key: str, transform):
        list_file = root / list_name
        if entry.split_folders:
            list_file = list_name  # a split folder's name, which the reader checks
        elif not list_file.is_file():
            raise FileNotFoundError(f"data.{key}: {list_file} does not exist")
        try:
            dataset = read_one(root, list_file, cfg, transform)
        except ValueError as err:  # malformed list files, unknown modalities ...: the data, not a bug
            raise DataError(f"data.{key} ({list_file}): {err}") from None
        if hasattr(dataset, "data_error"):  # a bad file found while reading a sample: one line too
            dataset.data_error = DataError
        return dataset

    out = {}
    held_out = d.val_list is None
    if "train" in splits or ("val" in splits and held_out):
        train_idx, val_idx = None, None
        if held_out:
            full = read(d.train_list, "train_list", None)
            train_idx, val_idx = holdout_split(len(full), d.val_fraction, d.val_seed)
        if "train" in splits:
            ds = read(d.train_list, "train_list", transforms["train"])
            out["train"] = Subset(ds, train_idx) if held_out else ds
        if "val" in splits and held_out:
            out["val"] = Subset(read(d.train_list, "train_list", transforms["eval"]), val_idx)
    if "val" in splits and not held_out:
        out["val"] = read(d.val_list, "val_list", transforms["eval"])
    if "test" in splits:
        out["test"] = read(d.test_list, "test_list", transforms["eval"])
    return out


def holdout_split(size: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """``(train indices, validation indices)``: a fixed random ``fraction`` held out (at least one)."""
    n_val = min(max(1, round(size * fraction)), size - 1)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[n_val:]), sorted(order[:n_val])
