"""Channel exchange, paper Eq. 6, on a modality-split view.

For modality ``m`` and channel ``c``: keep ``y[:, m, c]`` where the keep-mask is
true, otherwise take the mean over the other modalities ``m' != m`` of
``y[:, m', c]``. No data-dependent indexing, so no host synchronisation and no
graph break under ``torch.compile``.

With two modalities the "mean of the others" is the other modality itself, so
the whole exchange is one channel gather (``index_select`` with an index built
by ``torch.where`` from the mask); with more it is one ``torch.where`` between
``y`` and ``(sum_m y - y) / (M - 1)``. :func:`exchange_split` is the same on the
``(B, K, C, *S)`` view, always as one ``torch.where`` (the form a compiler fuses
with the norm before it).
"""

from __future__ import annotations

import torch
from torch import Tensor


def exchange(y: Tensor, keep: Tensor) -> Tensor:
    """Apply Eq. 6.

    Args:
        y: normalised outputs, ``Tensor(B, K*C, *S)``: channel ``m*C + c`` is
            channel ``c`` of modality ``m`` (the free view of a stacked batch).
        keep: bool ``Tensor(K, C)``, true where a modality keeps its own channel
            (``|gamma| >= threshold``).

    Returns:
        ``Tensor(B, K*C, *S)``, a new tensor. With ``K == 1`` there is no other
        modality and ``y`` is returned unchanged.
    """
    num, channels = keep.shape
    if num == 1:
        return y
    if num == 2:
        own = torch.arange(num * channels, device=y.device).view(num, channels)
        source = torch.where(keep, own, own.flip(0))  # the other modality's channel where not kept
        return y.index_select(1, source.reshape(-1))
    return exchange_split(y.view(y.shape[0], num, channels, *y.shape[2:]), keep).view(y.shape)


def exchange_split(split: Tensor, keep: Tensor) -> Tensor:
    """Apply Eq. 6 on ``split``, ``Tensor(B, K, C, *S)`` (modality ``m`` at ``split[:, m]``); ``keep`` as :func:`exchange`."""
    num = keep.shape[0]
    if num == 1:
        return split
    others = split.flip(1) if num == 2 else (split.sum(dim=1, keepdim=True) - split) / (num - 1)
    mask = keep.view(1, *keep.shape, *([1] * (split.dim() - 3)))
    return torch.where(mask, split, others)
