"""The baseline of the core benchmark: a CEN ResNet written "the reference way".

This is how the reference implementation of the paper (yikaiw/CEN) lays a
multimodal ResNet out, rewritten here from its semantics:

* the forward takes a Python **list** of per-modality tensors ``[x_0, ..., x_{M-1}]``
  (each ``(B, C, H, W)``) and returns a list of per-modality logits;
* every shared layer (convolutions, pooling, activations, the classifier) is
  wrapped so that it is **called once per modality** (``ModuleParallel``);
* every BatchNorm is a set of **private modules** ``bn_0, ..., bn_{M-1}``
  (``BatchNorm2dParallel``), each called on its own modality;
* channel exchange (paper Eq. 6) happens after ``bn2`` of every ``Bottleneck``
  (after ``bn1`` of a ``BasicBlock``, matching :func:`cen.convert`), by
  **boolean-mask indexing** with masks recomputed from ``|gamma|`` at every
  call: ``out_m = zeros_like(x_m); out_m[:, keep] = x_m[:, keep];
  out_m[:, ~keep] = other[:, ~keep]``. Each masked read or write is a
  data-dependent ``nonzero``: a host synchronisation on a GPU and a graph break
  under ``torch.compile``.

It is kept only as the "before" of ``benchmarks/bench_core.py`` and for
``tests/core/test_baseline_list.py``, which checks that, given the same weights,
it computes the same function as ``cen.convert(resnet, M)`` on a stacked batch,
so that the timing comparison is fair.

:meth:`ListResNet.from_torchvision` builds it from a torchvision ResNet, either
plain (each BatchNorm's parameters and running statistics copied into every
modality's ``bn_m``) or already converted by :func:`cen.convert` (modality
``m``'s slice ``[m*C:(m+1)*C]`` of each modality norm goes to ``bn_m``).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet


class ModuleParallel(nn.Module):
    """One shared module applied to each modality's tensor in turn."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        return [self.module(x) for x in xs]


class BatchNorm2dParallel(nn.Module):
    """Private ``BatchNorm2d`` per modality: ``bn_0``, ..., ``bn_{M-1}``."""

    def __init__(self, num_features: int, num_modalities: int, **kwargs) -> None:
        super().__init__()
        self.num_modalities = num_modalities
        for m in range(num_modalities):
            setattr(self, f"bn_{m}", nn.BatchNorm2d(num_features, **kwargs))

    def __getitem__(self, m: int) -> nn.BatchNorm2d:
        return getattr(self, f"bn_{m}")

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        return [self[m](x) for m, x in enumerate(xs)]


def mask_exchange(xs: list[Tensor], bns: BatchNorm2dParallel, threshold: float) -> list[Tensor]:
    """Paper Eq. 6 by boolean-mask indexing, masks from the current ``|gamma|``.

    A channel of modality ``m`` whose ``|gamma|`` is under ``threshold`` takes
    the mean of the other modalities at that channel (the other modality
    itself when ``M == 2``).
    """
    num = len(xs)
    if num == 1:
        return xs
    outs = []
    for m, x in enumerate(xs):
        gamma = bns[m].weight.abs()
        keep = gamma >= threshold
        swap = gamma < threshold
        if num == 2:
            other = xs[1 - m]
        else:
            other = sum(xs[k] for k in range(num) if k != m) / (num - 1)
        out = torch.zeros_like(x)
        out[:, keep] = x[:, keep]
        out[:, swap] = other[:, swap]
        outs.append(out)
    return outs


