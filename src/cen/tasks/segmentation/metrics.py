"""Segmentation scores from a confusion matrix kept on the device.

:class:`SegmentationMetrics` holds one ``(K, K)`` ``int64`` confusion matrix
(rows: ground truth, columns: prediction) that lives on the metric's device, is
updated there without leaving it, and is summed over processes with one
``all_reduce`` by :meth:`~SegmentationMetrics.sync` and
:meth:`~SegmentationMetrics.compute` under an initialised :mod:`torch.distributed`
process group.

The scores follow the reference CEN / RefineNet-LW evaluation (``getScores``):

* pixel accuracy = trace / total;
* class accuracy = diag / row sums; **mean accuracy** averages it over the
  classes present in the ground truth;
* IoU = diag / (row + column - diag); **mIoU** averages it over the classes
  present in the ground truth *or* the prediction (a class only ever predicted
  counts with IoU 0; a class absent from both is left out).

Counting is one :func:`torch.bincount` (``index_put_`` with accumulation on
CUDA when deterministic algorithms are on). torchmetrics'
``MulticlassConfusionMatrix`` was considered and not used: with
``torch.use_deterministic_algorithms(True)`` (on any device) it counts through
an ``(N, K*K)`` comparison table, about 4 GB for one 640x480 image with 40
classes, its syncing all-gathers instead of all-reducing, and importing
torchmetrics costs more than importing torch itself (every ``cen`` command would
pay it). What remains is a buffer, a bincount and an all_reduce.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from cen.data.constants import IGNORE_INDEX

__all__ = ["SegmentationMetrics", "scores_from_confusion"]


def _all_reduce_sum(tensor: Tensor, group=None) -> Tensor:
    """A copy of ``tensor`` summed over the processes of ``group`` (itself when not distributed)."""
    out = tensor.clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out


def _count_pairs(index: Tensor, size: int, *, accumulate: bool | None = None) -> Tensor:
    """Histogram of ``index`` (int64, values in ``[0, size)``) as an int64 tensor of ``size``.

    ``accumulate`` (default: on CUDA under deterministic algorithms, where
    ``bincount`` may refuse) counts with a sorted ``index_put_`` instead.
    """
    if accumulate is None:
        accumulate = index.is_cuda and torch.are_deterministic_algorithms_enabled()
    if accumulate:
        counts = torch.zeros(size, dtype=torch.long, device=index.device)
        return counts.index_put_((index,), torch.ones_like(index), accumulate=True)
    return torch.bincount(index, minlength=size)


def scores_from_confusion(confmat: Tensor) -> dict[str, float | list[float | None]]:
    """Scores of a ``(K, K)`` confusion matrix (rows ground truth, columns prediction).

    Returns fractions in ``[0, 1]``:
    ``pixel_acc``, ``mean_acc``, ``miou`` (floats; ``nan`` when nothing was counted),
    ``per_class_acc`` and ``per_class_iou`` (lists of ``K``; ``None`` for a class
    the average leaves out, so the result stays valid JSON).
    """
    cm = confmat.detach().to("cpu", torch.float64)
    diag = cm.diagonal()
    gt = cm.sum(1)
    pred = cm.sum(0)
    total = cm.sum()
    union = gt + pred - diag
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    acc = torch.where(gt > 0, diag / gt.clamp_min(1), nan)
    iou = torch.where(union > 0, diag / union.clamp_min(1), nan)
    return {
        "pixel_acc": float(diag.sum() / total) if total > 0 else math.nan,
        "mean_acc": float(acc.nanmean()) if (gt > 0).any() else math.nan,
        "miou": float(iou.nanmean()) if (union > 0).any() else math.nan,
        "per_class_acc": [None if math.isnan(v) else v for v in acc.tolist()],
        "per_class_iou": [None if math.isnan(v) else v for v in iou.tolist()],
    }


class SegmentationMetrics:
    """Confusion matrix of a segmentation, accumulated on the device.

    Args:
        num_classes: ``K``; valid labels are ``0 .. K-1``.
        ignore_index: target value that is not counted (``None``: none).
        device: where the confusion matrix lives. ``None``: the device of the
            first target passed to :meth:`update` (inputs are moved to the
            metric's device otherwise).
        process_group: the :mod:`torch.distributed` group to sum over (default: all).

    ``update(preds, target)`` takes ``target`` label maps ``(B, H, W)`` (or
    ``(H, W)``) and ``preds`` either as logits/scores ``(B, K, h, w)`` (a
    floating tensor with one more dimension; resized bilinearly to ``(H, W)``
    when the size differs, then arg-maxed) or as integer label maps shaped like
    ``target``. A target value outside ``0 .. K-1`` that is not ``ignore_index``
    raises :class:`ValueError` (this costs one device-to-host sync per update).

    ``sync()`` returns the matrix summed over all processes (a copy; the local
    state is unchanged, so it may be called again); ``compute()`` returns
    :func:`scores_from_confusion` of it. Under :mod:`torch.distributed` every
    process must call them (they all_reduce).
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = IGNORE_INDEX,
        device: str | torch.device | None = None,
        *,
        process_group=None,
    ) -> None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index={ignore_index} is a valid class id for num_classes={num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.process_group = process_group
        self._device_fixed = device is not None
        self.confmat = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
        self._updates = 0

    @property
    def device(self) -> torch.device:
        return self.confmat.device

    def to(self, device: str | torch.device) -> SegmentationMetrics:
        """Move the state to ``device`` (returns ``self``)."""
        self.confmat = self.confmat.to(device)
        self._device_fixed = True
        return self

    def reset(self) -> None:
        """Zero the matrix (keeps the device)."""
        self.confmat.zero_()
        self._updates = 0

    @torch.no_grad()
    def update(self, preds: Tensor, target: Tensor) -> None:
        if not isinstance(preds, Tensor) or not isinstance(target, Tensor):
            raise TypeError(f"preds and target must be Tensors, got {type(preds).__name__} and {type(target).__name__}")
        if target.is_floating_point() or target.is_complex():
            raise TypeError(f"target must hold integer labels, got dtype {target.dtype}")
        if not self._device_fixed and self._updates == 0 and target.device != self.device:
            self.confmat = self.confmat.to(target.device)  # first update: follow the data
        target = target.to(self.device, non_blocking=True).long()
        preds = preds.to(self.device, non_blocking=True)
        K = self.num_classes

        if preds.is_floating_point():
            if preds.ndim != target.ndim + 1:
                raise ValueError(
                    f"logits of shape {tuple(preds.shape)} need one more dimension than target {tuple(target.shape)}"
                )
            if target.ndim not in (2, 3):
                raise ValueError(f"target must be (B, H, W) or (H, W) label maps, got shape {tuple(target.shape)}")
            if target.ndim == 2:  # one image: (K, h, w) with target (H, W)
                preds = preds.unsqueeze(0)
            elif preds.shape[0] != target.shape[0]:
                raise ValueError(f"logits {tuple(preds.shape)} and target {tuple(target.shape)} differ in batch size")
            if preds.shape[1] != K:
                raise ValueError(
                    f"logits have {preds.shape[1]} classes in {tuple(preds.shape)}, expected num_classes={K}"
                )
            if preds.shape[-2:] != target.shape[-2:]:
                preds = F.interpolate(preds.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
            labels = preds.argmax(1)
            if target.ndim == 2:
                labels = labels[0]
        else:
            if preds.shape != target.shape:
                raise ValueError(
                    f"predicted labels of shape {tuple(preds.shape)} differ from target {tuple(target.shape)}"
                )
            labels = preds.long()

        valid = (
            target != self.ignore_index if self.ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
        )
        bad = valid & ((target < 0) | (target >= K))
        if bool(bad.any()):
            value = int(target[bad][0])
            raise ValueError(
                f"target label {value} is not a class of num_classes={K} (valid: 0..{K - 1}"
                + (f", or {self.ignore_index} = ignore)" if self.ignore_index is not None else ")")
                + "; is num_classes too small for this data set?"
            )
        if not preds.is_floating_point():
            bad_pred = valid & ((labels < 0) | (labels >= K))
            if bool(bad_pred.any()):
                value = int(labels[bad_pred][0])
                raise ValueError(f"predicted label {value} is not a class of num_classes={K} (valid: 0..{K - 1})")

        # Ignored pixels go to an extra bin K*K that is dropped: no boolean
        # indexing, so no data-dependent shapes.
        index = torch.where(valid, target * K + labels, K * K).flatten()
        self.confmat += _count_pairs(index, K * K + 1)[: K * K].view(K, K)
        self._updates += 1

    def sync(self) -> Tensor:
        """The ``(K, K)`` matrix summed over all processes (a copy on this device)."""
        return _all_reduce_sum(self.confmat, self.process_group)

    def compute(self) -> dict[str, float | list[float | None]]:
        """Scores of :meth:`sync`'s matrix; see :func:`scores_from_confusion`."""
        return scores_from_confusion(self.sync())

    def __repr__(self) -> str:
        return (
            f"SegmentationMetrics(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"device={str(self.device)!r})"
        )
