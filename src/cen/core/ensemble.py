"""The learned ensemble of per-modality predictions (paper Sec. 3.3).

``fused = sum_m softmax(alpha)_m * pred_m``. As in the reference code the
per-modality predictions are detached by default, so the ensemble loss trains
only ``alpha`` and each branch is trained by its own loss. When some modalities
are missing, the softmax is taken over the present ones only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from cen.core.stacking import check_names


class Ensemble(nn.Module):
    """``alpha``-weighted sum of predictions given by modality name.

    Args:
        names: the modalities, in order (``alpha[m]`` belongs to ``names[m]``).
        detach: detach the predictions inside the ensemble (the paper's choice).
    """

    def __init__(self, names: Sequence[str], *, detach: bool = True) -> None:
        super().__init__()
        self.names = check_names(names, "Ensemble names")
        self.detach = detach
        # Ones, as the reference model (only the softmax matters: equal weights).
        self.alpha = nn.Parameter(torch.ones(len(self.names)))

    def weights(self, present: Sequence[str] | None = None) -> dict[str, Tensor]:
        """``{name: softmax weight}`` over the ``present`` modalities (default all)."""
        present = self.names if present is None else tuple(present)
        idx = [self._index(name) for name in present]
        soft = torch.softmax(self.alpha[idx], dim=0)
        return {name: soft[i] for i, name in enumerate(present)}

    def _index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(f"unknown modality {name!r}; this ensemble has {list(self.names)}") from None

    def forward(self, preds: Mapping[str, Tensor]) -> Tensor:
        """``{name: Tensor(B, *S)}`` for a non-empty subset of the names -> ``Tensor(B, *S)``."""
        if not preds:
            raise ValueError(f"Ensemble needs at least one prediction; expected some of {list(self.names)}")
        present = [name for name in self.names if name in preds]
        unknown = [name for name in preds if name not in self.names]
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; this ensemble has {list(self.names)}")
        fused = None
        for name, weight in self.weights(present).items():
            pred = preds[name].detach() if self.detach else preds[name]
            fused = weight * pred if fused is None else fused + weight * pred
        return fused

    def extra_repr(self) -> str:
        return f"names={list(self.names)}, detach={self.detach}"
