"""Multimodal data: loaders for the NYUDv2 / SUN RGB-D, Taskonomy and folder layouts,
joint transforms (:mod:`cen.data.transforms`) and the scene generator
(:mod:`cen.data.synth`).

Samples are dicts: one float tensor (C, H, W) per modality and ``"mask"`` (int64,
H x W, 255 = ignore) for segmentation or ``"target"`` for translation.
"""

from cen.data.base import MultiModalDataset
from cen.data.constants import (
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    REFERENCE_DEPTH_SCALE,
)
from cen.data.folder import FolderDataset
from cen.data.segmentation import SUNRGBD, NYUDv2
from cen.data.stats import mean_std
from cen.data.taskonomy import TASKONOMY_DOMAINS, Taskonomy

__all__ = [
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "REFERENCE_DEPTH_SCALE",
    "SUNRGBD",
    "TASKONOMY_DOMAINS",
    "FolderDataset",
    "MultiModalDataset",
    "NYUDv2",
    "Taskonomy",
    "mean_std",
]
