"""Turn any network into a modality-stacked one by swapping its norms.

Convolutions, pooling, activations, attention, residual adds and heads are shared
across modalities and work unchanged on a stacked ``(B*M, ...)`` batch; only the norms
must become private. :func:`convert` replaces every ``BatchNorm1d``, ``BatchNorm2d``,
``SyncBatchNorm``, ``InstanceNorm2d``, ``GroupNorm`` and (channels-last or -first, 1-d)
``LayerNorm`` by its modality-aware twin (:mod:`cen.core.twins` has the table),
copying the original parameters and running statistics into every modality's slot,
and makes *fusion points* (norms followed by a fusion strategy,
:mod:`cen.core.fusions`) where the paper exchanges or where the caller chooses. With
``shared_convs=False`` the convolutions and linear layers become private too
(:mod:`cen.core.unshared`).

Where ``exchange="auto"`` puts fusion points: after the norm that the registry of
exchange points names in each known block (:mod:`cen.core.exchange_points`, with the
table of families: torchvision and timm ResNets, MobileNets, EfficientNets, RegNets,
ConvNeXts, Swins, ViTs, PVT v2, ...; :func:`register_exchange_point` adds yours).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from torch import nn

from cen.core.exchange_points import (
    FAMILIES,
    auto_exchange_names,
    exchange_point,
    exchange_points,
    known_blocks,
    register_exchange_point,
)
from cen.core.norms import _ModalityNorm
from cen.core.spec import FusionSpec, Points, as_spec
from cen.core.twins import check_convertible, make_twin, twin_type
from cen.core.unshared import unshare

ExchangeSpec = Points  # the type of FusionSpec.points (the name older code imports)

__all__ = [
    "ExchangeSpec",
    "auto_exchange_names",
    "convert",
    "exchange_point",
    "exchange_points",
    "make_twin",
    "register_exchange_point",
]


def _no_fused_path(module: nn.Module, args: tuple) -> None:
    """A forward pre-hook that changes nothing (see :func:`keep_transformer_layers_unfused`)."""
    return None


def keep_transformer_layers_unfused(module: nn.Module) -> None:
    """Keep torch's ``nn.TransformerEncoderLayer`` off its fused inference kernel where its norms are modality twins.

    At inference (eval mode, no gradients) that layer calls one fused kernel that reads
    ``norm1.weight`` and ``norm2.weight`` as ``(C,)`` vectors, bypassing the norm modules;
    it skips the kernel when any of its submodules has a forward hook, so each converted
    norm of such a layer gets a hook that does nothing.
    """
    for layer in module.modules():
        if isinstance(layer, nn.TransformerEncoderLayer):
            for norm in (layer.norm1, layer.norm2):
                if isinstance(norm, _ModalityNorm) and _no_fused_path not in norm._forward_pre_hooks.values():
                    norm.register_forward_pre_hook(_no_fused_path)


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
                f"exchange='auto' found no known block in {type(module).__name__} (known: {known_blocks()}); "
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
        elif twin_type(sub) is not None:
            check_convertible(name, sub)
            candidates.append(name)
    wants_exchange = not (exchange is None or exchange is False)
    if not candidates and wants_exchange and not any(isinstance(m, _ModalityNorm) for m in module.modules()):
        known = f" (exchange='auto' knows the blocks of: {FAMILIES})" if exchange == "auto" else ""
        raise ValueError(
            f"{type(module).__name__} has no BatchNorm1d/2d, SyncBatchNorm, InstanceNorm2d, GroupNorm or LayerNorm to "
            f"convert, so exchange={exchange!r} cannot be applied{known}; pass exchange=False to only check, or add norms"
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
    keep_transformer_layers_unfused(module)
    if not spec.shared_convs:
        module = unshare(module, num_modalities)
    return module
