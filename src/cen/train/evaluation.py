"""The evaluation loop, one for every task: the task says what a step and a score are, the loop does the rest.

:func:`evaluate` runs ``task.eval_step`` over a loader in the task's evaluation modes
(``task.eval_modes``: e.g. eval mode, or a GAN generator in train mode with a forked RNG),
without gradients, feeds ``{branch: prediction}`` and the batch's target to the task's
metric accumulator (``task.make_metrics``; it sums over processes when
:mod:`torch.distributed` is initialised, so every process must call this), saves the task's
pictures of the first batches (main process only) and returns ``{branch: {score: value}}``.

``modalities`` feeds a subset of the model's modalities (the others dropped at inference:
``cen eval --subsets``); ``batch_transform`` changes each CPU batch first (a sensor
corruption: ``cen eval --corruptions``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from cen.tasks.base import Models, Task, is_main_process


@torch.no_grad()
def evaluate(
    task: Task,
    models: Models,
    loader: Iterable[Mapping[str, Any]],
    *,
    device: torch.device,
    progress: bool = True,
    image_dir: str | Path | None = None,
    num_images: int = 0,
    modalities: Sequence[str] | None = None,
    batch_transform: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
    **options,
) -> dict[str, dict]:
    """Scores of ``task``'s primary model over ``loader`` (see the module docstring).

    Args:
        task: the task (its ``eval_step``, ``make_metrics``, ``save_images``, ``eval_modes``).
        models: the task's models by name (the primary is evaluated).
        loader: yields CPU batches with the modalities and ``task.target_key``.
        device: where the model runs and the metrics live.
        progress: show a tqdm bar (main process only).
        image_dir, num_images: the task's pictures of the first ``num_images`` samples.
        modalities: the inputs to feed (default: every modality of the config).
        batch_transform: applied to each CPU batch before the step.
        options: the task's evaluation options (``task.eval_options``, e.g. ``scales``, ``flip``).
    """
    unknown = sorted(set(options) - set(task.eval_options))
    if unknown:
        raise TypeError(f"unknown {task.name} evaluation options {unknown}; it takes {list(task.eval_options)}")
    names = list(modalities) if modalities is not None else list(task.input_keys)
    metrics, saved = None, 0
    show = progress and is_main_process()
    with task.eval_modes(models):
        bar = tqdm(loader, desc="eval", unit="batch", disable=not show, dynamic_ncols=True, leave=False)
        for i, batch in enumerate(bar):
            if batch_transform is not None:
                batch = batch_transform(batch)
            if not isinstance(batch, Mapping) or task.target_key not in batch:
                raise ValueError(
                    f"batch {i} must be a mapping with a {task.target_key!r} entry, got {type(batch).__name__}"
                )
            missing = [n for n in names if n not in batch]
            if missing:
                raise ValueError(f"batch {i} lacks the modalities {missing}; it has {sorted(batch)}")
            outputs = task.eval_step(batch, models, device=device, modalities=names, **options)
            if metrics is None:
                metrics = task.make_metrics(list(outputs), device)
            target = batch[task.target_key].to(device, non_blocking=True)
            for branch, prediction in outputs.items():
                metrics.update(branch, prediction, target)
            if image_dir is not None and saved < num_images and is_main_process():
                shown = {k: v for k, v in batch.items() if k in names or k == task.target_key}
                saved += task.save_images(Path(image_dir), shown, outputs, saved, num_images - saved)
    if metrics is None:
        raise ValueError("the loader yielded no batches; nothing to evaluate")
    return metrics.compute()
