"""Channel exchange, paper Eq. 6, on a modality-split view.

For modality ``m`` and channel ``c``: keep ``y[:, m, c]`` where the keep-mask is
true, otherwise take the mean over the other modalities ``m' != m`` of
``y[:, m', c]``. One ``torch.where``, no data-dependent indexing, so no host
synchronisation and no graph break under ``torch.compile``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def mean_of_others(y: Tensor) -> Tensor:
    """``Tensor(B, K, C, *S)`` -> the mean over the other ``K-1`` modalities, same shape."""
    num = y.shape[1]
    if num == 2:
        return y.flip(1)  # the other modality itself; cheaper than sum-minus-self
    return (y.sum(dim=1, keepdim=True) - y) / (num - 1)


def exchange(y: Tensor, keep: Tensor) -> Tensor:
    """Apply Eq. 6.

    Args:
        y: normalised outputs, ``Tensor(B, K, C, *S)`` for ``K`` modalities.
        keep: bool ``Tensor(K, C)``, true where a modality keeps its own channel
            (``|gamma| >= threshold``).

    Returns:
        ``Tensor(B, K, C, *S)``. With ``K == 1`` there is no other modality and
        ``y`` is returned unchanged.
    """
    num, channels = y.shape[1], y.shape[2]
    if num == 1:
        return y
    mask = keep.reshape(1, num, channels, *([1] * (y.dim() - 3)))
    return torch.where(mask, y, mean_of_others(y))
