"""Learning-rate stages, shared by every task.

The reference trains in stages of fixed learning rates (NYUDv2: encoder
5e-4 / 2.5e-4 / 1e-4, decoder 3e-3 / 1.5e-3 / 7e-4, 100 epochs each) and makes
new optimisers at each stage, so momentum starts afresh: ``reset_each_stage``
does the same by clearing the optimiser state at a stage's first epoch. A task's
parameter groups named ``encoder`` take a stage's ``encoder_lr``, all others its
``decoder_lr``.

``optim.gamma_lr_scale`` moves the scales γ of the exchanging norms (those the
ℓ1 penalty acts on) into a group of their own, ``gamma``, whose learning rate is
the rate of the group they came from times the scale. With Adam every parameter
moves by about ``lr`` per step, so the proximal ℓ1 step ``lr·λ`` can only *select*
channels (keep those whose normalised loss gradient outweighs λ < 1, zero the
others) when γ's own ``lr`` is large enough for ``Σ lr·λ`` to reach 1 within the
run (docs/ablations.md, "A selective λ on the scenes").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from cen.core.sparsity import exchanging_norms
from cen.tasks.base import DECODER, ENCODER

GAMMA = "gamma"


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


def gamma_lr_scale(cfg) -> float:
    """``cfg.optim.gamma_lr_scale`` while the ℓ1 penalty is on (``loss.sparsity_weight > 0``, mode not ``none``), else 1.

    The factor exists for the ℓ1 solver; a run without the penalty trains its γ as every other weight.
    """
    on = cfg.loss.sparsity_mode != "none" and cfg.loss.sparsity_weight > 0
    return float(cfg.optim.gamma_lr_scale) if on else 1.0


def with_gamma_group(groups: list[dict], model: nn.Module, lr_scale: float) -> list[dict]:
    """``groups`` with the exchanging norms' γ of ``model`` moved into a group ``gamma`` at ``lr_scale`` × their rate.

    ``groups`` are optimiser parameter groups (``params``, ``lr``, ``name``). The
    new group keeps the name of the group its parameters left as ``base`` (so
    :func:`set_stage` gives it that group's stage rate, times ``lr_scale``).
    ``lr_scale == 1`` or a model with no exchanging norm returns ``groups``
    unchanged (and an optimiser state that older checkpoints match).
    """
    if lr_scale <= 0:
        raise ValueError(f"optim.gamma_lr_scale={lr_scale!r}; expected a learning-rate factor > 0")
    gammas = {id(norm.weight): norm.weight for _, norm in exchanging_norms(model)}
    if lr_scale == 1.0 or not gammas:
        return groups
    out, moved, base = [], [], None
    for group in groups:
        kept = [p for p in group["params"] if id(p) not in gammas]
        if len(kept) != len(group["params"]):
            moved += [p for p in group["params"] if id(p) in gammas]
            base = group if base is None else base
        if kept:
            out.append({**group, "params": kept})
    if moved:
        name = base.get("name", DECODER)
        out.append({"params": moved, "lr": base["lr"] * lr_scale, "name": GAMMA, "base": name, "lr_scale": lr_scale})
    return out


def group_lr(optimizer: torch.optim.Optimizer, name: str) -> float:
    """The learning rate of the group holding the exchanging norms' γ: ``gamma`` if there is one, else ``name``."""
    by_name = {g.get("name"): g for g in optimizer.param_groups}
    group = by_name.get(GAMMA, by_name.get(name))
    if group is None:
        raise KeyError(f"the optimiser has no parameter group {name!r} (groups: {sorted(map(str, by_name))})")
    return group["lr"]


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
