"""SGD (or Adam) with separate encoder and decoder learning rates (the reference's two groups)."""

from __future__ import annotations

import torch
from torch import nn

from cen.tasks.base import DECODER, ENCODER
from cen.train.optim import with_gamma_group


def param_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(encoder, decoder)`` trainable parameters; all go to the decoder group if the model has no split."""
    if hasattr(model, "encoder_parameters") and hasattr(model, "decoder_parameters"):
        enc = [p for p in model.encoder_parameters() if p.requires_grad]
        dec = [p for p in model.decoder_parameters() if p.requires_grad]
    else:
        enc, dec = [], [p for p in model.parameters() if p.requires_grad]
    return enc, dec


def build_optimizer(
    model: nn.Module, name: str, stage, *, momentum: float, weight_decay: float, gamma_lr_scale: float = 1.0
) -> torch.optim.Optimizer:
    """``name`` (sgd | adam) over the ``encoder`` and ``decoder`` groups at ``stage``'s learning rates.

    ``gamma_lr_scale != 1`` adds a ``gamma`` group (:func:`cen.train.optim.with_gamma_group`).
    """
    enc, dec = param_groups(model)
    groups = [
        {"params": enc, "lr": stage.encoder_lr, "name": ENCODER},
        {"params": dec, "lr": stage.decoder_lr, "name": DECODER},
    ]
    groups = with_gamma_group([g for g in groups if g["params"]], model, gamma_lr_scale)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=stage.decoder_lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(groups, lr=stage.decoder_lr, weight_decay=weight_decay)
    raise ValueError(f"optim.name={name!r}; expected sgd or adam")
