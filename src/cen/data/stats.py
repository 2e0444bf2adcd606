"""Per-dataset statistics for the normalisation option of the transforms."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


def mean_std(
    dataset: Dataset, key: str, max_samples: int | None = None, exclude_zeros: bool = True
) -> tuple[list[float], list[float]]:
    """Channel mean and std of ``dataset[i][key]`` over the data set (or its first
    ``max_samples`` samples), as loaded (before normalisation). With ``exclude_zeros``
    pixels equal to 0 (depth holes) are left out. Returns (mean, std), one value per
    channel, usable as ``normalization={key: (mean, std)}``."""
    n = len(dataset) if max_samples is None else min(len(dataset), max_samples)
    if n == 0:
        raise ValueError("cannot compute statistics of an empty data set")
    total = total_sq = count = None
    for i in range(n):
        x = dataset[i][key].double().flatten(1)  # (C, H*W)
        valid = (x != 0) if exclude_zeros else torch.ones_like(x, dtype=torch.bool)
        xs = torch.where(valid, x, torch.zeros(()))
        s, sq, c = xs.sum(1), (xs * xs).sum(1), valid.sum(1).double()
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        count = c if count is None else count + c
    if (count == 0).any():
        raise ValueError(f"no valid pixels of {key!r} in the first {n} samples")
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()
