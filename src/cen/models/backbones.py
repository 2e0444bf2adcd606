"""Multi-scale encoders by name: :func:`build_encoder` and the backbone registry.

An *encoder* is an ``nn.Module`` whose ``forward(x)`` takes images ``(N, C, H, W)``
and returns the tuple of its stage features, shallowest first, and which has two
attributes: ``out_channels`` (the channels of each stage) and ``strides`` (each
stage's stride with respect to the input). :func:`build_encoder` finds a name in
three places, in this order:

1. ``resnet18`` ... ``resnet152``: a torchvision ResNet as a
   :class:`ResNetEncoder` (torchvision's module names: ``conv1``, ``bn1``,
   ``layer1`` ... ``layer4``; strides 4, 8, 16, 32);
2. cen's own encoders: ``mit_b0`` ... ``mit_b5`` (SegFormer's Mix Transformer,
   :mod:`cen.models.mit`), and anything added with :func:`register_backbone`;
3. any timm model that supports ``features_only=True``, as a :class:`TimmEncoder`
   (timm is optional: ``pip install -e ".[timm]"``). ``"timm:NAME"`` asks timm
   for ``NAME`` even where cen has an encoder of that name (``"timm:resnet18"``).

Weights are loaded into the plain network *before* it is converted with
:func:`cen.convert`, so every modality's private norms start from the same
(e.g. ImageNet) statistics and scales. ``pretrained`` is ``None`` (random) or the
path of a local file; ``"imagenet"`` (and a torchvision ``WeightsEnum``) is for the
torchvision ResNets only, whose weights torchvision downloads. Nothing else is
ever downloaded: timm's own weights are given as a local file of timm's state dict.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torchvision import models as tvm
from torchvision.models import WeightsEnum
from torchvision.models.resnet import BasicBlock

from cen.core.registry import Registry
from cen.models.mit import MIT_VARIANTS, build_mit, load_mit_weights
from cen.models.state_dicts import describe_key_mismatch, key_mismatch, show_keys

BACKBONES: dict[str, tuple[int, ...]] = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    "resnet152": (3, 8, 36, 3),
}
"""Supported backbones and their number of blocks per stage."""

BASIC_BLOCK_BACKBONES = ("resnet18", "resnet34")


def check_backbone(name: object) -> str:
    """Return ``name`` if it is one of the torchvision ResNets (:data:`BACKBONES`), else raise a clear error."""
    if not isinstance(name, str) or name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {list(BACKBONES)}")
    return name


def stage_channels(name: str) -> tuple[int, int, int, int]:
    """Output channels of ``layer1`` .. ``layer4`` of backbone ``name``."""
    expansion = 1 if check_backbone(name) in BASIC_BLOCK_BACKBONES else 4
    return tuple(c * expansion for c in (64, 128, 256, 512))  # type: ignore[return-value]


class ResNetEncoder(nn.Module):
    """The stem and four stages of a torchvision ResNet, returning ``(l1, l2, l3, l4)``.

    Strides 4, 8, 16 and 32 with respect to the input. Attributes ``out_channels``
    (``(64, 128, 256, 512)`` for ResNet-18/34, four times that for the bottleneck
    ResNets) and ``strides``; the state dict has torchvision's names.
    """

    def __init__(self, resnet: tvm.ResNet) -> None:
        super().__init__()
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.layer4 = resnet.layer4
        self.out_channels = tuple(
            _block_channels(layer[-1]) for layer in (self.layer1, self.layer2, self.layer3, self.layer4)
        )
        self.strides = (4, 8, 16, 32)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        l1 = self.layer1(x)
        l2 = self.layer2(l1)
        l3 = self.layer3(l2)
        l4 = self.layer4(l3)
        return l1, l2, l3, l4


def _block_channels(block: nn.Module) -> int:
    """Output channels of a torchvision ``BasicBlock`` (``bn2``) or ``Bottleneck`` (``bn3``)."""
    return block.bn2.num_features if isinstance(block, BasicBlock) else block.bn3.num_features


def _imagenet_weights(name: str) -> WeightsEnum:
    # IMAGENET1K_V1 are the weights the reference code starts from
    # (download.pytorch.org/models/resnet101-5d3b4d8f.pth and its siblings).
    return tvm.get_model_weights(name).IMAGENET1K_V1


def _read_state_dict_file(path: str | os.PathLike, backbone: str) -> dict[str, Tensor]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained={path!r} is not an existing file with {backbone} weights")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, foreign pickle, ...
        raise ValueError(f"{path}: cannot read it as a PyTorch state dict of {backbone} weights ({err})") from err
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict {{name: Tensor}} of {backbone} weights")
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):  # saved from DataParallel
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _load_into(resnet: tvm.ResNet, sd: Mapping[str, Tensor], source: str, backbone: str) -> None:
    """Load a torchvision state dict into ``resnet``; the classifier (``fc``) is optional."""
    mismatch = key_mismatch(resnet.state_dict(), sd, optional=lambda key: key.startswith("fc."))
    if mismatch:
        missing, unexpected, wrong = (show_keys(items, 8) for items in mismatch)
        raise ValueError(
            f"{source} does not hold {backbone} weights in torchvision naming: "
            f"missing {missing}, unexpected {unexpected}, shape mismatches {wrong}"
        )
    resnet.load_state_dict({k: v for k, v in sd.items()}, strict=False)


def build_resnet_encoder(
    name: str,
    pretrained: None | str | os.PathLike | WeightsEnum = None,
    *,
    progress: bool = True,
) -> ResNetEncoder:
    """A torchvision ResNet ``name`` as an unconverted :class:`ResNetEncoder`.

    Args:
        name: one of :data:`BACKBONES`.
        pretrained: ``None`` (random init), ``"imagenet"`` (torchvision's
            ``IMAGENET1K_V1`` weights, downloaded into the torch hub cache on first
            use), a torchvision ``WeightsEnum`` member, or the path of a local file
            holding a torchvision-style state dict of that ResNet (``fc.*`` optional).
    """
    check_backbone(name)
    builder = getattr(tvm, name)
    if pretrained is None:
        resnet = builder(weights=None)
    elif isinstance(pretrained, WeightsEnum):
        resnet = builder(weights=pretrained, progress=progress)
    elif isinstance(pretrained, str) and pretrained == "imagenet":
        resnet = builder(weights=_imagenet_weights(name), progress=progress)
    elif isinstance(pretrained, (str, os.PathLike)):
        sd = _read_state_dict_file(pretrained, name)
        resnet = builder(weights=None)
        _load_into(resnet, sd, os.fspath(pretrained), name)
    else:
        raise TypeError(
            f"pretrained must be None, 'imagenet', a torchvision WeightsEnum or a file path, got {type(pretrained).__name__}"
        )
    return ResNetEncoder(resnet)


# -- the registry -------------------------------------------------------------------

#: Builders of cen's encoders by name: ``builder(pretrained=None, **options) -> encoder``.
ENCODERS: Registry[Callable[..., nn.Module]] = Registry("backbone")

TIMM_PREFIX = "timm:"
TIMM_INSTALL = 'pip install -e ".[timm]"'


def register_backbone(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding an encoder builder ``builder(pretrained=None, **options)`` under ``name``.

    The encoder it returns must have ``out_channels`` and ``strides`` and return its
    stage features as a tuple, shallowest first (see the module docstring).
    """
    return ENCODERS.register(name)


