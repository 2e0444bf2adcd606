"""Semantic segmentation: the task, its models, loss, metrics, evaluation and pictures."""

from cen.tasks.segmentation.losses import SegmentationLoss, check_labels
from cen.tasks.segmentation.metrics import SegmentationMetrics, scores_from_confusion
from cen.tasks.segmentation.models import TinySegNet
from cen.tasks.segmentation.task import SegmentationTask, freeze_norm_stats

__all__ = [
    "SegmentationLoss",
    "SegmentationMetrics",
    "SegmentationTask",
    "TinySegNet",
    "check_labels",
    "freeze_norm_stats",
    "scores_from_confusion",
]
