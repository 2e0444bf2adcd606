"""SGD (or Adam) with separate encoder and decoder learning rates, in stages.

The reference trains in stages of fixed learning rates (NYUDv2: encoder
5e-4 / 2.5e-4 / 1e-4, decoder 3e-3 / 1.5e-3 / 7e-4, 100 epochs each) and makes
new optimisers at each stage, so momentum starts afresh: ``reset_each_stage``
does the same by clearing the optimiser state at a stage's first epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ENCODER, DECODER = "encoder", "decoder"


def param_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(encoder, decoder)`` trainable parameters; all go to the decoder group if the model has no split."""
    if hasattr(model, "encoder_parameters") and hasattr(model, "decoder_parameters"):
        enc = [p for p in model.encoder_parameters() if p.requires_grad]
        dec = [p for p in model.decoder_parameters() if p.requires_grad]
    else:
        enc, dec = [], [p for p in model.parameters() if p.requires_grad]
    return enc, dec


def build_optimizer(model: nn.Module, name: str, stage, *, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    enc, dec = param_groups(model)
    groups = [
        {"params": enc, "lr": stage.encoder_lr, "name": ENCODER},
        {"params": dec, "lr": stage.decoder_lr, "name": DECODER},
    ]
    groups = [g for g in groups if g["params"]]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=stage.decoder_lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(groups, lr=stage.decoder_lr, weight_decay=weight_decay)
    raise ValueError(f"optim.name={name!r}; expected sgd or adam")


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
        group["lr"] = stage.encoder_lr if group.get("name") == ENCODER else stage.decoder_lr
    if reset:
        optimizer.state.clear()


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    return {f"lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(optimizer.param_groups)}
