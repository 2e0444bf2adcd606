"""Scene-level presence data from the generated scenes: an RGB image and a point cloud from the depth map.

Read from the NYUDv2 layout that :mod:`cen.data.synth` writes (``rgb/``, ``depth/``,
``masks/`` and list files ``rgb<TAB>mask<TAB>depth``), nothing else is stored:

* ``rgb``: ``(3, H, W)`` float, normalised with the ImageNet mean and std;
* ``points``: ``(N, 3)`` float, metres in camera coordinates (x right, y down, z forward),
  back-projected from the 16-bit depth PNG with the per-image intrinsics and depth scale
  of ``ROOT/camera.json`` (written by the scene generator; read by
  :func:`cen.data.hha.camera_spec`); only valid pixels (depth > 0), so the sensor's holes
  are missing points and its noise is in the coordinates;
* ``target``: ``(K,)`` float in {0, 1}: which of :data:`PRESENCE_CLASSES` the scene
  shows (:func:`presence_labels`).

Fixed ``N`` per sample (:func:`sample_points`): ``N`` valid pixels drawn without
replacement when the depth map has at least ``N``, otherwise every valid pixel once
and the rest drawn again with replacement (a repeated point changes no max pool).
Training draws afresh at every visit (the engine seeds each draw from the epoch and
the index); evaluation draws once from the sample's index, so scores are repeatable.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from cen.data.base import modality_names
from cen.data.constants import IMAGENET_MEAN, IMAGENET_STD
from cen.data.hha import (
    CAMERA_FILE,
    CameraSpec,
    HHAError,
    Intrinsics,
    backproject,
    camera_spec,
    measured_room_depth,
)
from cen.data.images import read_image
from cen.data.lists import nyudv2_entries, raise_if_missing
from cen.data.synth.classes import BOX, CLASS_NAMES, CYLINDER, POSTER, RUG, SPHERE
from cen.errors import DataError

#: The modalities this data set provides, and the kind of each.
MODALITIES: dict[str, str] = {"rgb": "image", "points": "points"}
TARGET_KEY = "target"
#: The labelled classes (ids of :mod:`cen.data.synth.classes`). Wall and floor are in every
#: generated scene, so their presence says nothing; rug and poster are flat (RGB only), box,
#: cylinder and sphere share the scene's material (geometry only).
PRESENCE_CLASSES: tuple[int, ...] = (RUG, POSTER, BOX, CYLINDER, SPHERE)
PRESENCE_NAMES: tuple[str, ...] = tuple(CLASS_NAMES[c] for c in PRESENCE_CLASSES)
#: A class is present when it covers at least this share of the image (20 pixels of 72 x 96):
#: a handful of pixels of an object behind another is not something either sensor shows.
MIN_FRACTION = 0.003


def depth_to_points(depth: np.ndarray, intrinsics: Intrinsics, depth_scale: float, *, source: str = "depth") -> Tensor:
    """Back-project the valid pixels of a z-buffer depth map to camera coordinates.

    Args:
        depth: ``(H, W)`` uint16, raw units (``raw * depth_scale`` = metres), 0 = hole.
        intrinsics: the pinhole ``fx, fy, cx, cy`` in pixels (0-based pixel indices).
        source: what to name in errors (the file).

    Returns:
        ``(P, 3)`` float32 metres, ``P`` = number of valid pixels, in row-major pixel order:
        ``((u - cx) z / fx, (v - cy) z / fy, z)`` (:func:`cen.data.hha.backproject`).

    Raises:
        ValueError: not a 16-bit single-channel map, no valid pixel, or a median depth outside
            :data:`cen.data.hha.PLAUSIBLE_MEDIAN_M` (a wrong unit or scale).
    """
    if depth.dtype != np.uint16 or depth.ndim != 2:
        raise ValueError(
            f"{source}: depth image is {depth.dtype} with shape {depth.shape}; expected a 16-bit "
            "single-channel PNG (0 = hole)"
        )
    z = torch.from_numpy(depth.astype(np.float32)) * depth_scale
    valid = measured_room_depth(
        z, source, scale=depth_scale, fix="the depth_scale of camera.json does not fit these files"
    )
    return backproject(z, intrinsics)[:, valid].T.contiguous()


def sample_points(
    points: Tensor, num: int, generator: torch.Generator | None = None, *, source: str = "points"
) -> Tensor:
    """``num`` rows of ``points`` ``(P, 3)``: without replacement if ``P >= num``, else all ``P`` once and
    ``num - P`` more drawn with replacement; the result is shuffled. ``generator`` None uses torch's global RNG."""
    total = int(points.shape[0])
    if total == 0:
        raise ValueError(f"{source}: the depth map has no valid pixel (all holes); cannot sample {num} points")
    if total >= num:
        idx = torch.randperm(total, generator=generator)[:num]
    else:
        extra = torch.randint(total, (num - total,), generator=generator)
        idx = torch.cat([torch.arange(total), extra])
        idx = idx[torch.randperm(num, generator=generator)]
    return points[idx]


def presence_labels(
    mask: np.ndarray, classes: Sequence[int] = PRESENCE_CLASSES, min_fraction: float = MIN_FRACTION
) -> Tensor:
    """``(K,)`` float: 1 where class ``classes[k]`` covers at least ``ceil(min_fraction * H * W)`` pixels of ``mask``."""
    min_pixels = max(1, math.ceil(min_fraction * mask.size))
    counts = np.bincount(mask.ravel(), minlength=256)
    return torch.tensor([float(counts[c] >= min_pixels) for c in classes])


