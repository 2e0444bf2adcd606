"""Turn any network into a modality-stacked one by swapping its norms.

Convolutions, pooling, activations, residual adds and heads are shared across
modalities and work unchanged on a stacked ``(B*M, ...)`` batch; only the
norms must become private. :func:`convert` replaces every ``BatchNorm1d``,
``BatchNorm2d``, ``SyncBatchNorm`` and ``InstanceNorm2d`` by its modality-aware
twin, copying the original parameters and running statistics into every
modality's slot, and makes *fusion points* (norms followed by a fusion strategy,
:mod:`cen.core.fusions`) where the paper exchanges or where the caller chooses.
With ``shared_convs=False`` the convolutions and linear layers become private
too (:mod:`cen.core.unshared`).

Where ``exchange="auto"`` puts fusion points: after the norm that the registry of
exchange points (:func:`register_exchange_point`) names in each known block. The
built-in rules:

* torchvision ``Bottleneck``: after ``bn2``, the norm of the 3x3 conv, before
  its ReLU (paper, Sec. 3.3).
* torchvision ``BasicBlock``: after ``bn1``. Its two 3x3 convs are alike; ``bn1``
  is the one that, like the bottleneck's ``bn2``, sits inside the residual
  branch right before a ReLU, while ``bn2`` ends the branch and is summed
  with the identity.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from cen.core.defaults import THRESHOLD
from cen.core.norms import (
    ModalityBatchNorm1d,
    ModalityBatchNorm2d,
    ModalityInstanceNorm2d,
    _ModalityNorm,
)
from cen.core.spec import FusionSpec, Points, as_spec
from cen.core.unshared import unshare

ExchangeSpec = Points  # the type of FusionSpec.points (the name older code imports)

_EXCHANGE_POINTS: dict[type[nn.Module], str] = {}


def register_exchange_point(block_type: type[nn.Module], norm: str) -> type[nn.Module]:
    """Declare that in every ``block_type`` module the fusion point is its child norm ``norm``.

    ``exchange="auto"`` then uses it (subclasses included). Returns ``block_type``,
    and :func:`exchange_point` is the same as a class decorator. Registering a type
    again replaces its rule.
    """
    if not isinstance(block_type, type) or not issubclass(block_type, nn.Module):
        raise TypeError(f"block_type must be an nn.Module subclass, got {block_type!r}")
    if not isinstance(norm, str) or not norm:
        raise TypeError(f"norm must be the attribute name of the block's norm (e.g. 'bn2'), got {norm!r}")
    _EXCHANGE_POINTS[block_type] = norm
    return block_type


def exchange_point(norm: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: ``@cen.exchange_point("bn2")`` on a block is ``register_exchange_point(Block, "bn2")``."""
    return lambda block_type: register_exchange_point(block_type, norm)


def exchange_points() -> dict[type[nn.Module], str]:
    """A copy of the registry: ``{block type: name of its exchanging norm}``."""
    return dict(_EXCHANGE_POINTS)


register_exchange_point(Bottleneck, "bn2")
register_exchange_point(BasicBlock, "bn1")


def _known_blocks() -> str:
    return ", ".join(f"{t.__module__}.{t.__qualname__} -> {n}" for t, n in _EXCHANGE_POINTS.items())


def auto_exchange_names(module: nn.Module) -> set[str]:
    """Qualified names of the norms where ``exchange="auto"`` exchanges (see :func:`register_exchange_point`)."""
    names = set()
    for name, sub in module.named_modules():
        for block_type, child in _EXCHANGE_POINTS.items():
            if isinstance(sub, block_type):
                if not isinstance(getattr(sub, child, None), nn.Module):
                    raise TypeError(
                        f"{name or 'module'} is a {block_type.__name__}, registered to exchange after its norm "
                        f"{child!r}, but has no child module {child!r}"
                    )
                names.add(f"{name}.{child}" if name else child)
    return names


