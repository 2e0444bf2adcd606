"""Modality-aware LayerNorm and GroupNorm: ``M`` private per-sample norms in one module.

LayerNorm and GroupNorm normalise each sample (each row of the stacked batch) on its
own, so their statistics are private per modality already: on a sample-major stacked
batch ``(B*M, ...)`` the normalisation runs **once, on the whole batch**, exactly as the
plain norm would. What the modalities must not share is the affine part: ``gamma`` and
``beta`` of shape ``(M*C,)`` (index ``m*C + c``; :attr:`gamma` is the ``(M, C)`` view),
applied on the ``(B, M, ..., C)`` view. Everything else is as for the batch norms of
:mod:`cen.core.norms`: ``threshold``, ``fusion`` / ``fusion_options`` (a fusion point),
:meth:`exchange_mask`, the present modalities from :func:`cen.core.context.present_modalities`
(a missing modality is allowed at inference only).

=========================== ====================== =============================================
class                       input                  replaces
=========================== ====================== =============================================
:class:`ModalityLayerNorm`  ``(B*M, ..., C)``      ``nn.LayerNorm(C)`` on channels-last tokens
                                                   (ViT ``(B, N, C)``, Swin / ConvNeXt blocks
                                                   ``(B, H, W, C)``; timm ``LayerNorm``)
:class:`ModalityLayerNorm2d` ``(B*M, C, H, W)``    LayerNorm over ``C`` at each position
                                                   (torchvision / timm ``LayerNorm2d``)
:class:`ModalityGroupNorm`  ``(B*M, C, *S)``       ``nn.GroupNorm(G, C)`` (timm ``GroupNorm``,
                                                   ``GroupNorm1``)
=========================== ====================== =============================================

How each runs, and what it costs against the plain norm on the ``B*M`` batch
(``benchmarks/bench_norms.py`` measures it):

* ``ModalityGroupNorm``: the free view ``(B, M*C, *S)`` turns ``M`` private
  ``GroupNorm(G, C)`` into one ``GroupNorm(M*G, M*C)`` (group ``m*G + g`` is modality
  ``m``'s group ``g``, and the affine is per channel ``m*C + c``): one native call, the
  plain norm's cost.
* ``ModalityLayerNorm`` / ``ModalityLayerNorm2d``: ``layer_norm`` without affine on the
  stacked batch (channels-last; ``LayerNorm2d`` permutes as torchvision's does), then
  ``beta + gamma * x_hat`` with each modality's ``gamma``, ``beta`` (one ``addcmul``):
  one more elementwise pass forward, and a multiply and two reductions backward, which
  the plain norm fuses into its kernel. LayerNorm is memory-bound, so on its own this
  costs a few times the plain norm in eager mode on a CPU (more temporaries); in a
  transformer block, whose matrix products dominate, the difference is small (the
  benchmark measures both); under ``torch.compile`` the compiler fuses the affine.

Fusion strategies (:mod:`cen.core.fusions`) see the usual ``(B, K, C, *S)`` view: for
the channels-last ``ModalityLayerNorm`` it is a non-contiguous ``movedim`` of the
``(B, K, *S, C)`` tensor, ``*S`` being the token (or ``H, W``) dimensions, and for the
channels-first ones the free view. Every registered strategy applies: the exchange
criterion needs only a per-channel ``gamma``, which these norms have; ``gated_sum`` and
``conditional_norm`` pool the norm's input over the token dimensions (for a ViT that
includes the class token); ``conditional_norm`` gets ``x_hat`` and applies the affine
itself, as with batch norms; ``token`` (:mod:`cen.core.token_fusion`) scores each
token. With a 2-d input ``(B*M, C)`` (a pooled feature) there are no token dimensions
and the pooling strategies pool nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cen.core.norms import _ModalityNorm


class _ModalityPerSampleNorm(_ModalityNorm):
    """Shared constructor and ``repr`` of the per-sample norms: no running statistics, no momentum."""

    def __init__(self, num_features: int, num_modalities: int, **kwargs) -> None:
        """``kwargs``: the keywords of the modality norms (``exchange``, ``threshold``, ``eps``, ``affine``,
        ``bias``, ``fusion``, ``fusion_options``) but ``momentum`` and ``track_running_stats``."""
        super().__init__(num_features, num_modalities, momentum=None, track_running_stats=False, **kwargs)

    def extra_repr(self) -> str:
        fusion = self.fusion.name if self.fusion is not None else None
        bias = "" if self.bias is not None or self.weight is None else ", bias=False"
        return (
            f"{self.num_features}, num_modalities={self.num_modalities}, fusion={fusion!r}, "
            f"threshold={self.threshold}, eps={self.eps}, affine={self.affine}{bias}"
        )


class ModalityGroupNorm(_ModalityPerSampleNorm):
    """``M`` private ``GroupNorm(num_groups, C)`` for a stacked ``(B*M, C, *S)`` batch, as one group norm.

    Args:
        num_groups: ``G``, groups per modality (``C`` must be a multiple of it).
        num_features: channels ``C`` per modality.
        num_modalities: ``M``.
        exchange, threshold, fusion, fusion_options: as :class:`cen.nn.ModalityBatchNorm2d`.
        eps, affine: as :class:`torch.nn.GroupNorm`.
    """

    _spatial_dims = (0, 1, 2, 3)

    def __init__(self, num_groups: int, num_features: int, num_modalities: int, **kwargs) -> None:
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
        if isinstance(num_features, int) and num_features % num_groups:
            raise ValueError(f"num_features={num_features} is not divisible by num_groups={num_groups}")
        super().__init__(num_features, num_modalities, **kwargs)
        self.num_groups = num_groups

    def _normalize(self, x, weight, bias, running_mean, running_var, update_stats):
        """On the free view ``(B, K*C, *S)``: one group norm with ``K*G`` groups (``K`` present modalities)."""
        groups = self.num_groups * (x.shape[1] // self.num_features)
        return F.group_norm(x, groups, weight, bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {super().extra_repr()}"


def _row_affine(x_hat: Tensor, weight: Tensor, bias: Tensor | None, batch: int, num: int) -> Tensor:
    """``beta[m] + gamma[m] * x_hat`` on ``Tensor(B*K, *S, C)``, with ``gamma``, ``beta`` ``(K*C,)`` gathered per row.

    Expanding the scale and shift to one row per sample and modality, ``(B*K, 1, ..., C)``
    (a copy of ``B*K*C`` values), makes the backward's reductions for ``gamma`` and ``beta``
    run over the contiguous token dimensions; broadcasting ``(1, K, 1, ..., C)`` against
    the ``(B, K, *S, C)`` view instead was slower on the CPU (``benchmarks/bench_norms.py``).
    """
    channels = x_hat.shape[-1]
    shape = (batch, num) + (1,) * (x_hat.dim() - 2) + (channels,)
    rows = (batch * num,) + shape[2:]
    scale = weight.view(1, num, *shape[2:]).expand(shape).reshape(rows)
    if bias is None:
        return x_hat * scale
    return torch.addcmul(bias.view(1, num, *shape[2:]).expand(shape).reshape(rows), x_hat, scale)


class ModalityLayerNorm(_ModalityPerSampleNorm):
    """``M`` private ``LayerNorm(C)`` for stacked channels-last features ``(B*M, ..., C)``.

    The twin of ``nn.LayerNorm(C)`` with a 1-d ``normalized_shape``: ViT tokens
    ``(B*M, N, C)``, Swin / ConvNeXt blocks ``(B*M, H, W, C)``, pooled ``(B*M, C)``.

    Args:
        num_features: ``C``.
        num_modalities: ``M``.
        exchange, threshold, fusion, fusion_options: as :class:`cen.nn.ModalityBatchNorm2d`.
        eps: as :class:`torch.nn.LayerNorm`.
        affine: ``elementwise_affine`` of :class:`torch.nn.LayerNorm`.
        bias: whether the affine has a shift (``nn.LayerNorm(bias=False)`` has none).
    """

    def _to_channels_last(self, x: Tensor) -> Tensor:
        return x

    def _from_channels_last(self, y: Tensor) -> Tensor:
        return y

    def _check_layout(self, x: Tensor) -> None:
        if x.dim() < 2 or x.shape[-1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__} was built for {self.num_features} channels in the last dimension, "
                f"got input of shape {tuple(x.shape)}"
            )

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor(B*K, ..., C)`` -> same shape, for the ``K`` present modalities."""
        idx = self._present()
        num = self.num_modalities if idx is None else len(idx)
        self._check_layout(x)
        if x.shape[0] % num:
            raise ValueError(
                f"batch size {x.shape[0]} is not divisible by the number of modalities {num}: "
                "stack modalities sample-major with cen.stack"
            )
        batch = x.shape[0] // num
        channels = self.num_features
        weight, bias = self._select(self.weight, idx), self._select(self.bias, idx)
        tokens = self._to_channels_last(x)  # (B*K, *S, C)
        y = F.layer_norm(tokens, (channels,), None, None, self.eps)
        fusion = self.fusion
        if weight is not None and (fusion is None or not fusion.takes_affine):
            y = _row_affine(y, weight, bias, batch, num)
        y = y.unflatten(0, (batch, num))  # (B, K, *S, C)
        if fusion is not None:
            inputs = tokens.unflatten(0, (batch, num)).movedim(-1, 2)
            gamma = weight.view(num, channels)
            y = fusion(y.movedim(-1, 2), inputs, gamma, self._beta(bias, weight, num), self.threshold, idx)
            y = y.movedim(2, -1)
        return self._from_channels_last(y.flatten(0, 1))


class ModalityLayerNorm2d(ModalityLayerNorm):
    """``M`` private channels-first LayerNorms over ``C`` at each position of a stacked ``(B*M, C, *S)`` map.

    The twin of torchvision's ``convnext.LayerNorm2d`` and timm's ``LayerNorm2d``: the
    map is viewed channels-last (a permute, as those do), normalised over ``C``, and
    permuted back. Same arguments as :class:`ModalityLayerNorm`.
    """

    def _to_channels_last(self, x: Tensor) -> Tensor:
        return x.movedim(1, -1)

    def _from_channels_last(self, y: Tensor) -> Tensor:
        return y.movedim(-1, 1)

    def _check_layout(self, x: Tensor) -> None:
        if x.dim() < 3 or x.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__} was built for {self.num_features} channels in dimension 1 of a "
                f"(B*M, C, H, W) map, got input of shape {tuple(x.shape)}"
            )


PER_SAMPLE_NORMS = (ModalityLayerNorm, ModalityLayerNorm2d, ModalityGroupNorm)
