"""Where ``exchange="auto"`` puts the fusion points: a registry of block types and the norm each fuses after.

An entry names, for every module of a block type (subclasses included; the most
specific registered class of a module's MRO wins), the norm inside it after which the
modalities meet. The norm is given either

* as a dotted path inside the block: ``"bn2"``, ``"block.2"`` (a ``Sequential``
  index), ``"f.b.1"``; or
* as a small function ``rule(block)`` returning such a path, the norm module itself,
  a list of them (a block with several points), or None (this instance has none).

:func:`register_exchange_point` adds an entry (``register_exchange_point(Block, "bn2")``
as before); :func:`exchange_point` is the same as a class decorator.

The built-in rules follow the paper's choice, carried over to each family. For a
convolutional bottleneck: after the norm of the **spatial** (3x3 or depthwise) conv,
before its activation (paper Sec. 3.3, ResNet ``bn2``), the place where a block's
features are richest and still inside its residual branch. For a transformer block:
after its **first** norm, the one whose output every token mixer of the block reads.

============================== =============================== ===============================================
family                         block                           norm (why)
============================== =============================== ===============================================
torchvision ResNet             ``Bottleneck``                  ``bn2``: the 3x3 conv's norm (the paper)
                               ``BasicBlock``                  ``bn1``: both convs are 3x3; ``bn1`` is the one
                                                               inside the branch before a ReLU (``bn2`` ends
                                                               the branch, summed with the identity)
torchvision MobileNetV2        ``InvertedResidual``            the depthwise conv's norm (``conv.1.1``, or
                                                               ``conv.0.1`` without expansion), before ReLU6
torchvision MobileNetV3        ``InvertedResidual``            the depthwise conv's norm (``block.1.1`` /
                                                               ``block.0.1``), before its activation
torchvision EfficientNet       ``MBConv``                      the depthwise conv's norm, before SiLU
                               ``FusedMBConv``                 ``block.0.1``: the fused 3x3 conv's norm
torchvision RegNet             ``ResBottleneckBlock``          ``f.b.1``: the grouped 3x3 conv's norm
torchvision ConvNeXt           ``CNBlock``                     ``block.2``: the block's one norm, after the
                                                               7x7 depthwise conv, before the MLP
torchvision Swin (V1, V2)      ``SwinTransformerBlock``        ``norm1``: the first norm (V1: before window
                                                               attention; V2, post-norm: on its output)
torchvision ViT                ``EncoderBlock``                ``ln_1``: the first norm, before attention
torchvision DenseNet           ``_DenseLayer``                 ``norm2``: between the 1x1 and the 3x3 conv
                                                               (pre-activation), the bottleneck's middle norm
torchvision ShuffleNetV2       ``InvertedResidual``            ``branch2.4``: the depthwise conv's norm
torchvision VGG (``_bn``)      ``VGG``                         every norm of ``features`` but the first (the
                                                               stem): VGG has no blocks, each conv is a stage
torch ``nn.Transformer``       ``TransformerEncoderLayer``,    ``norm1``: the first norm
                               ``TransformerDecoderLayer``
timm ResNet                    ``Bottleneck``,                 ``bn2``, ``bn1`` (as torchvision's)
                               ``BasicBlock``
timm ConvNeXt                  ``ConvNeXtBlock``               ``norm``: after the depthwise conv
timm EfficientNet,             ``DepthwiseSeparableConv``      ``bn1``: the depthwise conv's norm + act
MobileNetV3 (and V4)           ``InvertedResidual``            ``bn2``: the depthwise conv's norm + act
                               ``EdgeResidual``                ``bn1``: the fused 3x3 conv's norm + act
                               ``ConvBnAct``                   ``bn1``: its spatial conv's norm + act
                               ``UniversalInvertedResidual``   the first spatial (depthwise) conv's norm
timm RegNet                    ``Bottleneck``                  ``conv2.bn``: the grouped 3x3 conv's norm + act
                               ``PreBottleneck``               ``norm2``: before the 3x3 conv (pre-activation)
timm Swin, Swin V2             ``SwinTransformerBlock``,       ``norm1``: the first norm
                               ``SwinTransformerV2Block``
timm ViT                       ``Block``, ``ResPostBlock``     ``norm1``: the first norm
timm PVT v2 (MiT's relative)   ``Block``                       ``norm1``: the first norm
============================== =============================== ===============================================

timm is optional: its entries are registered lazily, the first time a model holding a
timm module is converted (or :func:`exchange_points` is asked while timm is imported),
never importing timm otherwise and skipping any class a timm version lacks. An entry
you register for a timm class takes precedence over the built-in one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from torch import nn

from cen.core.timm_classes import TimmClasses

#: A norm inside a block: a dotted path, or a function of the block (see the module docstring).
NormRule = str | Callable[[nn.Module], "str | nn.Module | Iterable[str | nn.Module] | None"]


@dataclasses.dataclass(frozen=True)
class ExchangeRule:
    """One registry entry: blocks of ``block_type`` fuse after ``norm`` (a path or a function)."""

    block_type: type[nn.Module]
    norm: NormRule

    def describe(self) -> str:
        """``"Bottleneck -> bn2"``, or the function's name for a function rule."""
        target = self.norm if isinstance(self.norm, str) else getattr(self.norm, "__name__", "rule")
        return f"{self.block_type.__name__} -> {target}"

    def paths(self, block: nn.Module, name: str) -> list[str]:
        """The paths inside ``block`` (named ``name`` in the model) of the norms this rule picks."""
        found = self.norm(block) if callable(self.norm) else self.norm
        if found is None:
            return []
        items = [found] if isinstance(found, (str, nn.Module)) else list(found)
        paths = []
        for item in items:
            if isinstance(item, nn.Module):
                path = next((p for p, m in block.named_modules() if m is item), None)
                if not path:
                    raise TypeError(f"{name or 'module'}: the exchange rule {self.describe()} returned a module that is "
                                    "not inside the block")  # fmt: skip
            else:
                path = item
                try:
                    target = block.get_submodule(path)
                except AttributeError:
                    target = None
                if not isinstance(target, nn.Module) or not path:
                    raise TypeError(
                        f"{name or 'module'} is a {self.block_type.__name__}, registered to exchange after its norm "
                        f"{path!r}, but has no child module {path!r}"
                    )
            paths.append(path)
        return paths


