"""Plain per-modality reference of the method, written as loops, for the tests.

Deliberately naive: ``M`` separate ``F.batch_norm``/``F.instance_norm`` calls on
per-modality slices, then paper Eq. 6 channel by channel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def split(x, num):
    """``(B*M, C, ...)`` -> list of ``M`` tensors ``(B, C, ...)``."""
    view = x.reshape(x.shape[0] // num, num, *x.shape[1:])
    return [view[:, m] for m in range(num)]


def join(parts):
    return torch.stack(parts, dim=1).reshape(-1, *parts[0].shape[1:])


def reference_norm(x, num, weight, bias, running_mean, running_var, *, training, momentum, eps, kind="batch"):
    """Per-modality norms as separate calls; running stats are updated in place per slice."""
    channels = x.shape[1]
    outs = []
    for m, xm in enumerate(split(x, num)):
        sl = slice(m * channels, (m + 1) * channels)
        rm = None if running_mean is None else running_mean[sl]
        rv = None if running_var is None else running_var[sl]
        if kind == "batch":
            outs.append(F.batch_norm(xm, rm, rv, weight[sl], bias[sl], training, momentum, eps))
        else:
            outs.append(F.instance_norm(xm, rm, rv, weight[sl], bias[sl], training or rm is None, momentum, eps))
    return outs


def reference_exchange(outs, gamma, threshold):
    """Eq. 6 as a loop: channel c of modality m replaced by the mean of the others where |gamma| < threshold."""
    num = len(outs)
    if num == 1:
        return outs
    result = []
    for m in range(num):
        channels = []
        for c in range(outs[m].shape[1]):
            if gamma[m, c].abs() < threshold:
                others = [outs[k][:, c] for k in range(num) if k != m]
                channels.append(sum(others) / len(others))
            else:
                channels.append(outs[m][:, c])
        result.append(torch.stack(channels, dim=1))
    return result
