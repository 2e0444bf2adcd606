"""The segmentation objective of CEN: a loss per branch, the ensemble's, and lambda * l1 on gamma.

``total = sum_m CE(logits_m, mask) + w_ens * CE(logits_ens, mask) + k * lambda * sparsity_loss``
with ``k = 1`` (the paper, our default) or ``k = number of outputs`` (the
reference code adds the l1 term once per output: three times with two
modalities). The ensemble's predictions are detached inside
:class:`cen.Ensemble`, so its loss trains only ``alpha``.

The decoder's logits are at 1/4 of the input size. By default they are
upsampled (bilinear) to the mask's size before the loss, so the loss sees
every labelled pixel as the evaluation does; ``resize="masks"`` instead
downsamples the masks (nearest), as the reference code does, which is cheaper
and gives slightly different numbers.

With ``sparsity_solver="proximal"`` the l1 term is left out of the total (it is
still reported under ``l1``) and the trainer applies its proximal step,
:func:`cen.core.sparsity.sparsity_shrink_`, after every optimiser step.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from cen.core.defaults import ENSEMBLE_KEY
from cen.core.sparsity import sparsity_loss, sparsity_shrink_
from cen.data.constants import IGNORE_INDEX
from cen.tasks.errors import DataError


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
    """CE per output + lambda * l1 (see the module docstring).

    Args:
        sparsity_weight: lambda.
        sparsity_mode: ``disjoint`` (the paper), ``all`` (ablation) or ``none``.
        sparsity_per_output: count the l1 term once per output, as the reference code.
        ensemble_weight: weight of the ensemble's CE.
        ignore_index: label ignored by the loss.
        resize: ``logits`` (upsample logits to the mask) or ``masks`` (downsample masks).
        sparsity_solver: ``gradient`` (l1 in the loss) or ``proximal`` (l1 only reported;
            see :meth:`shrink`).
    """

    def __init__(
        self,
        *,
        sparsity_weight: float = 2e-4,
        sparsity_mode: str = "disjoint",
        sparsity_per_output: bool = False,
        ensemble_weight: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
        resize: str = "logits",
        sparsity_solver: str = "gradient",
    ) -> None:
        super().__init__()
        if sparsity_mode not in ("disjoint", "all", "none"):
            raise ValueError(f"sparsity_mode={sparsity_mode!r}; expected disjoint, all or none")
        self.sparsity_weight = float(sparsity_weight)
        self.sparsity_mode = sparsity_mode
        self.sparsity_per_output = bool(sparsity_per_output)
        self.ensemble_weight = float(ensemble_weight)
        self.ignore_index = int(ignore_index)
        self.resize = resize
        if sparsity_solver not in ("gradient", "proximal"):
            raise ValueError(f"sparsity_solver={sparsity_solver!r}; expected gradient or proximal")
        self.sparsity_solver = sparsity_solver

    @property
    def _penalises(self) -> bool:
        return self.sparsity_mode != "none" and self.sparsity_weight > 0

    def _count(self, num_outputs: int) -> int:
        return num_outputs if self.sparsity_per_output else 1

    def shrink(self, model: nn.Module, lr: float, num_outputs: int) -> None:
        """The proximal l1 step after an optimiser step at learning rate ``lr`` (no-op for ``gradient``)."""
        if self.sparsity_solver == "proximal" and self._penalises:
            sparsity_shrink_(model, lr * self.sparsity_weight * self._count(num_outputs), self.sparsity_mode)

    def forward(
        self, outputs: Mapping[str, Tensor], mask: Tensor, model: nn.Module
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Return ``(total, parts)``; ``parts`` holds detached terms by name (``ce/<branch>``, ``l1``)."""
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
        if self._penalises:
            l1 = sparsity_loss(model, self.sparsity_mode)
            parts["l1"] = l1.detach()
            if self.sparsity_solver == "gradient":
                total = total + self._count(len(outputs)) * self.sparsity_weight * l1
        return total, parts
