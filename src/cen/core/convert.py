"""Turn any network into a modality-stacked one by swapping its norms.

Convolutions, pooling, activations, residual adds and heads are shared across
modalities and work unchanged on a stacked ``(B*M, ...)`` batch; only the
norms must become private. :func:`convert` replaces every ``BatchNorm1d``,
``BatchNorm2d``, ``SyncBatchNorm`` and ``InstanceNorm2d`` by its modality-aware
twin, copying the original parameters and running statistics into every
modality's slot, and switches on exchange where the paper does or where the
caller chooses.

Where ``exchange="auto"`` exchanges:

* torchvision ``Bottleneck``: after ``bn2``, the norm of the 3x3 conv, before
  its ReLU (paper, Sec. 3.3).
* torchvision ``BasicBlock``: after ``bn1``. Its two 3x3 convs are alike; ``bn1``
  is the one that, like the bottleneck's ``bn2``, sits inside the residual
  branch right before a ReLU, while ``bn2`` ends the branch and is summed
  with the identity.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from cen.core.norms import (
    ModalityBatchNorm1d,
    ModalityBatchNorm2d,
    ModalityInstanceNorm2d,
    _ModalityNorm,
)

ExchangeSpec = str | bool | None | Collection[str] | Callable[[str, nn.Module], bool]

_AUTO_EXCHANGE = {Bottleneck: "bn2", BasicBlock: "bn1"}


def auto_exchange_names(module: nn.Module) -> set[str]:
    """Qualified names of the norms where the paper exchanges (see module docstring)."""
    names = set()
    for name, sub in module.named_modules():
        for block_type, child in _AUTO_EXCHANGE.items():
            if isinstance(sub, block_type):
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


def make_twin(norm: nn.Module, num_modalities: int, *, exchange: bool, threshold: float) -> _ModalityNorm:
    """A modality-aware copy of ``norm`` with its parameters and statistics in every modality's slot.

    A norm without affine parameters gets ``gamma = 1, beta = 0`` trainable ones
    when it exchanges (the test reads ``|gamma|``), and stays non-affine otherwise.
    """
    twin_type = _twin_type(norm)
    if twin_type is None:
        raise TypeError(f"cannot convert {type(norm).__name__}: expected BatchNorm1d/2d, SyncBatchNorm or InstanceNorm2d")
    affine = norm.affine or exchange
    twin = twin_type(
        norm.num_features,
        num_modalities,
        exchange=exchange,
        threshold=threshold,
        eps=norm.eps,
        momentum=norm.momentum,
        affine=affine,
        track_running_stats=norm.track_running_stats,
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


def _exchange_predicate(module: nn.Module, exchange: ExchangeSpec, candidates: list[str]) -> Callable[[str, nn.Module], bool]:
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
    raise TypeError(f"exchange must be 'auto', a bool, a collection of names or a callable, got {type(exchange).__name__}")


def convert(
    module: nn.Module,
    num_modalities: int,
    *,
    threshold: float = 2e-2,
    exchange: ExchangeSpec = "auto",
) -> nn.Module:
    """Make ``module`` run on ``num_modalities`` stacked modalities with private norms.

    Args:
        module: any ``nn.Module``; converted in place (the converted module is
            also returned, and must be used when ``module`` itself is a norm).
        num_modalities: ``M >= 1``.
        threshold: ``theta`` of the exchanging norms.
        exchange: ``"auto"`` (where the paper exchanges, see the module
            docstring), ``True`` (every converted norm), ``False``/``None``
            (none), a collection of qualified module names, or a predicate
            ``(name, norm) -> bool``.

    Returns:
        The converted module. Norms already modality-aware are left alone if
        they have ``num_modalities`` modalities.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"convert expects an nn.Module, got {type(module).__name__}")
    if isinstance(num_modalities, bool) or not isinstance(num_modalities, int) or num_modalities < 1:
        raise ValueError(f"num_modalities must be an int >= 1, got {num_modalities!r}")
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0 (it is compared with |gamma|), got {threshold!r}")

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
    should_exchange = _exchange_predicate(module, exchange, candidates)

    if "" in candidates:  # the module is itself a norm
        return make_twin(module, num_modalities, exchange=bool(should_exchange("", module)), threshold=threshold)
    for name in candidates:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        norm = getattr(parent, child)
        twin = make_twin(norm, num_modalities, exchange=bool(should_exchange(name, norm)), threshold=threshold)
        setattr(parent, child, twin)
    return module
