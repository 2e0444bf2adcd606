"""torchvision ResNets as feature encoders for the segmentation models.

:class:`ResNetEncoder` keeps the stem and the four stages of a torchvision
ResNet under their torchvision names (``conv1``, ``bn1``, ``layer1`` ...
``layer4``), drops ``avgpool`` and ``fc``, and returns the four stage outputs.
Weights are loaded into the plain torchvision model *before* it is converted
with :func:`cen.convert`, so every modality's private norms start from the same
(e.g. ImageNet) statistics and scales.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torchvision import models as tvm
from torchvision.models import WeightsEnum

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
    """Return ``name`` if it is a supported backbone, else raise a clear error."""
    if not isinstance(name, str) or name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {list(BACKBONES)}")
    return name


def stage_channels(name: str) -> tuple[int, int, int, int]:
    """Output channels of ``layer1`` .. ``layer4`` of backbone ``name``."""
    expansion = 1 if check_backbone(name) in BASIC_BLOCK_BACKBONES else 4
    return tuple(c * expansion for c in (64, 128, 256, 512))  # type: ignore[return-value]


class ResNetEncoder(nn.Module):
    """The stem and four stages of a torchvision ResNet, returning ``(l1, l2, l3, l4)``.

    Strides 4, 8, 16 and 32 with respect to the input.
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

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        l1 = self.layer1(x)
        l2 = self.layer2(l1)
        l3 = self.layer3(l2)
        l4 = self.layer4(l3)
        return l1, l2, l3, l4


def _imagenet_weights(name: str) -> WeightsEnum:
    # IMAGENET1K_V1 are the weights the reference code starts from
    # (download.pytorch.org/models/resnet101-5d3b4d8f.pth and its siblings).
    return tvm.get_model_weights(name).IMAGENET1K_V1


def _read_state_dict_file(path: str | os.PathLike, backbone: str) -> dict[str, Tensor]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"pretrained={path!r} is neither None, 'imagenet' nor an existing file with {backbone} weights"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, foreign pickle, ...
        raise ValueError(f"{path}: cannot read it as a PyTorch state dict of {backbone} weights ({err})") from err
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a torchvision-style state dict {{name: Tensor}} of {backbone} weights")
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):  # saved from DataParallel
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _load_into(resnet: tvm.ResNet, sd: Mapping[str, Tensor], source: str, backbone: str) -> None:
    """Load a torchvision state dict into ``resnet``; the classifier (``fc``) is optional."""
    own = resnet.state_dict()
    missing = [k for k in own if k not in sd and not k.startswith("fc.")]
    unexpected = [k for k in sd if k not in own]
    wrong = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and sd[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:

        def show(items):
            return f"{items[:8]}{' ...' if len(items) > 8 else ''} ({len(items)})"

        raise ValueError(
            f"{source} does not hold {backbone} weights in torchvision naming: "
            f"missing {show(missing)}, unexpected {show(unexpected)}, shape mismatches {show(wrong)}"
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
