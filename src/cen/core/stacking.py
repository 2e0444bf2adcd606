"""Modality-stacked batches.

``M`` modalities of ``B`` samples travel as one tensor of shape ``(B*M, ...)``,
*sample-major*: row ``b*M + m`` holds modality ``m`` of sample ``b``. Every
shared layer then runs once on the whole batch, and a private per-modality
norm is a single norm over the free view ``(B, M*C, ...)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def check_names(names: Sequence[str], what: str = "names") -> tuple[str, ...]:
    """Validate a sequence of modality names: non-empty, strings, no duplicates."""
    if isinstance(names, str):
        raise TypeError(f"{what} must be a sequence of modality names, got the string {names!r}")
    names = tuple(names)
    if not names:
        raise ValueError(f"{what} must name at least one modality, got an empty sequence")
    for name in names:
        if not isinstance(name, str) or not name:
            raise TypeError(f"{what} must be non-empty strings, got {name!r}")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"{what} {list(names)} name {duplicated} more than once; each modality must appear once")
    return names


def stack(inputs: Mapping[str, Tensor] | Sequence[Tensor], names: Sequence[str] | None = None) -> Tensor:
    """Stack per-modality batches into one sample-major batch.

    Args:
        inputs: ``{name: Tensor(B, *S)}`` or a sequence of ``Tensor(B, *S)``, one per
            modality, all of the same shape, dtype and device.
        names: for a mapping, the modality order to use (default: the mapping's
            order); every name must be in the mapping and vice versa.

    Returns:
        ``Tensor(B*M, *S)`` whose row ``b*M + m`` is modality ``m`` of sample ``b``.
    """
    if isinstance(inputs, Mapping):
        order = check_names(names if names is not None else list(inputs), "names")
        unknown = [k for k in inputs if k not in order]
        missing = [k for k in order if k not in inputs]
        if unknown or missing:
            raise ValueError(
                f"modalities do not match: unknown {unknown}, missing {missing}; expected exactly {list(order)}"
            )
        labels = list(order)
        tensors = [inputs[k] for k in order]
    elif isinstance(inputs, Sequence) and not isinstance(inputs, (str, Tensor)):
        if names is not None:
            raise TypeError("names= is only meaningful when inputs is a mapping")
        labels = [f"#{i}" for i in range(len(inputs))]
        tensors = list(inputs)
    else:
        raise TypeError(
            f"inputs must be a mapping {{name: Tensor}} or a sequence of tensors, got {type(inputs).__name__}"
        )
    if not tensors:
        raise ValueError("inputs must hold at least one modality, got none")
    for label, t in zip(labels, tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"modality {label} must be a Tensor, got {type(t).__name__}")
        if t.dim() < 1:
            raise ValueError(f"modality {label} must have a batch dimension, got a 0-d tensor")
    first_label, first = labels[0], tensors[0]
    for label, t in zip(labels[1:], tensors[1:]):
        if t.shape != first.shape:
            raise ValueError(
                f"modality {label} has shape {tuple(t.shape)} but {first_label} has {tuple(first.shape)}; "
                "all modalities of a batch must have the same shape"
            )
        if t.dtype != first.dtype or t.device != first.device:
            raise ValueError(
                f"modality {label} is {t.dtype} on {t.device} but {first_label} is {first.dtype} on {first.device}"
            )
    stacked = torch.stack(tensors, dim=1)  # (B, M, *S)
    return stacked.reshape(first.shape[0] * len(tensors), *first.shape[1:])


def unstack(x: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
    """Inverse of :func:`stack`: ``Tensor(B*M, *S)`` to ``{name: Tensor(B, *S)}`` (views)."""
    names = check_names(names, "names")
    if not isinstance(x, Tensor) or x.dim() < 1:
        raise TypeError("unstack expects a tensor with a batch dimension")
    num = len(names)
    if x.shape[0] % num:
        raise ValueError(f"batch size {x.shape[0]} is not divisible by the number of modalities {num} ({list(names)})")
    view = x.view(x.shape[0] // num, num, *x.shape[1:])
    return {name: view[:, m] for m, name in enumerate(names)}
