"""Multimodal data: loaders for the NYUDv2 / SUN RGB-D, Taskonomy and folder layouts and for
the RGB-X methods' layouts (:class:`RGBXPack`, :class:`MFNet`, :class:`DELIVER`), joint
transforms (:mod:`cen.data.transforms`), sensor corruptions (:mod:`cen.data.corruptions`) and
the scene generator (:mod:`cen.data.synth`).

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
from cen.data.deliver import DELIVER
from cen.data.folder import FolderDataset
from cen.data.mfnet import MFNet
from cen.data.rgbx import RGBXPack
from cen.data.segmentation import SUNRGBD, NYUDv2
from cen.data.stats import mean_std
from cen.data.taskonomy import TASKONOMY_DOMAINS, Taskonomy

__all__ = [
    "DELIVER",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "REFERENCE_DEPTH_SCALE",
    "SUNRGBD",
    "TASKONOMY_DOMAINS",
    "FolderDataset",
    "MFNet",
    "MultiModalDataset",
    "NYUDv2",
    "RGBXPack",
    "Taskonomy",
    "mean_std",
]
