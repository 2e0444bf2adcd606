"""Small models with non-trivial eval-mode norms for the export tests."""

from __future__ import annotations

import torch
from torch import nn

import cen
from cen.core.norms import _ModalityNorm


def randomise_norms(model: nn.Module, *, under: float = 0.3, seed: int = 0) -> nn.Module:
    """Random running statistics, scales and shifts; a share ``under`` of each norm's ``gamma`` set under theta.

    Makes the eval-mode norms and the exchange matter (identity statistics would hide a folding bug).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _ModalityNorm):
                if m.running_mean is not None:
                    m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                    m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                pick = torch.rand(m.gamma.shape, generator=g) < under
                m.gamma[pick] = m.threshold / 10 * torch.sign(torch.randn(int(pick.sum()), generator=g))
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.copy_(torch.randn(p.shape, generator=g))
    return model


def small_cnn(names, fusion: str = "exchange", fusion_options=None) -> cen.MultiModal:
    """A converted 3-conv CNN (fusion after both norms) with an ensemble, ``(B, 3, H, W)`` -> ``(B, 4, H, W)``."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 4, 1),
    )  # fmt: skip
    cen.convert(net, len(names), exchange=True, fusion=fusion, fusion_options=fusion_options)
    model = cen.MultiModal(net, names, ensemble=True)
    randomise_norms(model)
    with torch.no_grad():  # non-zero fusion parameters, so conditional_norm's MLP matters
        for name, p in model.named_parameters():
            if ".fusion." in name:
                p.copy_(0.3 * torch.randn(p.shape))
    return model.eval()


def inputs(names, batch: int, size: tuple[int, int], channels: int = 3, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(batch, channels, *size, generator=g) for n in names}
