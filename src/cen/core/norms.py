"""Modality-aware normalisation: ``M`` private norms in one module.

On a sample-major stacked batch ``(B*M, C, *S)`` the view ``(B, M*C, *S)`` is
free, and in it channel ``m*C + c`` is modality ``m``'s channel ``c``. One
ordinary batch (or instance) norm over ``M*C`` channels on that view therefore
*is* ``M`` private norms: statistics, scale and shift per modality and channel,
in one kernel. A norm built with a ``fusion`` is a *fusion point*: after
normalising it hands its output to that strategy (:mod:`cen.core.fusions`;
``exchange=True`` is short for ``fusion="exchange"``, paper Eq. 6, with a
keep-mask recomputed from the current ``|gamma|`` at every call).

The modalities present in a batch come from :func:`cen.core.context.present_modalities`
(all of them by default), never from state stored on the module.

Parameters and buffers have shape ``(M*C,)`` with index ``m*C + c``;
:attr:`gamma` is the ``(M, C)`` view of ``weight``.

Under ``torch.compile`` the batch norms take another, equivalent route: the
statistics are reduced on the ``(B, M, C, *S)`` view in primitive ops, which
the compiler fuses, instead of one ``batch_norm`` call on ``(B, M*C, *S)``.
That view only splits the batch dimension, so it exists in every memory
layout, whereas ``(B, M*C, *S)`` does not exist for a channels-last tensor:
Inductor lays convolutions out channels-last and would otherwise copy every
activation into and out of the norm.

In eager mode the one-call route stays, in every layout: on a channels-last input
(``train.channels_last``) the ``(B, M*C, *S)`` reshape copies the activation, but
the fused ``batch_norm`` kernel is still faster than the split route's separate
reductions and elementwise ops (the measurements are in docs/benchmarks.md).
Both routes keep the statistics in fp32 under bf16/fp16 autocast (the native
kernel accumulates in fp32 with fp32 running buffers; :func:`batch_norm_split`
computes in fp32 and returns the input's dtype).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules._functions import SyncBatchNorm as _sync_batch_norm

from cen.core.context import current_present, missing_allowed_in_training
from cen.core.defaults import THRESHOLD
from cen.core.fusions import Fusion, build_fusion


def _split_route() -> bool:
    """Whether batch norms take the per-view route (see the module docstring): while compiling."""
    return torch.compiler.is_compiling()


def batch_norm_split(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    use_batch_stats: bool,
    momentum: float,
    eps: float,
) -> Tensor:
    """:func:`torch.nn.functional.batch_norm` with statistics per ``(m, c)`` of ``x``, ``Tensor(B, M, C, *S)``.

    ``weight``, ``bias`` and the running statistics have shape ``(M*C,)``; the
    running statistics are updated in place (unbiased variance) when batch
    statistics are used and ``momentum`` is non-zero. Returns ``Tensor(B, M, C, *S)``.
    """
    num, channels = x.shape[1], x.shape[2]
    shape = (1, num, channels) + (1,) * (x.dim() - 3)
    # Statistics and arithmetic in fp32 (or x's dtype if wider) for bf16/fp16 x (autocast), as the
    # native batch norm kernels do; the output has x's dtype. A compiler fuses the casts.
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    if use_batch_stats:
        count = x.numel() // (num * channels)
        if count < 2:
            raise ValueError(f"expected more than 1 value per channel in training, got input of shape {tuple(x.shape)}")
        var, mean = torch.var_mean(xf, dim=(0, *range(3, x.dim())), correction=0, keepdim=True)
        if running_mean is not None and momentum:
            with torch.no_grad():
                running_mean.lerp_(mean.reshape(-1), momentum)
                running_var.lerp_(var.reshape(-1) * (count / (count - 1)), momentum)
    else:
        mean, var = running_mean.view(shape), running_var.view(shape)
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight.view(shape)
    y = (xf - mean) * scale
    y = y if bias is None else y + bias.view(shape)
    return y.to(x.dtype)


class _ModalityNorm(nn.Module):
    """Shared machinery of the modality-aware norms (not used directly)."""

    _spatial_dims: tuple[int, ...] = ()  # allowed numbers of dims after (N, C)
    _kind = "norm"

    def __init__(
        self,
        num_features: int,
        num_modalities: int,
        *,
        exchange: bool = False,
        threshold: float = THRESHOLD,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        fusion: str | Fusion | None = None,
        fusion_options: dict | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        if not isinstance(num_modalities, int) or num_modalities < 1:
            raise ValueError(f"num_modalities must be an int >= 1, got {num_modalities!r}")
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0 (it is compared with |gamma|), got {threshold!r}")
        if fusion is None and exchange:
            fusion = "exchange"
        if fusion is not None and not affine:
            raise ValueError(f"a fusion point (fusion={fusion!r}) needs affine=True: the strategies read gamma")
        if fusion_options and not isinstance(fusion, str):
            raise ValueError("fusion_options are only meaningful with a fusion given by name")
        self.num_features = num_features
        self.num_modalities = num_modalities
        self.threshold = float(threshold)
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        total = num_modalities * num_features
        if affine:
            self.weight = nn.Parameter(torch.ones(total))
            if bias:
                self.bias = nn.Parameter(torch.zeros(total))
            else:  # a scale without shift (nn.LayerNorm(bias=False)); beta reads as zeros
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(total))
            self.register_buffer("running_var", torch.ones(total))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        if isinstance(fusion, str):
            fusion = build_fusion(fusion, num_features, num_modalities, fusion_options)
        elif fusion is not None and not isinstance(fusion, Fusion):
            raise TypeError(f"fusion must be a strategy name or a cen.core.fusions.Fusion, got {type(fusion).__name__}")
        self.register_module("fusion", fusion)

    # -- the fusion point -------------------------------------------------
    @property
    def exchange(self) -> bool:
        """Whether this norm is a fusion point (has a :attr:`fusion`).

        Setting False removes the fusion; setting True on a norm without one adds
        the ``exchange`` strategy (the meaning this flag had before strategies).
        """
        return self.fusion is not None

    @exchange.setter
    def exchange(self, value: bool) -> None:
        if not value:
            self.fusion = None
        elif self.fusion is None:
            if self.weight is None:
                raise ValueError("exchange=True needs affine=True: the exchange test reads |gamma|")
            self.fusion = build_fusion("exchange", self.num_features, self.num_modalities)

    # -- the parameters seen per modality ---------------------------------
    @property
    def gamma(self) -> Tensor:
        """``(M, C)`` view of :attr:`weight`: the scale of modality ``m``, channel ``c``."""
        if self.weight is None:
            raise AttributeError(f"{type(self).__name__} has affine=False and no gamma")
        return self.weight.view(self.num_modalities, self.num_features)

    def _beta(self, bias: Tensor | None, weight: Tensor, num: int) -> Tensor:
        """``(K, C)`` shift of the present modalities for a strategy (zeros for a norm without shift)."""
        return torch.zeros_like(weight).view(num, -1) if bias is None else bias.view(num, -1)

    def exchange_mask(self) -> Tensor:
        """Bool ``(M, C)``: where ``|gamma| < threshold`` now (the channels Eq. 6 replaces)."""
        return self.gamma.detach().abs() < self.threshold

    def extra_repr(self) -> str:
        fusion = self.fusion.name if self.fusion is not None else None
        return (
            f"{self.num_features}, num_modalities={self.num_modalities}, fusion={fusion!r}, "
            f"threshold={self.threshold}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}"
        )

    # -- forward ----------------------------------------------------------
    def _select(self, t: Tensor | None, idx: Sequence[int] | None) -> Tensor | None:
        if t is None or idx is None:
            return t
        return t.view(self.num_modalities, self.num_features)[list(idx)].reshape(-1)

    def _normalize(self, x: Tensor, weight, bias, running_mean, running_var, update_stats: bool) -> Tensor:
        raise NotImplementedError

    def _present(self) -> tuple[int, ...] | None:
        """The present modalities from :func:`cen.core.context.present_modalities`, checked; None for all."""
        idx = current_present()
        if idx is None:
            return None
        if idx[-1] >= self.num_modalities:
            raise ValueError(f"present modalities {idx} given, but this norm has only {self.num_modalities} modalities")
        if len(idx) == self.num_modalities:
            return None
        if self.training and not missing_allowed_in_training():
            raise RuntimeError(
                "a modality may be missing only at inference (or with modality dropout: "
                "present_modalities(..., training=True)); call .eval() first"
            )
        if self.fusion is not None and self.fusion.needs_all:
            raise ValueError(
                f"fusion {self.fusion.name!r} reads every modality and is not defined with modalities missing "
                f"(present: {idx} of {self.num_modalities})"
            )
        return idx

    def _check_input(self, x: Tensor, present: int) -> None:
        if x.dim() - 2 not in self._spatial_dims:
            expected = " or ".join(f"{d + 2}-d" for d in self._spatial_dims)
            raise ValueError(
                f"{type(self).__name__} expects a {expected} input (B*M, C, ...), got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__} was built for {self.num_features} channels, got input of shape {tuple(x.shape)}"
            )
        if x.shape[0] % present:
            raise ValueError(
                f"batch size {x.shape[0]} is not divisible by the number of modalities {present}: "
                "stack modalities sample-major with cen.stack"
            )

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor(B*K, C, *S)`` -> same shape, for the ``K`` present modalities."""
        idx = self._present()
        num = self.num_modalities if idx is None else len(idx)
        self._check_input(x, num)
        batch = x.shape[0] // num
        update_stats = self.training and self.track_running_stats
        if update_stats:
            self.num_batches_tracked.add_(1)
        weight, bias, running_mean, running_var = (
            self._select(t, idx) for t in (self.weight, self.bias, self.running_mean, self.running_var)
        )
        if update_stats and idx is not None and running_mean is not None:
            # the selected statistics are copies: the normalisation updates them, then they go back to their slots
            y = self._forward_present(x, idx, num, batch, weight, bias, running_mean, running_var)
            with torch.no_grad():
                self.running_mean.view(self.num_modalities, -1)[list(idx)] = running_mean.view(num, -1)
                self.running_var.view(self.num_modalities, -1)[list(idx)] = running_var.view(num, -1)
            return y
        return self._forward_present(x, idx, num, batch, weight, bias, running_mean, running_var)

    def _forward_present(self, x, idx, num, batch, weight, bias, running_mean, running_var) -> Tensor:
        """Normalise and fuse ``x`` of the ``num`` present modalities ``idx`` (None: all) with their slots."""
        update_stats = self.training and self.track_running_stats
        fusion = self.fusion
        if fusion is not None and fusion.takes_affine:  # the strategy applies the scale and shift itself
            norm_weight, norm_bias = None, None
        else:
            norm_weight, norm_bias = weight, bias
        split_shape = (batch, num, self.num_features, *x.shape[2:])
        if self._split_ok(x):
            y = self._normalize_split(
                x.view(split_shape), norm_weight, norm_bias, running_mean, running_var, update_stats
            )
            if fusion is not None:
                y = fusion(
                    y, x.view(split_shape), weight.view(num, -1), self._beta(bias, weight, num), self.threshold, idx
                )
            return y.view(x.shape)
        y = self._normalize(x.reshape(batch, num * self.num_features, *x.shape[2:]), norm_weight, norm_bias,
                            running_mean, running_var, update_stats)  # fmt: skip
        if fusion is not None:
            y = fusion(
                y.view(split_shape), x.view(split_shape), weight.view(num, -1), self._beta(bias, weight, num),
                self.threshold, idx, flat=True,
            )  # fmt: skip
        # A plain reshape would return a view of y; the in-place ReLU or residual
        # add that usually follows a norm would then make autograd copy the whole
        # activation in backward (CopySlices). _unsafe_view is the same zero-copy
        # reshape without view semantics, as torch itself uses for fresh outputs.
        return torch.ops.aten._unsafe_view(y, x.shape)

    def _split_ok(self, x: Tensor) -> bool:
        """Whether this call takes the per-view route (batch norms, unsynchronised, while compiling)."""
        return False

    def _momentum(self) -> float:
        if self.momentum is None:  # cumulative moving average, as nn.BatchNorm
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum


