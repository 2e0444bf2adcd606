"""The sparsity penalty on the scales of the norms at fusion points (paper Eq. 4).

Penalised are the norms at fusion points whose strategy is penalised
(:attr:`cen.core.fusions.Fusion.penalised`): every strategy except ``fixed`` and
``random``, whose channel choice ignores ``gamma`` (the paper's "no l1" rows).
So ``exchange`` is the method, ``discard`` uses the same ``gamma``, and ``none``
with a non-zero lambda is "l1 alone"; for the other strategies the penalty
applies only if the caller's lambda is non-zero.

With ``mode="disjoint"`` (the method) the channels of each exchanging norm are
split into ``M`` contiguous groups and modality ``m`` is penalised on group
``m`` only, so at most one modality of a channel is pushed towards ``gamma = 0``
(with ``M = 2``: modality 0 on the first half, modality 1 on the second, as the
reference code). ``mode="all"`` penalises every channel of every modality (an
ablation of the paper).

A strategy may also contribute a term of its own through
:meth:`cen.core.fusions.Fusion.sparsity_term`: the ``token`` strategy adds the l1 of its
token scores from the latest forward pass (TokenFusion's sparsity; its ``gamma`` is not
penalised). That term is not affected by ``mode`` and has no proximal step: with the
``token`` strategy, train with the l1 in the loss (``sparsity_solver: gradient``), since
:func:`sparsity_shrink_` only moves parameters.

The norms may be any modality norm (batch, instance, layer or group norm): the penalty
reads only the per-channel scale ``gamma``, which they all have.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from cen.core.groups import disjoint_groups
from cen.core.norms import _ModalityNorm

SPARSITY_MODES = ("disjoint", "all")


def fusion_points(model: nn.Module) -> Iterator[tuple[str, _ModalityNorm]]:
    """``(qualified name, norm)`` for every modality norm of ``model`` that has a fusion strategy."""
    for name, module in model.named_modules():
        if isinstance(module, _ModalityNorm) and module.fusion is not None:
            yield name, module


def exchanging_norms(model: nn.Module) -> Iterator[tuple[str, _ModalityNorm]]:
    """``(qualified name, norm)`` for every norm the sparsity penalty applies to (see module docstring).

    A norm of a single modality has nothing to fuse with and is not listed, so a
    unimodal network gets no sparsity penalty.
    """
    for name, module in fusion_points(model):
        if module.fusion.penalised and module.num_modalities > 1:
            yield name, module


def _check_mode(mode: str) -> None:
    if mode not in SPARSITY_MODES:
        raise ValueError(f"mode={mode!r} is not a sparsity mode; expected one of {SPARSITY_MODES}")


def _penalised(norm: _ModalityNorm, mode: str) -> Tensor | None:
    """Bool ``(M, C)`` of the penalised scales of ``norm``, or None for all of them."""
    if mode == "disjoint":
        return disjoint_groups(norm.num_modalities, norm.num_features, norm.weight.device)
    return None


def sparsity_loss(model: nn.Module, mode: str = "disjoint") -> Tensor:
    """``sum |gamma|`` over the penalised norms of ``model`` (:func:`exchanging_norms`; multiply by lambda yourself).

    Plus the strategies' own terms (:meth:`cen.core.fusions.Fusion.sparsity_term`, e.g.
    the token scores of ``token`` from the latest forward). Returns a scalar tensor
    (zero, on the model's device, if nothing exchanges).
    """
    _check_mode(mode)
    total = None
    for _, norm in exchanging_norms(model):
        magnitude = norm.gamma.abs()
        penalised = _penalised(norm, mode)
        if penalised is not None:
            magnitude = magnitude * penalised
        term = magnitude.sum()
        total = term if total is None else total + term
    for _, norm in fusion_points(model):
        term = norm.fusion.sparsity_term() if norm.num_modalities > 1 else None
        if term is not None:
            total = term if total is None else total + term
    if total is None:
        ref = next(iter(model.parameters()), None)
        return torch.zeros((), device=ref.device if ref is not None else None)
    return total


@torch.no_grad()
def sparsity_shrink_(model: nn.Module, amount: float, mode: str = "disjoint") -> None:
    """Proximal step of the l1 penalty: soft-threshold the penalised scales by ``amount``, in place.

    ``gamma <- sign(gamma) * max(|gamma| - amount, 0)`` on the same scales that
    :func:`sparsity_loss` penalises. Called after an optimiser step with
    ``amount = lr * lambda`` it solves the l1 term exactly (proximal gradient,
    ISTA) instead of by its subgradient: a scale reaches exactly zero and an
    adaptive optimiser (Adam normalises every gradient) cannot slow it down.
    """
    _check_mode(mode)
    if amount < 0:
        raise ValueError(f"amount must be >= 0, got {amount!r}")
    for _, norm in exchanging_norms(model):
        gamma = norm.gamma
        shrunk = gamma.sign() * (gamma.abs() - amount).clamp_min(0)
        penalised = _penalised(norm, mode)
        gamma.copy_(shrunk if penalised is None else torch.where(penalised, shrunk, gamma))
