"""Which modality norm replaces a plain norm, and how its parameters are copied (for :func:`cen.convert`).

================================================= ==========================================
plain norm                                        modality twin
================================================= ==========================================
``BatchNorm1d``                                   :class:`cen.nn.ModalityBatchNorm1d`
``BatchNorm2d``, ``SyncBatchNorm``                :class:`cen.nn.ModalityBatchNorm2d`
``InstanceNorm2d``                                :class:`cen.nn.ModalityInstanceNorm2d`
``GroupNorm`` and subclasses (timm ``GroupNorm``, :class:`cen.nn.ModalityGroupNorm`
``GroupNorm1``)
``LayerNorm`` with a 1-d ``normalized_shape``     :class:`cen.nn.ModalityLayerNorm`
(channels last; timm ``LayerNorm``,
``LayerNormFp32``)
torchvision ``convnext.LayerNorm2d``, timm        :class:`cen.nn.ModalityLayerNorm2d`
``LayerNorm2d``, ``LayerNorm2dFp32``,
``LayerNormExp2d`` (channels first)
================================================= ==========================================

A ``LayerNorm`` subclass must be known to be channels-last or channels-first: one
that overrides ``forward`` and is not in the table (nor declared with
:func:`register_layer_norm_layout`) is left as it is, shared by the modalities (a
shared LayerNorm is still correct on a stacked batch, its statistics being per
sample; only its affine is not private). A ``LayerNorm`` over more than one
dimension has no per-channel ``gamma``: converting it is an error.

timm's norm + activation layers (``BatchNormAct2d``, ``GroupNormAct``,
``LayerNormAct``, ``LayerNormAct2d``, ...: a norm with child modules ``drop`` and
``act``) become the ``...Act`` twins below, which apply the norm, its fusion, then
``drop`` and ``act``: the fusion point sits after the norm and before the activation,
as in the paper. The timm classes are looked up only once timm is imported (a model
holding them means it is); timm is optional.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from cen.core.defaults import THRESHOLD
from cen.core.layer_norms import ModalityGroupNorm, ModalityLayerNorm, ModalityLayerNorm2d
from cen.core.norms import ModalityBatchNorm1d, ModalityBatchNorm2d, ModalityInstanceNorm2d, _ModalityNorm
from cen.core.timm_classes import TimmClasses

CHANNELS_LAST, CHANNELS_FIRST = "channels_last", "channels_first"


class _NormAct:
    """Mixin: the modality norm and its fusion, then ``drop`` and ``act`` (the twin of timm's norm + act layers)."""

    def __init__(self, *args, drop: nn.Module | None = None, act: nn.Module | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.drop = drop if drop is not None else nn.Identity()
        self.act = act if act is not None else nn.Identity()

    def forward(self, x):
        return self.act(self.drop(super().forward(x)))


class ModalityBatchNormAct2d(_NormAct, ModalityBatchNorm2d):
    """:class:`cen.nn.ModalityBatchNorm2d` followed by ``drop`` and ``act`` (timm ``BatchNormAct2d``)."""


class ModalityGroupNormAct(_NormAct, ModalityGroupNorm):
    """:class:`cen.nn.ModalityGroupNorm` followed by ``drop`` and ``act`` (timm ``GroupNormAct``)."""


class ModalityLayerNormAct(_NormAct, ModalityLayerNorm):
    """:class:`cen.nn.ModalityLayerNorm` followed by ``drop`` and ``act`` (timm ``LayerNormAct``)."""


class ModalityLayerNormAct2d(_NormAct, ModalityLayerNorm2d):
    """:class:`cen.nn.ModalityLayerNorm2d` followed by ``drop`` and ``act`` (timm ``LayerNormAct2d``)."""


_WITH_ACT = {
    ModalityBatchNorm2d: ModalityBatchNormAct2d,
    ModalityGroupNorm: ModalityGroupNormAct,
    ModalityLayerNorm: ModalityLayerNormAct,
    ModalityLayerNorm2d: ModalityLayerNormAct2d,
}

_LAYOUTS: dict[type[nn.Module], str] = {nn.LayerNorm: CHANNELS_LAST}
_TIMM_LAYOUTS = TimmClasses({
    "timm.layers.norm": {
        "LayerNorm": CHANNELS_LAST, "LayerNormFp32": CHANNELS_LAST, "LayerNorm2d": CHANNELS_FIRST,
        "LayerNorm2dFp32": CHANNELS_FIRST, "LayerNormExp2d": CHANNELS_FIRST,
    },
    "timm.layers.norm_act": {
        "LayerNormAct": CHANNELS_LAST, "LayerNormActFp32": CHANNELS_LAST, "LayerNormAct2d": CHANNELS_FIRST,
        "LayerNormAct2dFp32": CHANNELS_FIRST,
    },
}, nn.LayerNorm)  # fmt: skip


def _torchvision_layouts() -> None:
    from torchvision.models.convnext import LayerNorm2d

    _LAYOUTS.setdefault(LayerNorm2d, CHANNELS_FIRST)


_torchvision_layouts()


def _load_timm_layouts() -> None:
    """Add timm's LayerNorm classes once timm is imported (never imports it, never fails; unknown ones stay shared)."""
    for cls, layout in _TIMM_LAYOUTS.take():
        _LAYOUTS.setdefault(cls, layout)


def register_layer_norm_layout(norm_type: type[nn.LayerNorm], layout: str) -> type[nn.LayerNorm]:
    """Declare that ``norm_type`` (an ``nn.LayerNorm`` subclass) normalises ``"channels_last"`` or ``"channels_first"``.

    :func:`cen.convert` then converts it to :class:`cen.nn.ModalityLayerNorm` or
    :class:`cen.nn.ModalityLayerNorm2d`. Returns ``norm_type``.
    """
    if not isinstance(norm_type, type) or not issubclass(norm_type, nn.LayerNorm):
        raise TypeError(f"norm_type must be an nn.LayerNorm subclass, got {norm_type!r}")
    if layout not in (CHANNELS_LAST, CHANNELS_FIRST):
        raise ValueError(f"layout must be {CHANNELS_LAST!r} or {CHANNELS_FIRST!r}, got {layout!r}")
    _LAYOUTS[norm_type] = layout
    return norm_type


def layer_norm_layout(norm: nn.LayerNorm) -> str | None:
    """``"channels_last"``, ``"channels_first"``, or None for a subclass that overrides ``forward`` and is not known."""
    _load_timm_layouts()
    for cls in type(norm).__mro__:
        if cls in _LAYOUTS:
            return _LAYOUTS[cls]
        if "forward" in cls.__dict__:
            return None
    return None


def twin_type(norm: nn.Module) -> type[_ModalityNorm] | None:
    """The modality twin class of ``norm`` (see the module docstring), or None if it is not converted."""
    if isinstance(norm, _ModalityNorm):
        return None
    base: type[_ModalityNorm] | None = None
    if isinstance(norm, nn.BatchNorm1d):
        base = ModalityBatchNorm1d
    elif isinstance(norm, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        base = ModalityBatchNorm2d
    elif isinstance(norm, nn.InstanceNorm2d):
        base = ModalityInstanceNorm2d
    elif isinstance(norm, nn.GroupNorm):
        base = ModalityGroupNorm
    elif isinstance(norm, nn.LayerNorm):
        layout = layer_norm_layout(norm)
        base = {CHANNELS_LAST: ModalityLayerNorm, CHANNELS_FIRST: ModalityLayerNorm2d}.get(layout)
    if base is not None and isinstance(norm._modules.get("act"), nn.Module):
        base = _WITH_ACT.get(base)
    return base


def check_convertible(name: str, norm: nn.Module) -> None:
    """Raise a one-line ``ValueError`` for a norm :func:`cen.convert` recognises but cannot convert."""
    if isinstance(norm, nn.LayerNorm) and len(norm.normalized_shape) != 1 and twin_type(norm) is not None:
        raise ValueError(
            f"cannot convert {name or 'the module'} ({type(norm).__name__}): normalized_shape="
            f"{tuple(norm.normalized_shape)} normalises several dimensions, so there is no per-channel gamma; "
            "cen converts LayerNorms over one (channel) dimension only"
        )


def _kind_kwargs(norm: nn.Module, affine: bool, bias: bool) -> tuple[tuple, dict]:
    """The positional feature arguments and the keywords of the twin constructor for ``norm``."""
    if isinstance(norm, nn.GroupNorm):
        return (norm.num_groups, norm.num_channels), {"eps": norm.eps, "affine": affine}
    if isinstance(norm, nn.LayerNorm):
        return (norm.normalized_shape[0],), {"eps": norm.eps, "affine": affine, "bias": bias}
    return (norm.num_features,), {
        "eps": norm.eps, "momentum": norm.momentum, "affine": affine, "track_running_stats": norm.track_running_stats,
    }  # fmt: skip


def make_twin(
    norm: nn.Module,
    num_modalities: int,
    *,
    exchange: bool = False,
    threshold: float = THRESHOLD,
    fusion: str | None = None,
    fusion_options: Mapping[str, object] | None = None,
) -> _ModalityNorm:
    """A modality-aware copy of ``norm`` with its parameters and statistics in every modality's slot.

    ``fusion`` (a strategy name) makes it a fusion point; ``exchange=True`` is
    short for ``fusion="exchange"``. A norm without affine parameters gets
    ``gamma = 1, beta = 0`` trainable ones when it is a fusion point (the
    strategies read ``gamma``), and stays non-affine otherwise.
    """
    twin_cls = twin_type(norm)
    if twin_cls is None:
        raise TypeError(
            f"cannot convert {type(norm).__name__}: expected BatchNorm1d/2d, SyncBatchNorm, InstanceNorm2d, "
            "GroupNorm or a channels-last/first LayerNorm"
        )
    check_convertible("", norm)
    if fusion is None and exchange:
        fusion = "exchange"
    weight, bias = getattr(norm, "weight", None), getattr(norm, "bias", None)
    affine = weight is not None or fusion is not None
    args, kwargs = _kind_kwargs(norm, affine, bias is not None or weight is None)
    if issubclass(twin_cls, _NormAct):
        kwargs.update(drop=norm._modules.get("drop"), act=norm._modules["act"])
    twin = twin_cls(
        *args,
        num_modalities,
        threshold=threshold,
        fusion=fusion,
        fusion_options=dict(fusion_options) if fusion is not None and fusion_options else None,
        **kwargs,
    )
    ref = next(iter(norm.parameters()), None)
    ref = ref if ref is not None else next(iter(norm.buffers()), None)
    if ref is not None:
        twin.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
    with torch.no_grad():
        if weight is not None:
            twin.weight.copy_(weight.detach().repeat(num_modalities))
        if bias is not None:
            twin.bias.copy_(bias.detach().repeat(num_modalities))
        running_mean = getattr(norm, "running_mean", None)
        if getattr(norm, "track_running_stats", False) and running_mean is not None:
            twin.running_mean.copy_(running_mean.repeat(num_modalities))
            twin.running_var.copy_(norm.running_var.repeat(num_modalities))
            twin.num_batches_tracked.copy_(norm.num_batches_tracked)
    twin.train(norm.training)
    if weight is not None:
        twin.weight.requires_grad_(weight.requires_grad)
    if bias is not None:
        twin.bias.requires_grad_(bias.requires_grad)
    return twin
