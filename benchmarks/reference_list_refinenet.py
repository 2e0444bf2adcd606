"""The baseline of the step benchmark: a CEN RefineNet written "the reference way".

As the reference implementation of the paper (yikaiw/CEN) lays it out, rewritten
here from its semantics on top of :mod:`reference_list_resnet` (the core
benchmark's list-style encoder):

* the forward takes a Python **list** of per-modality tensors and returns a list
  of per-modality logits plus the ensemble;
* the encoder calls every shared layer **once per modality**, keeps private
  ``bn_0 .. bn_{M-1}`` modules and exchanges after each bottleneck's ``bn2`` by
  **boolean-mask indexing** (a data-dependent ``nonzero`` per masked read or
  write: host synchronisations on a GPU), see :mod:`reference_list_resnet`;
* the decoder, which never mixes samples, runs **once per modality** (the
  reference wraps each of its convolutions in a per-modality loop: the same
  kernels, on half batches);
* the ensemble is the ``softmax(alpha)``-weighted sum of the detached branch logits.

:meth:`ListRefineNet.from_cen` builds it from a :class:`cen.models.RefineNetCEN`
with the *same* weights (modality ``m``'s slice of every modality norm goes to
``bn_m``), so that both compute the same function and the timing is fair;
``tests/test_benchmarks.py`` checks that they do.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from reference_list_resnet import copy_trunk
from torch import Tensor, nn


class ListEncoder(nn.Module):
    """The stem and ``layer1 .. layer4`` of a ResNet in the list layout; returns each modality's four features.

    Built from a ResNet encoder converted by :func:`cen.convert` (torchvision module names, without
    ``avgpool``/``fc``), weights copied: modality ``m``'s slice of every modality norm goes to ``bn_m``.
    """

    def __init__(self, model: nn.Module, num_modalities: int, threshold: float) -> None:
        super().__init__()
        self.num_modalities = num_modalities
        copy_trunk(self, model, num_modalities, threshold)
        self.train(model.training)

    def forward(self, xs: list[Tensor]) -> list[list[Tensor]]:
        if len(xs) != self.num_modalities:
            raise ValueError(f"expected a list of {self.num_modalities} per-modality tensors, got {len(xs)}")
        xs = self.maxpool(self.relu(self.bn1(self.conv1(list(xs)))))
        l1 = self.layer1(xs)
        l2 = self.layer2(l1)
        l3 = self.layer3(l2)
        l4 = self.layer4(l3)
        return [[a, b, c, d] for a, b, c, d in zip(l1, l2, l3, l4)]


class ListRefineNet(nn.Module):
    """Reference-style RefineNet-CEN: ``forward([x_0, .., x_{M-1}]) -> [logits_0, .., logits_{M-1}, ensemble]``."""

    def __init__(self, encoder: ListEncoder, decoder: nn.Module, alpha: Tensor | None) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.alpha = None if alpha is None else nn.Parameter(alpha.detach().clone())

    @classmethod
    def from_cen(cls, model: nn.Module) -> ListRefineNet:
        """The list layout of ``model`` (a :class:`cen.models.RefineNetCEN` with shared convolutions), same weights."""
        num = len(model.names)
        encoder = ListEncoder(model.encoder, num, threshold=model.threshold)
        ens = getattr(model, "ensemble", None)
        alpha = getattr(ens, "alpha", None) if ens is not None else None
        return cls(encoder, copy.deepcopy(model.decoder), alpha).train(model.training)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        outs = [self.decoder(feats) for feats in self.encoder(xs)]
        if self.alpha is None:
            return outs
        weights = F.softmax(self.alpha, dim=0)
        ensemble = sum(weights[m] * out.detach() for m, out in enumerate(outs))
        return outs + [ensemble]


def nonzero_per_forward(model: nn.Module, xs: list[Tensor]) -> int:
    """``aten::nonzero`` calls in one forward of ``model`` (a host synchronisation each on a GPU)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(xs)
    return sum(e.count for e in prof.key_averages() if e.key in ("aten::nonzero", "aten::nonzero_static"))