def _register_resnet(name: str) -> None:
    def build(pretrained: None | str | os.PathLike | WeightsEnum = None, *, progress: bool = True) -> ResNetEncoder:
        return build_resnet_encoder(name, pretrained, progress=progress)

    build.__doc__ = f"torchvision's {name} as a :class:`ResNetEncoder`."
    register_backbone(name)(build)


def _register_mit(name: str) -> None:
    def build(pretrained: None | str | os.PathLike = None, **options):
        model = build_mit(name, **options)
        if pretrained is not None:
            if not isinstance(pretrained, (str, os.PathLike)) or pretrained == "imagenet":
                raise ValueError(
                    f"pretrained={pretrained!r} for {name}: cen loads MiT weights from a local file only "
                    "(a state dict of cen's MixTransformer or a SegFormer release file mit_b*.pth), or None"
                )
            load_mit_weights(model, _read_state_dict_file(pretrained, name), os.fspath(pretrained), name)
        return model

    build.__doc__ = f"SegFormer's {name} (:mod:`cen.models.mit`), random or from a local file."
    register_backbone(name)(build)


for _name in BACKBONES:
    _register_resnet(_name)
for _name in MIT_VARIANTS:
    _register_mit(_name)


def _import_timm(purpose: str):
    """timm, or an ``ImportError`` saying how to install it."""
    try:
        import timm
    except ImportError:
        raise ImportError(f"{purpose} needs timm, an optional dependency: {TIMM_INSTALL}") from None
    return timm


