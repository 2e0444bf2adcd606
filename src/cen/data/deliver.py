"""DELIVER (Zhang et al., "Delivering Arbitrary-Modal Semantic Segmentation", CVPR 2023).

Layout (``data.dataset: deliver``), Cityscapes-like, one folder per modality, condition,
split and scene::

    ROOT/
      img/<condition>/<split>/<scene>/<frame>_rgb_front.png        RGB
      depth/<condition>/<split>/<scene>/<frame>_depth_front.png    depth
      hha/<condition>/<split>/<scene>/<frame>_depth_front.png      HHA of the depth
      event/<condition>/<split>/<scene>/<frame>_event_front.png    event frame
      lidar/<condition>/<split>/<scene>/<frame>_lidar_front.png    LiDAR projected to the image
      semantic/<condition>/<split>/<scene>/<frame>_semantic_front.png   labels

``condition`` is one of cloud, fog, night, rain, sun; ``split`` one of train, val, test. A
scene whose folder name contains a sensor-failure case (motionblur, overexposure,
underexposure, lidarjitter, eventlowres) holds that case; every other scene is "normal". The
samples of a split are the RGB frames found under ``img/*/<split>/*/``; every other
modality is the file of the same frame. Labels are stored 1..25 in the first channel, 0 and
255 unlabelled. Frames are 1042x1042; in the ``eventlowres`` scenes the event frames are
smaller, and the reader upsamples them (nearest neighbours) to the RGB frame's size, as CMNeXt
does; that is the only file it resizes.

CMNeXt's own loader feeds the files of ``hha/`` as its "depth" input: the modality ``hha``
here; ``depth`` reads ``depth/``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from cen.data.base import Transform, modality_names
from cen.data.constants import IGNORE_INDEX
from cen.data.decode import ImageDecoder, LabelMapDecoder, PackDepthDecoder, UnitDecoder, shifted_labels
from cen.data.layouts import LAYOUT_INFO
from cen.data.lists import Entry, raise_if_missing
from cen.data.raw import RawDecodingDataset

DELIVER_CONDITIONS: tuple[str, ...] = ("cloud", "fog", "night", "rain", "sun")
DELIVER_FAILURES: tuple[str, ...] = ("motionblur", "overexposure", "underexposure", "lidarjitter", "eventlowres")
#: The cases a scene can hold: no sensor failure ("normal") or one of :data:`DELIVER_FAILURES`.
DELIVER_CASES: tuple[str, ...] = ("normal", *DELIVER_FAILURES)
DELIVER_SPLITS: tuple[str, ...] = ("train", "val", "test")
DELIVER_NUM_CLASSES = 25
#: (H, W) of DELIVER's frames; the recipe checks it with ``data.image_size``.
DELIVER_SIZE: tuple[int, int] = (1042, 1042)
#: modality -> (folder, the word in its file names ``<frame>_<word>_front.png``)
DELIVER_FILES: dict[str, tuple[str, str]] = {
    "rgb": ("img", "rgb"),
    "depth": ("depth", "depth"),
    "hha": ("hha", "depth"),
    "event": ("event", "event"),
    "lidar": ("lidar", "lidar"),
    "mask": ("semantic", "semantic"),
}
KINDS: dict[str, str] = {"rgb": "image", "depth": "depth", "hha": "hha", "event": "event", "lidar": "lidar"}
#: 16-bit depth x this = metres (millimetres), unless ``depth_scale`` says otherwise.
DELIVER_DEPTH_SCALE = 1e-3


def case_of(scene: str) -> str:
    """The case a scene folder holds: the failure named in it, else ``"normal"``."""
    return next((c for c in DELIVER_FAILURES if c in scene), "normal")


def _choose(values: Sequence[str] | None, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    if values is None:
        return allowed
    values = (values,) if isinstance(values, str) else tuple(values)
    unknown = [v for v in values if v not in allowed]
    if unknown or not values:
        raise ValueError(f"DELIVER {what} {list(values)}: expected some of {list(allowed)}")
    return values


def deliver_entries(
    root: str | os.PathLike,
    split: str,
    modalities: Sequence[str],
    conditions: Sequence[str] | None = None,
    cases: Sequence[str] | None = None,
) -> list[Entry]:
    """One entry per RGB frame ``img/<condition>/<split>/<scene>/<frame>_rgb_front.png`` of the
    chosen conditions and cases (None: all), sorted by path; each modality (and the mask) is the
    frame's file in its folder (:data:`DELIVER_FILES`). An entry's ``where()`` names the split
    and the RGB file.

    Raises ValueError for an unknown split, condition, case or modality, or when no frame is found
    (names the folders looked in)."""
    root = Path(root)
    if split not in DELIVER_SPLITS:
        raise ValueError(f"DELIVER split {split!r} unknown; expected one of {list(DELIVER_SPLITS)}")
    conditions = _choose(conditions, DELIVER_CONDITIONS, "conditions")
    cases = _choose(cases, DELIVER_CASES, "cases")
    unknown = [m for m in modalities if m not in DELIVER_FILES or m == "mask"]
    if unknown:
        raise ValueError(f"DELIVER has no modality {unknown}; it has {[m for m in DELIVER_FILES if m != 'mask']}")
    entries = []
    for condition in conditions:
        split_dir = root / "img" / condition / split
        if not split_dir.is_dir():
            continue
        for scene in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            if case_of(scene.name) not in cases:
                continue
            for rgb in sorted(scene.glob("*_rgb_front.png")):
                frame = rgb.name.removesuffix("_rgb_front.png")
                where = Path(condition) / split / scene.name
                files = {}
                for role in (*modalities, "mask"):
                    folder, word = DELIVER_FILES[role]
                    files[role] = root / folder / where / f"{frame}_{word}_front.png"
                entries.append(Entry(f"DELIVER split {split!r}", str(rgb.relative_to(root)), files))
    if not entries:
        raise ValueError(
            f"{root}: no DELIVER frame img/<condition>/{split}/<scene>/<frame>_rgb_front.png for the conditions "
            f"{list(conditions)} and cases {list(cases)}; expected the layout of docs/data.md (DELIVER)"
        )
    return entries


def image_size_of(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image file from its header (not decoded); errors name the file."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{path}: cannot decode image ({err}); expected a readable PNG") from err


class DELIVER(RawDecodingDataset):
    """DELIVER's RGB, depth, HHA, event and LiDAR frames (see the module docstring).

    Args:
        root: the DELIVER folder (``img/``, ``depth/``, ``hha/``, ``event/``, ``lidar/``, ``semantic/``).
        split: ``"train"``, ``"val"`` or ``"test"`` (folders, not list files).
        modalities: any of ``rgb``, ``depth``, ``hha``, ``event``, ``lidar``, in the sample's order.
        transform: joint transform of the sample (:mod:`cen.data.transforms`).
        conditions: weather conditions to read (:data:`DELIVER_CONDITIONS`), None for all.
        cases: cases to read (:data:`DELIVER_CASES`: ``normal`` and the sensor failures), None for all.
        num_classes: must be 25.
        depth_scale: 16-bit depth x this = metres (default 1/1000); 8-bit depth is x / 255.
        cache_dir: decoded-pixel cache folder, or None.
        image_size: (H, W) every file must have (:data:`DELIVER_SIZE`), or None; the event
            frames of ``eventlowres`` scenes are compared after their upsampling.
        missing_ok: do not check that every listed file exists (``cen data check`` reads each sample).

    A sample: ``{"rgb": (3, H, W) [0, 1], "depth": (3, H, W), "event": (3, H, W) [0, 1],
    "lidar": (3, H, W) [0, 1], "mask": (H, W) int64 0..24 or 255}`` before the transform.

    Raises:
        FileNotFoundError: a frame missing a modality's file (names the file and the RGB frame).
        ValueError: unknown split, condition, case or modality; no frame found; label values
            above 25; a file of another size than the frame's (when read, naming the file).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        modalities: Sequence[str] = ("rgb", "depth", "event", "lidar"),
        transform: Transform | None = None,
        conditions: Sequence[str] | None = None,
        cases: Sequence[str] | None = None,
        num_classes: int = DELIVER_NUM_CLASSES,
        depth_scale: float = DELIVER_DEPTH_SCALE,
        cache_dir: str | os.PathLike | None = None,
        image_size: tuple[int, int] | None = None,
        *,
        missing_ok: bool = False,
    ) -> None:
        modalities = modality_names(modalities, "DELIVER", known=tuple(KINDS))
        if int(num_classes) != DELIVER_NUM_CLASSES:
            raise ValueError(f"DELIVER has {DELIVER_NUM_CLASSES} classes; got num_classes={num_classes}")
        info = LAYOUT_INFO["deliver"]
        self.num_classes, self.classes, self.palette = DELIVER_NUM_CLASSES, info.classes, info.palette
        self.split = split
        entries = deliver_entries(root, split, modalities, conditions, cases)
        self.modalities = modalities
        self.kinds = {m: KINDS[m] for m in modalities}
        if not missing_ok:  # cen data check reports every missing file instead
            raise_if_missing(entries)
        # event frames of the event-low-resolution case -> the RGB frame they are upsampled to
        self.upsample_to = {
            str(e.files["event"]): Path(root) / e.text  # the entry's text is its RGB file
            for e in entries
            if "event" in e.files and case_of(e.files["event"].parent.name) == "eventlowres"
        }
        sensors = {
            "rgb": ImageDecoder(channels=3),
            "depth": PackDepthDecoder(scale=depth_scale, layout="DELIVER"),
            "hha": ImageDecoder(channels=3, kind="hha"),
            "event": UnitDecoder("event", (1, 3), 8),
            "lidar": UnitDecoder("lidar", (1, 3)),
        }
        decoders = {m: sensors[m] for m in modalities}
        decoders["mask"] = LabelMapDecoder(
            DELIVER_NUM_CLASSES,
            shifted_labels(DELIVER_NUM_CLASSES, also_ignored=(IGNORE_INDEX,)),
            f"0 or 255 (unlabelled) or 1..{DELIVER_NUM_CLASSES} (DELIVER classes are stored as 1..25)",
            first_channel=True,
        )
        super().__init__(entries, decoders, transform, cache_dir=cache_dir, image_size=image_size)

    def read_file(self, path) -> torch.Tensor:
        """The file's pixels; an event frame of an ``eventlowres`` scene upsampled (nearest
        neighbours) to its RGB frame's size when it is smaller."""
        img = super().read_file(path)
        rgb = self.upsample_to.get(str(path))
        if rgb is None:
            return img
        size = image_size_of(rgb)
        h, w = img.shape[-2:]
        if (h, w) == size or h > size[0] or w > size[1]:
            return img  # the same size, or larger: the size checks report it
        return F.resize_image(img, list(size), interpolation=InterpolationMode.NEAREST, antialias=False)
