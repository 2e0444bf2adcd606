"""The segmentation task's own config keys (joined with the shared schema, :mod:`cen.tasks.schema`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from cen.data.constants import IGNORE_INDEX
from cen.errors import ConfigError


@dataclass
class SegmentationData:
    num_classes: int = 40
    cache_dir: str | None = None  # folder keeping decoded pixels (each PNG decoded once); null: none
    # RGB-X layouts (rgbx, mfnet, deliver; docs/data.md)
    image_size: list[int] | None = None  # [H, W] every file must have (MFNet [480, 640]); null: not checked
    depth_scale: float | None = None  # rgbx, deliver: 16-bit depth x this = metres; null: 1/1000 (mm)
    deliver_conditions: list[str] | None = None  # deliver: cloud fog night rain sun to read; null: all
    deliver_cases: list[str] | None = None  # deliver: normal and sensor failures (motionblur ...) to read; null: all


@dataclass
class SegmentationModel:
    backbone: str = "resnet18"
    pretrained: str | None = None  # None, "imagenet" (torchvision weights) or a local file
    decoder_widths: list[int] | None = None  # RefineNet stage widths, deepest first; null = the reference's
    bn_stats: str = "train"  # train | frozen (reference: norms in eval mode, gamma/beta still train)
    decoder: str = "refinenet"  # refinenet (the reference's, any backbone) | mlp (SegFormer's all-MLP decoder)
    decoder_dim: int | None = None  # mlp decoder: its common width; null = 256 (SegFormer B0/B1; B2-B5 use 768)


@dataclass
class SegmentationLoss:
    ignore_index: int = IGNORE_INDEX
    resize: str = "logits"  # logits: upsample logits (bilinear) to the mask | masks: downsample masks, as the reference


@dataclass
class SegmentationEval:
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    upsample: str = "bilinear"  # logits to the mask size: bilinear | bicubic (the reference's cv2.INTER_CUBIC)


PARTS = {"data": SegmentationData, "model": SegmentationModel, "loss": SegmentationLoss, "eval": SegmentationEval}

CHOICES = {
    "model.bn_stats": ("train", "frozen"),
    "model.decoder": ("refinenet", "mlp"),
    "loss.resize": ("logits", "masks"),
    "eval.upsample": ("bilinear", "bicubic"),
}


def check_config(cfg) -> None:
    """Value checks of the keys above."""
    for key, allowed in CHOICES.items():
        group, name = key.split(".")
        value = cfg[group][name]
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not valid; expected one of {list(allowed)}")
    if cfg.data.num_classes < 1:
        raise ConfigError(f"data.num_classes must be >= 1, got {cfg.data.num_classes}")
    if not cfg.eval.scales or any(s <= 0 for s in cfg.eval.scales):
        raise ConfigError(f"eval.scales must be positive numbers, got {list(cfg.eval.scales)}")