def normalize_rgb(rgb: np.ndarray) -> Tensor:
    """uint8 ``(H, W, 3)`` -> float ``(3, H, W)``, ImageNet mean and std per channel."""
    t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (t - mean) / std


class ScenePresence(Dataset):
    """Which classes a generated scene shows, from ``rgb`` and/or ``points``.

    Args:
        root: the scenes' root (NYUDv2 layout).
        list_file: a list file of that layout (``train.txt``), as a path or relative to ``root``.
        modalities: names from :data:`MODALITIES`, in the sample's order.
        num_points: ``N``, points per cloud.
        train: draw the points afresh at every call and flip at random (if ``flip``);
            otherwise a fixed draw per sample and no flip.
        flip: with ``train``, mirror left-right with probability 1/2: the image and the
            points' x together, so both modalities keep describing one scene (exact for the
            generated camera, whose principal point is the image centre).
        short_side: resize the image so its shorter side is this (None: as stored).
        cache: keep each sample's decoded image, valid points and labels in memory after its
            first read (about 0.16 MB a sample at 72 x 96; per data-loading process), so later
            epochs only draw points and flips.

    A sample is ``{"rgb": (3, H, W), "points": (N, 3), "target": (K,)}`` (the chosen modalities).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        list_file: str | os.PathLike,
        modalities: Sequence[str] = tuple(MODALITIES),
        *,
        num_points: int = 1024,
        train: bool = False,
        flip: bool = False,
        short_side: int | None = None,
        cache: bool = True,
    ) -> None:
        modalities = modality_names(modalities, "the presence data of the generated scenes", known=tuple(MODALITIES))
        if num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        self.entries = nyudv2_entries(root, list_file)
        roles = ("mask", *(("depth",) if "points" in modalities else ()), *(("rgb",) if "rgb" in modalities else ()))
        self.entries = [e.__class__(e.source, e.text, {r: e.files[r] for r in roles}) for e in self.entries]
        raise_if_missing(self.entries)
        self.camera: CameraSpec | None = None
        if "points" in modalities:
            path = Path(root) / CAMERA_FILE
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path}: no such file; the point clouds need the depth scale and per-image intrinsics it holds "
                    "(the scene generator writes it since version 3: delete the scenes folder to regenerate it)"
                )
            self.camera = camera_spec(root)
        self.modalities = modalities
        self.num_points, self.train, self.flip, self.short_side = int(num_points), train, flip, short_side
        self.cache = cache
        self._cache: dict[int, dict[str, Tensor]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        decoded = self._cache.get(index)
        if decoded is None:
            entry = self.entries[index]
            try:
                decoded = self._decode(entry)
            except (FileNotFoundError, ValueError) as err:
                raise type(err)(f"{err} [sample {entry.where()}]") from err
            if self.cache:
                self._cache[index] = decoded
        flip = self.train and self.flip and bool(torch.rand(()) < 0.5)
        sample: dict[str, Tensor] = {}
        for name in self.modalities:
            if name == "rgb":
                sample[name] = decoded[name].flip(-1) if flip else decoded[name]
            else:
                gen = None if self.train else torch.Generator().manual_seed(index)
                pts = sample_points(decoded[name], self.num_points, gen)
                sample[name] = pts * torch.tensor([-1.0, 1.0, 1.0]) if flip else pts
        sample[TARGET_KEY] = decoded[TARGET_KEY]
        return sample

    def _decode(self, entry) -> dict[str, Tensor]:
        """The sample's files as tensors before any random choice: the image, every valid point, the labels."""
        mask = read_image(entry.files["mask"])
        if mask.ndim != 2:
            raise ValueError(
                f"{entry.files['mask']}: label image has shape {mask.shape}; expected a single-channel PNG of class ids"
            )
        out = {TARGET_KEY: presence_labels(mask)}
        if "rgb" in self.modalities:
            rgb = read_image(entry.files["rgb"])
            if rgb.ndim != 3 or rgb.shape[:2] != mask.shape:
                raise ValueError(
                    f"{entry.files['rgb']}: image of shape {rgb.shape}; expected {mask.shape} x 3 "
                    f"like its mask {entry.files['mask']}"
                )
            img = normalize_rgb(rgb)
            if self.short_side:
                from torchvision.transforms.v2 import functional as TF

                img = TF.resize(img, self.short_side, antialias=True)
            out["rgb"] = img
        if "points" in self.modalities:
            path = entry.files["depth"]
            depth = read_image(path)
            try:
                k = self.camera.for_image(path.name, depth.shape[:2], str(path))
            except HHAError as err:
                raise ValueError(str(err)) from None
            out["points"] = depth_to_points(depth, k, self.camera.depth_scale, source=str(path))
        return out


def collate(samples: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """torch's default collate, after checking that every key has one shape across the batch.

    Raises:
        DataError: point clouds (``(N, F)`` tensors) of different sizes, or other tensors of
            different shapes, under one key: names the key and the sizes.
    """
    if samples and isinstance(samples[0], Mapping):
        for key, value in samples[0].items():
            if not isinstance(value, Tensor):
                continue
            shapes = [tuple(s[key].shape) for s in samples]
            if len(set(shapes)) == 1:
                continue
            if value.ndim == 2:
                sizes = [shape[0] for shape in shapes]
                raise DataError(
                    f"modality {key!r}: point clouds of different sizes {sizes[:8]}{' ...' if len(sizes) > 8 else ''}"
                    " in one batch and no collate rule for them; sample a fixed number per cloud "
                    "(data.num_points) or pass a collate_fn that pads or resamples"
                )
            raise DataError(f"{key!r}: samples of one batch have different shapes {shapes[:4]}; expected one shape")
    return default_collate(list(samples))