def _twin_type(norm: nn.Module) -> type[_ModalityNorm] | None:
    if isinstance(norm, nn.BatchNorm1d):
        return ModalityBatchNorm1d
    if isinstance(norm, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        return ModalityBatchNorm2d
    if isinstance(norm, nn.InstanceNorm2d):
        return ModalityInstanceNorm2d
    return None


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
    twin_type = _twin_type(norm)
    if twin_type is None:
        raise TypeError(
            f"cannot convert {type(norm).__name__}: expected BatchNorm1d/2d, SyncBatchNorm or InstanceNorm2d"
        )
    if fusion is None and exchange:
        fusion = "exchange"
    affine = norm.affine or fusion is not None
    twin = twin_type(
        norm.num_features,
        num_modalities,
        threshold=threshold,
        eps=norm.eps,
        momentum=norm.momentum,
        affine=affine,
        track_running_stats=norm.track_running_stats,
        fusion=fusion,
        fusion_options=dict(fusion_options) if fusion is not None and fusion_options else None,
    )
    ref = next(iter(norm.parameters()), None)
    ref = ref if ref is not None else next(iter(norm.buffers()), None)
    if ref is not None:
        twin.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
    with torch.no_grad():
        if norm.affine:
            twin.weight.copy_(norm.weight.detach().repeat(num_modalities))
            twin.bias.copy_(norm.bias.detach().repeat(num_modalities))
        if norm.track_running_stats and norm.running_mean is not None:
            twin.running_mean.copy_(norm.running_mean.repeat(num_modalities))
            twin.running_var.copy_(norm.running_var.repeat(num_modalities))
            twin.num_batches_tracked.copy_(norm.num_batches_tracked)
    twin.train(norm.training)
    if norm.affine:
        twin.weight.requires_grad_(norm.weight.requires_grad)
        twin.bias.requires_grad_(norm.bias.requires_grad)
    return twin


def _exchange_predicate(
    module: nn.Module, exchange: ExchangeSpec, candidates: list[str], num_modalities: int
) -> Callable[[str, nn.Module], bool]:
    if exchange is None or exchange is False:
        return lambda name, m: False
    if exchange is True:
        return lambda name, m: True
    if isinstance(exchange, str):
        if exchange != "auto":
            raise ValueError(
                f"exchange={exchange!r} is not understood; expected 'auto', True, False, "
                "a collection of qualified norm names, or a predicate(name, module)"
            )
        names = auto_exchange_names(module)
        if not names and num_modalities > 1 and candidates:
            raise ValueError(
                f"exchange='auto' found no known block in {type(module).__name__} (known: {_known_blocks()}); "
                f"choose the fusion points with exchange=[norm names, e.g. {candidates[:3]}] or "
                "exchange=predicate(name, norm) -> bool, declare your block with "
                "cen.register_exchange_point(BlockType, 'norm_attribute'), or pass exchange=False for "
                "private norms without fusion"
            )
        return lambda name, m: name in names
    if callable(exchange):
        return exchange
    if isinstance(exchange, Collection):
        wanted = set(exchange)
        unknown = sorted(wanted - set(candidates))
        if unknown:
            raise ValueError(
                f"exchange names {unknown} are not norms this converter can convert; "
                f"convertible norms are: {candidates[:20]}{' ...' if len(candidates) > 20 else ''}"
            )
        return lambda name, m: name in wanted
    raise TypeError(
        f"exchange must be 'auto', a bool, a collection of names or a callable, got {type(exchange).__name__}"
    )


_UNSET = object()  # a keyword of convert() that was not given (None means "no fusion points" for exchange=)


def convert(
    module: nn.Module,
    num_modalities: int,
    spec: FusionSpec | None = None,
    *,
    fusion=_UNSET,
    fusion_options=_UNSET,
    shared_convs=_UNSET,
    threshold=_UNSET,
    exchange=_UNSET,
) -> nn.Module:
    """Make ``module`` run on ``num_modalities`` stacked modalities with private norms.

    Args:
        module: any ``nn.Module``; converted in place (the converted module is
            also returned, and must be used when ``module`` itself is a norm or
            a convolution).
        num_modalities: ``M >= 1``.
        spec: the fusion settings, a :class:`cen.FusionSpec` (strategy, its options,
            ``theta``, where the fusion points go, shared convolutions); default
            ``FusionSpec()``: exchange (paper Eq. 6) at the registered blocks, shared convolutions.
        fusion, fusion_options, threshold, exchange, shared_convs: the same settings as
            loose keywords (``FusionSpec``'s ``strategy``, ``options``, ``threshold``,
            ``points``, ``shared_convs``), kept for older code; not together with ``spec``.
            ``exchange`` is ``"auto"`` (the registered blocks, see
            :func:`register_exchange_point`; an error if the network has none and
            ``M > 1``), ``True`` (every converted norm), ``False``/``None`` (none), a
            collection of qualified norm names, or a predicate ``(name, norm) -> bool``.

    Returns:
        The converted module. Norms already modality-aware are left alone if
        they have ``num_modalities`` modalities.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"convert expects an nn.Module, got {type(module).__name__}")
    if isinstance(num_modalities, bool) or not isinstance(num_modalities, int) or num_modalities < 1:
        raise ValueError(f"num_modalities must be an int >= 1, got {num_modalities!r}")
    loose = {"fusion": fusion, "fusion_options": fusion_options, "threshold": threshold, "shared_convs": shared_convs}
    loose = {k: v for k, v in loose.items() if v is not _UNSET}
    if exchange is not _UNSET:
        loose["exchange"] = False if exchange is None else exchange
    spec = as_spec(spec, **loose)
    fusion, fusion_options, threshold, exchange = spec.strategy, dict(spec.options), spec.threshold, spec.points

    candidates = []
    for name, sub in module.named_modules():
        if isinstance(sub, _ModalityNorm):
            if sub.num_modalities != num_modalities:
                raise ValueError(
                    f"{name or 'module'} is already converted for {sub.num_modalities} modalities, not {num_modalities}"
                )
        elif _twin_type(sub) is not None:
            candidates.append(name)
    wants_exchange = not (exchange is None or exchange is False)
    if not candidates and wants_exchange and not any(isinstance(m, _ModalityNorm) for m in module.modules()):
        raise ValueError(
            f"{type(module).__name__} has no BatchNorm1d/2d, SyncBatchNorm or InstanceNorm2d to convert, "
            f"so exchange={exchange!r} cannot be applied; pass exchange=False to only check, or add norms"
        )
    should_exchange = _exchange_predicate(module, exchange, candidates, num_modalities)

    # Build every twin first, so that an error leaves the module untouched.
    twins = {}
    for name in candidates:
        norm = module.get_submodule(name) if name else module
        point = bool(should_exchange(name, norm))
        twins[name] = make_twin(
            norm, num_modalities, threshold=threshold, fusion=fusion if point else None, fusion_options=fusion_options
        )
    if "" in twins:  # the module is itself a norm
        return twins[""]
    for name, twin in twins.items():
        parent_name, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, child, twin)
    if not spec.shared_convs:
        module = unshare(module, num_modalities)
    return module
