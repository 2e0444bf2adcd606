"""Evaluation of a multimodal segmenter: every branch and the ensemble, single or multi-scale.

:func:`evaluate` runs a model over a loader of ``{modality: Tensor(B, 3, H, W),
"mask": Tensor(B, H, W)}`` batches and scores every output the model returns
(each modality's branch and ``"ensemble"``) with :class:`SegmentationMetrics`.
:func:`predict_scores` is the inference step it uses (also used by ``cen predict``),
and :func:`format_table` prints the result.

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
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from cen.core.defaults import ENSEMBLE_KEY
from cen.data.constants import IGNORE_INDEX
from cen.tasks.base import is_main_process
from cen.tasks.segmentation.metrics import SegmentationMetrics

__all__ = ["evaluate", "format_per_class", "format_table", "model_modalities", "predict_scores"]

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


def _module_modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    return [(m, m.training) for m in model.modules()]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Mapping[str, Tensor]],
    num_classes: int,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    upsample: str = "bilinear",
    device: str | torch.device = "cpu",
    ignore_index: int = IGNORE_INDEX,
    progress: bool = True,
    modalities: Sequence[str] | None = None,
    image_dir: str | Path | None = None,
    num_images: int = 0,
    image_branch: str = ENSEMBLE_KEY,
    kinds: Mapping[str, str] | None = None,
) -> dict[str, dict[str, float | list[float | None]]]:
    """Score every branch of ``model`` over ``loader``.

    Args:
        model: takes ``{modality: Tensor(B, 3, H, W)}`` and returns
            ``{branch: logits (B, K, h, w)}`` (e.g. :class:`cen.models.RefineNetCEN`);
            moved to ``device``, run in eval mode without gradients, and each
            of its modules put back in its former train/eval mode afterwards.
        loader: yields ``{modality: Tensor(B, 3, H, W), "mask": Tensor(B, H, W)}``.
        num_classes: ``K``.
        scales, flip: test-time augmentation (see the module docstring).
        upsample: how outputs are resized to the mask, ``"bilinear"`` or ``"bicubic"``.
        device: where the model runs and the confusion matrices live.
        ignore_index: mask value that is not scored.
        progress: show a tqdm bar (on the main process only).
        modalities: which inputs to feed (default: the model's ``names``, or
            every 4-d tensor of the batch but the mask). A subset evaluates
            the model with missing modalities.
        image_dir, num_images: write the first ``num_images`` samples as PNGs of
            one panel per fed modality (drawn by its kind), the ground truth and the
            prediction into ``image_dir`` (main process only), showing ``image_branch``
            (falling back to the first branch if the model has no such output).
        kinds: ``{modality: kind}`` for those panels; default the data set's ``kinds``
            (``loader.dataset.kinds``) or the kinds inferred from the names.

    Returns:
        ``{branch: scores}`` in the model's output order, each as
        :func:`cen.tasks.segmentation.metrics.scores_from_confusion` (fractions in [0, 1]),
        computed from confusion matrices summed over all processes when
        :mod:`torch.distributed` is initialised (every process must call this).
    """
    device = torch.device(device)
    model = model.to(device)
    wanted = tuple(modalities) if modalities is not None else model_modalities(model)
    modes = _module_modes(model)
    model.eval()
    metrics: dict[str, SegmentationMetrics] = {}
    saved = 0
    show = progress and is_main_process()
    try:
        bar = tqdm(loader, desc="eval", unit="batch", disable=not show, dynamic_ncols=True, leave=False)
        for i, batch in enumerate(bar):
            if not isinstance(batch, Mapping) or MASK_KEY not in batch:
                raise ValueError(f"batch {i} must be a mapping with a {MASK_KEY!r} entry, got {type(batch).__name__}")
            names = wanted or tuple(
                k for k, v in batch.items() if k != MASK_KEY and isinstance(v, Tensor) and v.ndim == 4
            )
            missing = [n for n in names if n not in batch]
            if missing:
                raise ValueError(f"batch {i} lacks the modalities {missing}; it has {sorted(batch)}")
            inputs = {n: batch[n].to(device, non_blocking=True).float() for n in names}
            mask = batch[MASK_KEY].to(device, non_blocking=True)
            scores = predict_scores(model, inputs, tuple(mask.shape[-2:]), scales=scales, flip=flip, upsample=upsample)
            for name, score in scores.items():
                if name not in metrics:
                    metrics[name] = SegmentationMetrics(num_classes, ignore_index=ignore_index, device=device)
                metrics[name].update(score, mask)
            if image_dir is not None and saved < num_images and is_main_process():
                shown = {n: batch[n] for n in names}
                saved += _save_images(
                    image_dir,
                    shown,
                    batch[MASK_KEY],
                    scores,
                    image_branch,
                    num_images - saved,
                    saved,
                    ignore_index,
                    kinds if kinds is not None else dataset_kinds(loader),
                )
    finally:
        for module, mode in modes:
            module.training = mode
    if not metrics:
        raise ValueError("the loader yielded no batches; nothing to evaluate")
    return {name: metric.compute() for name, metric in metrics.items()}


def dataset_kinds(loader) -> dict[str, str] | None:
    """``kinds`` of the data set behind ``loader`` (through ``Subset``), if it has them."""
    ds = getattr(loader, "dataset", None)
    while ds is not None and not hasattr(ds, "kinds") and hasattr(ds, "dataset"):
        ds = ds.dataset
    kinds = getattr(ds, "kinds", None)
    return dict(kinds) if isinstance(kinds, Mapping) else None


def _save_images(image_dir, inputs, masks, scores, branch, limit, start, ignore_index, kinds) -> int:
    from cen.tasks.segmentation.visualize import save_prediction_grid

    name = branch if branch in scores else next(iter(scores))
    pred = scores[name].argmax(1).cpu()
    n = min(limit, pred.shape[0])
    for j in range(n):
        save_prediction_grid(
            Path(image_dir) / f"pred_{start + j:04d}_{name}.png",
            inputs={m: x[j] for m, x in inputs.items()},
            kinds=kinds,
            mask=masks[j],
            pred=pred[j],
            ignore_index=ignore_index,
        )
    return n


_COLUMNS = (("pixel_acc", "pixel acc"), ("mean_acc", "mean acc"), ("miou", "mIoU"))


def format_table(results: Mapping[str, Mapping[str, float]], *, title: str | None = None) -> str:
    """A text table of :func:`evaluate`'s results: one row per branch, scores in %."""
    width = max([len("branch")] + [len(b) for b in results])
    head = f"{'branch':<{width}}" + "".join(f"  {label:>9}" for _, label in _COLUMNS)
    lines = [title] if title else []
    lines += [head, "-" * len(head)]
    for branch, scores in results.items():
        cells = []
        for key, _ in _COLUMNS:
            value = scores.get(key, math.nan)
            cells.append(f"  {'-':>9}" if value is None or math.isnan(value) else f"  {100 * value:>9.2f}")
        lines.append(f"{branch:<{width}}" + "".join(cells))
    return "\n".join(lines)


def format_per_class(results: Mapping[str, Mapping], class_names: Sequence[str] | None = None) -> str:
    """Per-class IoU in % (rows: classes; columns: branches); ``-`` for a class left out."""
    branches = list(results)
    k = max(len(r["per_class_iou"]) for r in results.values())
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} classes")
    width = max(len("class"), *(len(n) for n in names))
    cols = [max(9, len(b)) for b in branches]
    lines = [f"{'class':<{width}}" + "".join(f"  {b:>{c}}" for b, c in zip(branches, cols))]
    lines.append("-" * len(lines[0]))
    for i, name in enumerate(names):
        row = f"{name:<{width}}"
        for b, c in zip(branches, cols):
            v = results[b]["per_class_iou"][i]
            row += f"  {'-':>{c}}" if v is None else f"  {100 * v:>{c}.2f}"
        lines.append(row)
    return "\n".join(lines)