class ListBottleneck(nn.Module):
    """torchvision ``Bottleneck`` on a list of modalities, exchanging after ``bn2``."""

    def __init__(self, block: Bottleneck, num_modalities: int, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold
        self.conv1 = ModuleParallel(copy.deepcopy(block.conv1))
        self.bn1 = _parallel_bn(block.bn1, num_modalities)
        self.conv2 = ModuleParallel(copy.deepcopy(block.conv2))
        self.bn2 = _parallel_bn(block.bn2, num_modalities)
        self.conv3 = ModuleParallel(copy.deepcopy(block.conv3))
        self.bn3 = _parallel_bn(block.bn3, num_modalities)
        self.relu = ModuleParallel(nn.ReLU(inplace=True))
        self.downsample = _parallel_downsample(block.downsample, num_modalities)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        out = self.relu(self.bn1(self.conv1(xs)))
        out = mask_exchange(self.bn2(self.conv2(out)), self.bn2, self.threshold)
        out = self.relu(out)
        out = self.bn3(self.conv3(out))
        identity = xs if self.downsample is None else self.downsample(xs)
        out = [o + i for o, i in zip(out, identity)]
        return self.relu(out)


class ListBasicBlock(nn.Module):
    """torchvision ``BasicBlock`` on a list of modalities, exchanging after ``bn1`` (as :func:`cen.convert`)."""

    def __init__(self, block: BasicBlock, num_modalities: int, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold
        self.conv1 = ModuleParallel(copy.deepcopy(block.conv1))
        self.bn1 = _parallel_bn(block.bn1, num_modalities)
        self.conv2 = ModuleParallel(copy.deepcopy(block.conv2))
        self.bn2 = _parallel_bn(block.bn2, num_modalities)
        self.relu = ModuleParallel(nn.ReLU(inplace=True))
        self.downsample = _parallel_downsample(block.downsample, num_modalities)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        out = mask_exchange(self.bn1(self.conv1(xs)), self.bn1, self.threshold)
        out = self.relu(out)
        out = self.bn2(self.conv2(out))
        identity = xs if self.downsample is None else self.downsample(xs)
        out = [o + i for o, i in zip(out, identity)]
        return self.relu(out)


class ListResNet(nn.Module):
    """A torchvision-shaped ResNet whose forward takes and returns lists of per-modality tensors."""

    def __init__(self, model: ResNet, num_modalities: int, threshold: float = 2e-2) -> None:
        super().__init__()
        if num_modalities < 1:
            raise ValueError(f"num_modalities must be >= 1, got {num_modalities}")
        self.num_modalities = num_modalities
        copy_trunk(self, model, num_modalities, threshold)
        self.avgpool = ModuleParallel(copy.deepcopy(model.avgpool))
        self.fc = ModuleParallel(copy.deepcopy(model.fc))
        self.train(model.training)

    @classmethod
    def from_torchvision(cls, model: ResNet, num_modalities: int, threshold: float = 2e-2) -> ListResNet:
        """Build from a torchvision ResNet, plain or converted by :func:`cen.convert` (weights are copied)."""
        return cls(model, num_modalities, threshold)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        if len(xs) != self.num_modalities:
            raise ValueError(f"expected a list of {self.num_modalities} per-modality tensors, got {len(xs)}")
        xs = self.maxpool(self.relu(self.bn1(self.conv1(list(xs)))))
        xs = self.layer4(self.layer3(self.layer2(self.layer1(xs))))
        xs = self.avgpool(xs)
        return self.fc([torch.flatten(x, 1) for x in xs])


def copy_trunk(target: nn.Module, model: nn.Module, num_modalities: int, threshold: float) -> None:
    """Give ``target`` list-layout copies of ``model``'s stem and ``layer1 .. layer4`` (weights copied).

    ``model`` is a torchvision ResNet or its trunk, plain or converted by :func:`cen.convert`.
    """
    target.conv1 = ModuleParallel(copy.deepcopy(model.conv1))
    target.bn1 = _parallel_bn(model.bn1, num_modalities)
    target.relu = ModuleParallel(nn.ReLU(inplace=True))
    target.maxpool = ModuleParallel(copy.deepcopy(model.maxpool))
    for name in ("layer1", "layer2", "layer3", "layer4"):
        blocks = []
        for block in getattr(model, name):
            if isinstance(block, Bottleneck):
                blocks.append(ListBottleneck(block, num_modalities, threshold))
            elif isinstance(block, BasicBlock):
                blocks.append(ListBasicBlock(block, num_modalities, threshold))
            else:
                raise TypeError(f"{name} holds a {type(block).__name__}; expected torchvision Bottleneck/BasicBlock")
        setattr(target, name, nn.Sequential(*blocks))


def _parallel_bn(norm: nn.Module, num_modalities: int) -> BatchNorm2dParallel:
    """Private per-modality copies of ``norm`` (a BatchNorm2d, or a cen modality norm whose slices are taken)."""
    per_modality = getattr(norm, "num_modalities", None)
    if per_modality is not None and per_modality != num_modalities:
        raise ValueError(f"norm has {per_modality} modalities, expected {num_modalities}")
    out = BatchNorm2dParallel(
        norm.num_features,
        num_modalities,
        eps=norm.eps,
        momentum=norm.momentum,
        affine=norm.affine,
        track_running_stats=norm.track_running_stats,
    )
    ref = next(iter(norm.parameters()), None)
    if ref is not None:
        out.to(device=ref.device, dtype=ref.dtype)
    c = norm.num_features
    with torch.no_grad():
        for m in range(num_modalities):
            bn = out[m]
            part = slice(m * c, (m + 1) * c) if per_modality is not None else slice(0, c)
            if norm.affine:
                bn.weight.copy_(norm.weight[part])
                bn.bias.copy_(norm.bias[part])
            if norm.track_running_stats:
                bn.running_mean.copy_(norm.running_mean[part])
                bn.running_var.copy_(norm.running_var[part])
                bn.num_batches_tracked.copy_(norm.num_batches_tracked)
    return out


def _parallel_downsample(downsample: nn.Module | None, num_modalities: int) -> nn.Module | None:
    if downsample is None:
        return None
    conv, norm = downsample[0], downsample[1]
    return nn.Sequential(ModuleParallel(copy.deepcopy(conv)), _parallel_bn(norm, num_modalities))
