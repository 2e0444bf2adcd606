"""The one optimiser builder of the tasks: parameter groups by name, the fusion points' γ in a group of their own.

Groups are named so that the engine's learning-rate stages (:mod:`cen.train.stages`) can
address them: a group named ``encoder`` takes a stage's ``encoder_lr``, every other group
its ``decoder_lr``, times the group's ``lr_scale`` (default 1).

``optim.gamma_lr_scale`` moves the scales γ (the ``weight``, not the shift β) of every
fusion-point norm of a multimodal network (:func:`cen.core.sparsity.fusion_points`; all
modalities' channels, penalised or not) into a group ``gamma`` whose rate is the rate of the
group they came from times the scale, whatever the fusion strategy and whether the ℓ1
penalty is on, so that the rows of a comparison train their γ alike. With Adam every
parameter moves by about its ``lr`` per step, so the proximal ℓ1 step ``lr·λ`` can only
*select* channels (keep those whose loss gradient outweighs λ, zero the others) when γ's
own ``lr`` is large enough for ``Σ lr·λ`` to reach 1 within the run (docs/ablations.md).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from cen.core.sparsity import fusion_points
from cen.errors import ConfigError

#: Names of the parameter groups the learning-rate stages address.
ENCODER, DECODER, GAMMA = "encoder", "decoder", "gamma"


def fusion_gammas(model: nn.Module) -> list[nn.Parameter]:
    """The γ of every fusion-point norm of ``model`` that fuses two or more modalities (what the γ group holds)."""
    return [norm.weight for _, norm in fusion_points(model) if norm.num_modalities > 1 and norm.weight is not None]


def encoder_decoder_groups(model: nn.Module, stage) -> list[dict]:
    """``encoder`` and ``decoder`` groups of ``model``'s trainable parameters at ``stage``'s rates.

    A model that splits itself (``encoder_parameters()`` / ``decoder_parameters()``) gives
    both; any other model puts everything in ``decoder``. Empty groups are left out.
    """
    if hasattr(model, "encoder_parameters") and hasattr(model, "decoder_parameters"):
        enc = [p for p in model.encoder_parameters() if p.requires_grad]
        dec = [p for p in model.decoder_parameters() if p.requires_grad]
    else:
        enc, dec = [], [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": enc, "lr": stage.encoder_lr, "name": ENCODER},
        {"params": dec, "lr": stage.decoder_lr, "name": DECODER},
    ]
    return [g for g in groups if g["params"]]


def with_gamma_group(groups: list[dict], model: nn.Module, lr_scale: float) -> list[dict]:
    """``groups`` with :func:`fusion_gammas` of ``model`` moved into a group ``gamma`` at ``lr_scale`` × their rate.

    ``groups`` are optimiser parameter groups (``params``, ``lr``, ``name``). The new group
    records the group its parameters left as ``base`` (so a stage gives it that group's
    rate, times ``lr_scale``). ``lr_scale == 1`` or a model without fusion points returns
    ``groups`` unchanged (the optimiser state older checkpoints hold).
    """
    if not lr_scale > 0:
        raise ValueError(f"optim.gamma_lr_scale={lr_scale!r}; expected a learning-rate factor > 0")
    gammas = {id(p) for p in fusion_gammas(model)}
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


def make_optimizer(groups: list[dict], optim, *, betas: tuple[float, float] | None = None) -> torch.optim.Optimizer:
    """``optim.name`` (sgd | adam) over ``groups`` with ``optim``'s momentum, weight decay and betas.

    Args:
        groups: parameter groups (each with its ``lr``).
        optim: the ``optim`` part of a config.
        betas: Adam's betas when ``optim.betas`` is null (default torch's).
    """
    lr = groups[0]["lr"] if groups else 0.0
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    if optim.name == "adam":
        chosen = tuple(optim.betas) if optim.betas is not None else (betas or (0.9, 0.999))
        return torch.optim.Adam(groups, lr=lr, betas=chosen, weight_decay=optim.weight_decay)
    raise ConfigError(f"optim.name={optim.name!r} is not valid; expected sgd or adam")


def build_optimizer(
    model: nn.Module,
    optim,
    *,
    groups: Iterable[dict] | None = None,
    betas: tuple[float, float] | None = None,
) -> torch.optim.Optimizer:
    """The optimiser of ``model`` from the config's ``optim`` part, at its first stage's rates.

    ``groups`` default to :func:`encoder_decoder_groups`; the fusion points' γ then move to
    their own group (:func:`with_gamma_group`, ``optim.gamma_lr_scale``).
    """
    stage = optim.stages[0]
    groups = list(groups) if groups is not None else encoder_decoder_groups(model, stage)
    return make_optimizer(with_gamma_group(groups, model, float(optim.gamma_lr_scale)), optim, betas=betas)


def group_lr(optimizer: torch.optim.Optimizer, name: str) -> float:
    """The learning rate of the parameter group named ``name``."""
    for group in optimizer.param_groups:
        if group.get("name") == name:
            return group["lr"]
    names = sorted(str(g.get("name")) for g in optimizer.param_groups)
    raise KeyError(f"the optimiser has no parameter group {name!r} (groups: {names})")


def lr_of(optimizer: torch.optim.Optimizer, param: nn.Parameter) -> float:
    """The learning rate of the group that holds ``param`` (a ``KeyError`` if none does)."""
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            return group["lr"]
    raise KeyError("the optimiser does not hold this parameter")
