"""Learning-rate stages, shared by every task.

The reference trains in stages of fixed learning rates (NYUDv2: encoder
5e-4 / 2.5e-4 / 1e-4, decoder 3e-3 / 1.5e-3 / 7e-4, 100 epochs each) and makes
new optimisers at each stage, so momentum starts afresh: ``reset_each_stage``
does the same by clearing the optimiser state at a stage's first epoch. A
parameter group named ``encoder`` (:data:`cen.tasks.optim.ENCODER`) takes a
stage's ``encoder_lr``, all others its ``decoder_lr``; a group that records a
``base`` group (the γ group, :func:`cen.tasks.optim.with_gamma_group`) takes its
base's rate times its ``lr_scale``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from cen.tasks.optim import ENCODER


def stage_of(epoch: int, stages: Sequence) -> tuple[int, bool]:
    """``(stage index, whether epoch is that stage's first)`` for a 0-based ``epoch``."""
    start = 0
    for i, stage in enumerate(stages):
        if epoch < start + stage.epochs:
            return i, epoch == start
        start += stage.epochs
    return len(stages) - 1, False


def total_epochs(stages: Sequence) -> int:
    return sum(s.epochs for s in stages)


def set_stage(optimizer: torch.optim.Optimizer, stage, *, reset: bool) -> None:
    """Set the stage's learning rates; ``reset`` clears the momentum (a fresh optimiser)."""
    for group in optimizer.param_groups:
        base = group.get("base", group.get("name"))
        group["lr"] = (stage.encoder_lr if base == ENCODER else stage.decoder_lr) * group.get("lr_scale", 1.0)
    if reset:
        optimizer.state.clear()


def learning_rates(optimizers: Mapping[str, torch.optim.Optimizer]) -> dict[str, float]:
    """``{"lr/<group>": lr}``; with several optimisers ``"lr/<optimiser>/<group>"``."""
    out = {}
    for name, optimizer in optimizers.items():
        prefix = "lr/" if len(optimizers) == 1 else f"lr/{name}/"
        out.update({f"{prefix}{g.get('name', i)}": g["lr"] for i, g in enumerate(optimizer.param_groups)})
    return out
