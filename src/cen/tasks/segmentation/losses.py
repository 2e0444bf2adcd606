"""The segmentation objective of CEN: a loss per branch and the ensemble's (the task adds λ·ℓ1 on γ).

``total = sum_m CE(logits_m, mask) + w_ens * CE(logits_ens, mask)``, to which the task adds
its :class:`cen.tasks.sparsity.SparsityPenalty` (``k · λ · Σ|γ|``, ``k = 1`` by default or the
number of outputs as the reference code). The ensemble's predictions are detached inside
:class:`cen.Ensemble`, so its loss trains only ``alpha``.

The decoder's logits are at 1/4 of the input size. By default they are
upsampled (bilinear) to the mask's size before the loss, so the loss sees
every labelled pixel as the evaluation does; ``resize="masks"`` instead
downsamples the masks (nearest), as the reference code does, which is cheaper
and gives slightly different numbers.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from cen.core.defaults import ENSEMBLE_KEY
from cen.data.constants import IGNORE_INDEX
from cen.errors import DataError


def check_labels(mask: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX, where: str = "") -> None:
    """Raise a clear error when ``mask`` holds a label ``>= num_classes`` (other than ``ignore_index``).

    Call it on the CPU batch, before it moves to a device (no host sync).
    """
    valid = mask[mask != ignore_index]
    if valid.numel() == 0:
        return
    high, low = int(valid.max()), int(valid.min())
    if high >= num_classes or low < 0:
        bad = sorted({int(v) for v in valid.unique() if v >= num_classes or v < 0})
        raise DataError(
            f"{where + ': ' if where else ''}the masks hold labels {bad[:10]} outside 0..{num_classes - 1} "
            f"(data.num_classes={num_classes}, ignore index {ignore_index}); set data.num_classes to at least "
            f"{high + 1} or map those labels to {ignore_index}"
        )


def resize_pair(logits: Tensor, mask: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """Bring ``logits (B, K, h, w)`` and ``mask (B, H, W)`` to one size: ``mode`` is ``logits`` or ``masks``."""
    if logits.shape[-2:] == mask.shape[-2:]:
        return logits, mask
    if mode == "logits":
        return F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False), mask
    if mode == "masks":
        small = F.interpolate(mask[:, None].float(), size=logits.shape[-2:], mode="nearest")[:, 0]
        return logits, small.long()
    raise ValueError(f"resize mode {mode!r} is not known; expected 'logits' or 'masks'")


class SegmentationLoss(nn.Module):
    """``sum_m CE(logits_m, mask) + w_ens * CE(logits_ens, mask)`` (the ℓ1 term is the task's
    :class:`cen.tasks.sparsity.SparsityPenalty`).

    Args:
        ensemble_weight: weight of the ensemble's CE.
        ignore_index: label ignored by the loss.
        resize: ``logits`` (upsample logits to the mask) or ``masks`` (downsample masks).
    """

    def __init__(
        self, *, ensemble_weight: float = 1.0, ignore_index: int = IGNORE_INDEX, resize: str = "logits"
    ) -> None:
        super().__init__()
        if resize not in ("logits", "masks"):
            raise ValueError(f"resize mode {resize!r} is not known; expected 'logits' or 'masks'")
        self.ensemble_weight = float(ensemble_weight)
        self.ignore_index = int(ignore_index)
        self.resize = resize

    def forward(self, outputs: Mapping[str, Tensor], mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Return ``(total, parts)``; ``parts`` holds the detached CE of each branch (``ce/<branch>``)."""
        parts: dict[str, Tensor] = {}
        total = None
        for name, logits in outputs.items():
            lg, target = resize_pair(logits, mask, self.resize)
            ce = F.cross_entropy(lg, target, ignore_index=self.ignore_index)
            weight = self.ensemble_weight if name == ENSEMBLE_KEY else 1.0
            parts[f"ce/{name}"] = ce.detach()
            term = weight * ce
            total = term if total is None else total + term
        if total is None:
            raise ValueError("the model returned no outputs")
        return total, parts
