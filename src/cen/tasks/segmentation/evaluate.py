"""Inference of a multimodal segmenter: every branch and the ensemble, single or multi-scale.

:func:`predict_scores` is the segmentation task's evaluation step (the engine runs the loop
over the data, :mod:`cen.train.evaluation`) and ``cen predict``'s inference;
:func:`format_per_class` prints per-class IoUs.

Test-time augmentation: for each scale ``s`` the inputs are resized bilinearly
to ``round(s*H) x round(s*W)``; with ``flip`` the horizontally mirrored inputs
are run too and their outputs mirrored back. Every output is resized to
``H x W`` (``upsample``: bilinear by default; ``"bicubic"`` is the reference
code's OpenCV ``INTER_CUBIC``, the same cubic kernel, a = -0.75, on pixel
centres) and its **softmax probabilities** are summed over the scales and
flips; the prediction is the arg-max of that sum. With one scale of 1.0 and no
flip this is the plain arg-max of the resized logits (the reference code's
single-scale evaluation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cen.tasks.base import format_per_class

__all__ = ["dataset_kinds", "format_per_class", "model_modalities", "predict_scores"]

MASK_KEY = "mask"


def _unwrap(model: nn.Module) -> nn.Module:
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def model_modalities(model: nn.Module) -> tuple[str, ...] | None:
    """The modality names a model takes (``model.names`` of :class:`cen.MultiModal`), if it says."""
    names = getattr(_unwrap(model), "names", None)
    return tuple(names) if names is not None else None


UPSAMPLE_MODES = ("bilinear", "bicubic")


def _resize(x: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


@torch.no_grad()
def predict_scores(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    size: tuple[int, int] | None = None,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    upsample: str = "bilinear",
) -> dict[str, Tensor]:
    """Run ``model`` on ``inputs`` and return ``{branch: Tensor(B, K, H, W)}`` at ``size``.

    ``size`` defaults to the inputs' size. With a single scale of 1.0 and no
    flip the values are the model's logits resized by ``upsample``
    (``"bilinear"`` or ``"bicubic"``); otherwise they
    are the softmax probabilities summed over scales and flips. Either way the
    arg-max over dim 1 is the prediction. Outputs that are not ``(B, K, h, w)``
    tensors (e.g. a returned ``alpha``) are left out. The caller chooses the
    model's mode (use ``model.eval()``).
    """
    if not inputs:
        raise ValueError("no inputs given")
    if upsample not in UPSAMPLE_MODES:
        raise ValueError(f"upsample={upsample!r} is not valid; expected one of {list(UPSAMPLE_MODES)}")
    scales = tuple(float(s) for s in scales)
    if not scales or any(not (s > 0 and math.isfinite(s)) for s in scales):
        raise ValueError(f"scales must be positive numbers, got {list(scales)}")
    in_size = next(iter(inputs.values())).shape[-2:]
    for name, x in inputs.items():
        if x.ndim != 4:
            raise ValueError(f"input {name!r} must be (B, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[-2:] != in_size:
            raise ValueError(f"inputs differ in size: {name!r} is {tuple(x.shape[-2:])}, expected {tuple(in_size)}")
    size = tuple(in_size) if size is None else tuple(size)
    plain = scales == (1.0,) and not flip

    total: dict[str, Tensor] = {}
    for s in scales:
        scaled_size = (max(1, round(in_size[0] * s)), max(1, round(in_size[1] * s)))
        scaled = {k: _resize(v, scaled_size) if v.is_floating_point() else v for k, v in inputs.items()}
        runs = [(scaled, False)]
        if flip:
            runs.append(({k: v.flip(-1) for k, v in scaled.items()}, True))
        for run_inputs, flipped in runs:
            outputs = model(run_inputs)
            for name, out in outputs.items():
                if not isinstance(out, Tensor) or out.ndim != 4:
                    continue
                out = out.flip(-1) if flipped else out
                out = _resize(out.float(), size, upsample)
                if plain:
                    total[name] = out
                else:
                    prob = out.softmax(1)
                    total[name] = prob if name not in total else total[name] + prob
    if not total:
        raise ValueError("the model returned no (B, K, h, w) outputs")
    return total


def dataset_kinds(data) -> dict[str, str] | None:
    """``kinds`` of a data set (or of the one behind a loader or a ``Subset``), if it has them."""
    ds = data
    while ds is not None and not hasattr(ds, "kinds") and hasattr(ds, "dataset"):
        ds = ds.dataset
    kinds = getattr(ds, "kinds", None)
    return dict(kinds) if isinstance(kinds, Mapping) else None
