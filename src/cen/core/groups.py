"""Disjoint channel groups, one per modality (used by the l1 penalty and the fixed exchange)."""

from __future__ import annotations

import torch
from torch import Tensor


def disjoint_groups(num_modalities: int, num_features: int, device=None) -> Tensor:
    """Bool ``(M, C)``: row ``m`` marks the contiguous channel group of modality ``m``.

    Channel ``c`` belongs to group ``floor(c * M / C)``; with ``M = 2`` these are the halves.
    """
    group = torch.arange(num_features, device=device) * num_modalities // num_features
    return group.unsqueeze(0) == torch.arange(num_modalities, device=device).unsqueeze(1)
