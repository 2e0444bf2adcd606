"""Multi-label presence scores per output branch (torchmetrics).

For every branch (each modality's prediction, the ensemble, or the concatenation's):

* ``map``: mean average precision, the macro mean over the classes of the area under
  each class's precision-recall curve (ranking of the scenes by the logit; no threshold);
* ``per_class_ap``: the class APs, in the order of the class names (None for a class
  that no scene of the split shows: its AP is undefined, and ``map`` averages the others);
* ``f1``: macro F1 at probability 0.5 (``sigmoid(logit) >= 0.5``);
* ``exact_match``: share of scenes whose whole label vector is right at probability 0.5.

Under several processes the states are gathered (torchmetrics' sync) before computing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MultilabelAveragePrecision,
    MultilabelExactMatch,
    MultilabelF1Score,
    MultilabelStatScores,
)


class PresenceMetrics(nn.Module):
    """Accumulate ``(logits (B, K), targets (B, K) in {0, 1})`` per branch; :meth:`compute` gives the scores."""

    def __init__(self, class_names: Sequence[str], threshold: float = 0.5) -> None:
        super().__init__()
        self.class_names = tuple(class_names)
        self.threshold = threshold
        self.branches = nn.ModuleDict()

    def _collection(self) -> MetricCollection:
        k = len(self.class_names)
        return MetricCollection(
            {
                "ap": MultilabelAveragePrecision(num_labels=k, average=None, thresholds=None),
                "f1": MultilabelF1Score(num_labels=k, threshold=self.threshold, average="macro", zero_division=0),
                "exact_match": MultilabelExactMatch(num_labels=k, threshold=self.threshold),
                "stats": MultilabelStatScores(
                    num_labels=k, threshold=self.threshold, average=None
                ),  # support: positives
            }
        )

    def update(self, branch: str, logits: Tensor, target: Tensor) -> None:
        k = len(self.class_names)
        if logits.ndim != 2 or logits.shape[1] != k or target.shape != logits.shape:
            raise ValueError(
                f"branch {branch!r}: logits {tuple(logits.shape)} and targets {tuple(target.shape)} "
                f"must both be (B, {k})"
            )
        if branch not in self.branches:
            self.branches[branch] = self._collection().to(logits.device)
        # float probabilities: torchmetrics applies no second sigmoid to values in [0, 1]
        self.branches[branch].update(torch.sigmoid(logits.detach().float()), target.long())

    def compute(self) -> dict[str, dict]:
        out = {}
        for branch, collection in self.branches.items():
            values = collection.compute()
            # a class without a positive scene has no AP (None; torchmetrics would give 0); mAP averages the others
            positives = values["stats"][:, 4]
            ap = [float(v) if n > 0 and math.isfinite(float(v)) else None for v, n in zip(values["ap"], positives)]
            known = [v for v in ap if v is not None]
            out[branch] = {
                "map": sum(known) / len(known) if known else math.nan,
                "f1": float(values["f1"]),
                "exact_match": float(values["exact_match"]),
                "per_class_ap": ap,
            }
        return out