_RULES: dict[type[nn.Module], ExchangeRule] = {}
_TIMM_RULES: dict[type[nn.Module], ExchangeRule] = {}


def register_exchange_point(block_type: type[nn.Module], norm: NormRule) -> type[nn.Module]:
    """Declare that in every ``block_type`` module the fusion point is the norm ``norm``.

    Args:
        block_type: an ``nn.Module`` subclass (its subclasses follow the rule unless
            they have their own).
        norm: the norm's dotted path inside the block (``"bn2"``, ``"block.2"``), or a
            function ``rule(block)`` returning a path, the norm module, a list of
            them, or None.

    ``exchange="auto"`` then uses it. Returns ``block_type``, and
    :func:`exchange_point` is the same as a class decorator. Registering a type again
    replaces its rule.
    """
    if not isinstance(block_type, type) or not issubclass(block_type, nn.Module):
        raise TypeError(f"block_type must be an nn.Module subclass, got {block_type!r}")
    if not (isinstance(norm, str) and norm) and not callable(norm):
        raise TypeError(
            f"norm must be the dotted path of the block's norm (e.g. 'bn2', 'block.2') or a function of the block, "
            f"got {norm!r}"
        )
    _RULES[block_type] = ExchangeRule(block_type, norm)
    return block_type


def exchange_point(norm: NormRule) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: ``@cen.exchange_point("bn2")`` on a block is ``register_exchange_point(Block, "bn2")``."""
    return lambda block_type: register_exchange_point(block_type, norm)


def exchange_points() -> dict[type[nn.Module], NormRule]:
    """A copy of the registry: ``{block type: its norm's path or rule function}`` (timm's once timm is imported)."""
    _load_timm()
    return {t: r.norm for t, r in {**_TIMM_RULES, **_RULES}.items()}


def rule_for(module: nn.Module) -> ExchangeRule | None:
    """The rule of the most specific registered class of ``module`` (a user's entry before a built-in timm one)."""
    for cls in type(module).__mro__:
        rule = _RULES.get(cls) or _TIMM_RULES.get(cls)
        if rule is not None:
            return rule
    return None


def auto_exchange_names(module: nn.Module) -> set[str]:
    """Qualified names of the norms where ``exchange="auto"`` puts fusion points."""
    if any(type(m).__module__.startswith("timm.") for m in module.modules()):
        _load_timm()
    names = set()
    for name, sub in module.named_modules():
        rule = rule_for(sub)
        if rule is not None:
            names.update(f"{name}.{path}" if name else path for path in rule.paths(sub, name))
    return names


# -- rule functions shared by several families ------------------------------------------------------
def _is_norm(module: nn.Module) -> bool:
    from cen.core.norms import _ModalityNorm
    from cen.core.twins import twin_type

    return isinstance(module, _ModalityNorm) or twin_type(module) is not None


def spatial_conv_norm(block: nn.Module) -> str | None:
    """The first norm after the block's first spatial (kernel > 1) ``Conv2d``, in definition order; None if none."""
    seen_conv = False
    for path, sub in block.named_modules():
        if not seen_conv:
            kernel = getattr(sub, "kernel_size", (1,))
            seen_conv = isinstance(sub, nn.Conv2d) and max(kernel) > 1
        elif path and _is_norm(sub):
            return path
    return None


def norms_after_stem(block: nn.Module) -> list[str]:
    """Every norm of ``block.features`` but the first (VGG: each conv is a stage, the first is the stem)."""
    features = getattr(block, "features", block)
    prefix = "features." if features is not block else ""
    norms = [f"{prefix}{path}" for path, sub in features.named_modules() if path and _is_norm(sub)]
    return norms[1:]


# -- the built-in rules -------------------------------------------------------------------------------
def _register_torchvision() -> None:
    from torchvision.models import (
        convnext,
        densenet,
        efficientnet,
        mobilenetv2,
        mobilenetv3,
        regnet,
        resnet,
        shufflenetv2,
        swin_transformer,
        vgg,
        vision_transformer,
    )

    for block, norm in (
        (resnet.Bottleneck, "bn2"),
        (resnet.BasicBlock, "bn1"),
        (mobilenetv2.InvertedResidual, spatial_conv_norm),
        (mobilenetv3.InvertedResidual, spatial_conv_norm),
        (efficientnet.MBConv, spatial_conv_norm),
        (efficientnet.FusedMBConv, "block.0.1"),
        (regnet.ResBottleneckBlock, "f.b.1"),
        (convnext.CNBlock, "block.2"),
        (swin_transformer.SwinTransformerBlock, "norm1"),
        (vision_transformer.EncoderBlock, "ln_1"),
        (densenet._DenseLayer, "norm2"),
        (shufflenetv2.InvertedResidual, "branch2.4"),
        (vgg.VGG, norms_after_stem),
        (nn.TransformerEncoderLayer, "norm1"),
        (nn.TransformerDecoderLayer, "norm1"),
    ):
        register_exchange_point(block, norm)


_register_torchvision()

#: timm's rules, by module: ``{class name: norm}`` (registered once timm is imported).
TIMM_RULES: dict[str, dict[str, NormRule]] = {
    "timm.models.resnet": {"Bottleneck": "bn2", "BasicBlock": "bn1"},
    "timm.models.convnext": {"ConvNeXtBlock": "norm"},
    "timm.models._efficientnet_blocks": {
        "DepthwiseSeparableConv": "bn1",
        "InvertedResidual": "bn2",
        "EdgeResidual": "bn1",
        "ConvBnAct": "bn1",
        "UniversalInvertedResidual": spatial_conv_norm,
    },
    "timm.models.regnet": {"Bottleneck": "conv2.bn", "PreBottleneck": "norm2"},
    "timm.models.swin_transformer": {"SwinTransformerBlock": "norm1"},
    "timm.models.swin_transformer_v2": {"SwinTransformerV2Block": "norm1"},
    "timm.models.vision_transformer": {"Block": "norm1", "ResPostBlock": "norm1"},
    "timm.models.pvt_v2": {"Block": "norm1"},
}

#: The families with built-in rules, for error messages.
FAMILIES = (
    "torchvision ResNet, MobileNetV2/V3, EfficientNet (V1, V2), RegNet, ConvNeXt, Swin (V1, V2), ViT, DenseNet, "
    "ShuffleNetV2, VGG-BN, torch nn.TransformerEncoder/DecoderLayer; "
    "timm ResNet, ConvNeXt, EfficientNet/MobileNetV3, RegNet, Swin (V1, V2), ViT, PVT v2"
)


_TIMM_BLOCKS = TimmClasses(TIMM_RULES, nn.Module)


def _load_timm() -> None:
    """Fill the timm rules once timm is imported; never imports timm itself, never fails (a family the
    installed timm lacks gets no automatic point)."""
    for cls, norm in _TIMM_BLOCKS.take():
        _TIMM_RULES[cls] = ExchangeRule(cls, norm)


def known_blocks() -> str:
    """One line for an error message: the families with built-in rules, ResNet's rules, and yours."""
    resnet = ", ".join(r.describe() for t, r in _RULES.items() if t.__module__ == "torchvision.models.resnet")
    yours = ", ".join(r.describe() for t, r in _RULES.items() if not t.__module__.startswith("torchvision."))
    return f"{FAMILIES}; ResNet: {resnet}" + (f"; registered: {yours}" if yours else "")