def _timm_or_none():
    try:
        import timm
    except ImportError:
        return None
    return timm


def backbone_names() -> tuple[str, ...]:
    """The names cen itself knows (ResNets, then MiT and registered ones); any timm model name is accepted too."""
    return ENCODERS.names()


def is_backbone(name: object) -> bool:
    """Whether :func:`build_encoder` knows ``name`` (cen's names, ``timm:NAME``, or a timm model name)."""
    if not isinstance(name, str) or not name:
        return False
    if name in ENCODERS:
        return True
    timm = _timm_or_none()
    model = name[len(TIMM_PREFIX) :] if name.startswith(TIMM_PREFIX) else name
    return timm is not None and bool(timm.is_model(model))


def unknown_backbone_error(name: object) -> ValueError:
    """The one-line error for a name no source knows, saying what is known and how to list timm's names."""
    if _timm_or_none() is None:
        timm_part = f"or a timm model name, but timm is not installed ({TIMM_INSTALL})"
    else:
        timm_part = "or a timm model name with features_only support (list them: timm.list_models('convnext*'))"
    return ValueError(f"unknown backbone {name!r}; expected one of {list(ENCODERS.names())}, {timm_part}")


def build_encoder(
    name: str,
    pretrained: None | str | os.PathLike | WeightsEnum = None,
    *,
    out_indices: Sequence[int] | None = None,
    **options,
) -> nn.Module:
    """The encoder ``name``, unconverted: ``forward(x) -> (f_1, ..., f_n)``, with ``out_channels`` and ``strides``.

    Args:
        name: a name of :func:`backbone_names` (``resnet18`` ... ``resnet152``,
            ``mit_b0`` ... ``mit_b5``), a timm model name (e.g. ``"convnext_atto"``)
            or ``"timm:NAME"`` (timm's model even where cen has one of that name).
        pretrained: ``None`` (random init) or a local weights file. ResNets: also
            ``"imagenet"`` or a torchvision ``WeightsEnum`` (see :func:`build_resnet_encoder`).
            MiT: a state dict of :class:`~cen.models.mit.MixTransformer` or a SegFormer release
            file. timm: a state dict with timm's names (as ``timm.create_model(name).state_dict()``;
            the classifier optional), loaded by timm (``pretrained_cfg_overlay=dict(file=...)``).
        out_indices: timm only: which of the model's feature levels to return
            (default: every level of stride >= 4).
        options: keyword options of the builder (MiT: ``drop_path_rate``, ``in_channels``;
            timm: any ``timm.create_model`` option, e.g. ``drop_path_rate``).

    Errors (one line): an unknown name (listing cen's names and how to list timm's),
    a timm model without ``features_only`` support, a weights file that does not fit
    (naming the file and the first keys that differ), timm missing for a timm name.
    """
    if not isinstance(name, str) or not name:
        raise unknown_backbone_error(name)
    if name.startswith(TIMM_PREFIX):
        return build_timm_encoder(name[len(TIMM_PREFIX) :], pretrained, out_indices=out_indices, **options)
    if name in ENCODERS:
        if out_indices is not None:
            raise ValueError(f"out_indices selects timm feature levels; backbone {name!r} returns all its stages")
        return ENCODERS.get(name)(pretrained, **options)
    timm = _timm_or_none()
    if timm is not None and timm.is_model(name):
        return build_timm_encoder(name, pretrained, out_indices=out_indices, **options)
    raise unknown_backbone_error(name)


# -- timm ---------------------------------------------------------------------------