class _ModalityBatchNorm(_ModalityNorm):
    # Set by cen.convert_sync_batchnorm: synchronise batch statistics across
    # processes in training (on accelerators, as torch.nn.SyncBatchNorm does).
    sync: bool = False
    process_group = None

    def _split_ok(self, x: Tensor) -> bool:
        return _split_route() and self._sync_world_size(x) == 1

    def _normalize_split(self, x, weight, bias, running_mean, running_var, update_stats):
        """:meth:`_normalize` on the ``(B, M, C, *S)`` view (the compile route)."""
        return batch_norm_split(
            x, running_mean, running_var, weight, bias,
            self.training or running_mean is None, self._momentum() if update_stats else 0.0, self.eps,
        )  # fmt: skip

    def _sync_world_size(self, x: Tensor) -> int:
        if not (self.sync and self.training and dist.is_available() and dist.is_initialized()):
            return 1
        if x.device.type == "cpu":
            return 1  # torch's synchronised batch norm has no CPU kernel; statistics stay per process
        return dist.get_world_size(self.process_group or dist.group.WORLD)

    def _normalize(self, x, weight, bias, running_mean, running_var, update_stats):
        use_batch_stats = self.training or running_mean is None
        world_size = self._sync_world_size(x)
        if world_size > 1:
            return _sync_batch_norm.apply(
                x,
                weight,
                bias,
                running_mean,
                running_var,
                self.eps,
                self._momentum() if update_stats else 0.0,
                self.process_group or dist.group.WORLD,
                world_size,
            )
        return F.batch_norm(
            x,
            running_mean,
            running_var,
            weight,
            bias,
            use_batch_stats,
            self._momentum() if update_stats else 0.0,
            self.eps,
        )