class TimmEncoder(nn.Module):
    """A timm ``features_only`` model as an encoder: images ``(N, C, H, W)`` -> the chosen feature levels, NCHW.

    Args:
        body: the model ``timm.create_model(name, features_only=True, ...)`` returned.
        levels: positions in ``body``'s output list to return (default: all).

    The body's state dict sits under ``body.`` (norm names for ``cen.convert(exchange=[...])``
    are e.g. ``"body.layer1.0.bn1"``). Feature maps timm gives channels-last (Swin)
    are permuted to ``(N, C, h, w)``.
    """

    def __init__(self, body: nn.Module, levels: Sequence[int] | None = None) -> None:
        super().__init__()
        channels, reductions = list(body.feature_info.channels()), list(body.feature_info.reduction())
        levels = tuple(range(len(channels))) if levels is None else tuple(levels)
        if not levels or not all(0 <= i < len(channels) for i in levels):
            raise ValueError(f"levels must pick from the model's {len(channels)} feature levels, got {levels}")
        self.body = body
        self.levels = levels
        self.out_channels = tuple(int(channels[i]) for i in levels)
        self.strides = tuple(int(reductions[i]) for i in levels)
        fmt = getattr(body, "output_fmt", "NCHW")
        self.channels_last = str(getattr(fmt, "value", fmt)) == "NHWC"

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        features = self.body(x)
        out = tuple(features[i] for i in self.levels)
        if self.channels_last:
            out = tuple(f.permute(0, 3, 1, 2) for f in out)
        return out

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, strides={self.strides}"


def _check_timm_file(timm, name: str, path: str, options: Mapping[str, object]) -> None:
    """Raise a one-line ``ValueError`` unless ``path`` holds a state dict of timm's ``name`` in timm's names."""
    try:
        sd = timm.models.load_state_dict(path)
    except Exception as err:  # truncated zip, foreign pickle, ...
        text = str(err).strip().splitlines()
        raise ValueError(
            f"{path}: cannot read it as a state dict of timm's {name} ({type(err).__name__}: {text[0] if text else ''})"
        ) from None
    if not isinstance(sd, Mapping) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ValueError(f"{path}: expected a state dict {{name: Tensor}} of timm's {name}")
    with torch.device("meta"):  # shapes only, no memory, no weights
        full = timm.create_model(name, pretrained=False, **options)
    classifier = full.pretrained_cfg.get("classifier") or ()
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    optional = {f"{c}.{p}" for c in classifier for p in ("weight", "bias")}
    mismatch = key_mismatch(full.state_dict(), sd, optional=lambda key: key in optional)
    if mismatch:
        raise ValueError(
            f"{path} does not hold timm {name} weights in timm's names (as timm.create_model({name!r}).state_dict() "
            f"saves them): {describe_key_mismatch(mismatch)}"
        )


def build_timm_encoder(
    name: str,
    pretrained: None | str | os.PathLike = None,
    *,
    out_indices: Sequence[int] | None = None,
    **options,
) -> TimmEncoder:
    """timm's ``name`` with ``features_only=True`` as a :class:`TimmEncoder` (see :func:`build_encoder`).

    Without ``out_indices``, the levels of stride >= 4 are returned (timm's models
    usually also give a stride-2 level, which the segmentation decoders do not use).
    """
    timm = _import_timm(f"backbone {name!r} (a timm model)")
    if not timm.is_model(name):
        raise unknown_backbone_error(f"{TIMM_PREFIX}{name}")
    kwargs = dict(options, features_only=True)
    if out_indices is not None:
        kwargs["out_indices"] = tuple(out_indices)
    if pretrained is None:
        kwargs["pretrained"] = False
    elif isinstance(pretrained, (str, os.PathLike)) and pretrained != "imagenet":
        path = os.fspath(pretrained)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"pretrained={path!r} is not an existing file with timm {name} weights")
        _check_timm_file(timm, name, path, options)
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": path})
    else:
        raise ValueError(
            f"pretrained={pretrained!r} for timm's {name}: cen never downloads timm weights; give the path of a "
            "local file holding timm's state dict of the model, or None"
        )
    try:
        body = timm.create_model(name, **kwargs)
    except AttributeError as err:
        if "feature_info" not in str(err):
            raise
        body = None
    if body is None or not hasattr(body, "feature_info"):
        raise ValueError(
            f"timm model {name!r} does not support features_only=True (it declares no feature_info); "
            "pick one that does, e.g. convnext_atto, resnet18, efficientnet_b0"
        )
    levels = None
    if out_indices is None:
        reductions = list(body.feature_info.reduction())
        levels = [i for i, r in enumerate(reductions) if r >= 4] or list(range(len(reductions)))
    return TimmEncoder(body, levels)