class ModalityBatchNorm2d(_ModalityBatchNorm):
    """``M`` private ``BatchNorm2d(C)`` for a stacked ``(B*M, C, H, W)`` batch, with optional exchange.

    Args:
        num_features: channels ``C`` per modality.
        num_modalities: ``M``.
        exchange: short for ``fusion="exchange"`` (paper Eq. 6 after normalising).
        threshold: ``theta``; a channel of modality ``m`` is replaced where ``|gamma[m, c]| < theta``.
        eps, momentum, affine, track_running_stats: as :class:`torch.nn.BatchNorm2d`.
        fusion: a strategy name from :mod:`cen.core.fusions` (or a built
            :class:`~cen.core.fusions.Fusion`), applied after normalising; None for none.
        fusion_options: keyword options of the named strategy.
    """

    _spatial_dims = (2,)


class ModalityBatchNorm1d(_ModalityBatchNorm):
    """``M`` private ``BatchNorm1d(C)`` for stacked ``(B*M, C)`` or ``(B*M, C, L)`` features."""

    _spatial_dims = (0, 1)


class ModalityInstanceNorm2d(_ModalityNorm):
    """``M`` private affine ``InstanceNorm2d(C)`` for a stacked ``(B*M, C, H, W)`` batch.

    Same arguments as :class:`ModalityBatchNorm2d`; ``track_running_stats``
    defaults to False as in :class:`torch.nn.InstanceNorm2d`.
    """

    _spatial_dims = (2,)

    def __init__(self, num_features: int, num_modalities: int, *, track_running_stats: bool = False, **kwargs) -> None:
        super().__init__(num_features, num_modalities, track_running_stats=track_running_stats, **kwargs)

    def _normalize(self, x, weight, bias, running_mean, running_var, update_stats):
        use_input_stats = self.training or running_mean is None
        return F.instance_norm(
            x,
            running_mean,
            running_var,
            weight,
            bias,
            use_input_stats,
            self._momentum() if update_stats else 0.0,
            self.eps,
        )


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Make every batch norm of ``module`` synchronise its statistics across processes: cen's modality
    batch norms (their statistics per modality and channel over the global batch; parameters, buffers
    and state-dict keys unchanged) and plain ``nn.BatchNorm*`` (through
    :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`, which does not know the modality norms).

    Like torch's, it needs an accelerator: on the CPU the statistics stay per process. Returns the
    converted module (a new one when ``module`` is itself a plain batch norm).
    """
    for sub in module.modules():
        if isinstance(sub, _ModalityBatchNorm):
            sub.sync = True
            sub.process_group = process_group
    return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
