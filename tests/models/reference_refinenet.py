"""An independent re-implementation of the reference CEN RefineNet, in the reference's own style.

Written for the tests from the reference's description, not from our model: a
Python list with one tensor per modality flows through the network; every
shared layer is wrapped so that it is called once per modality (parameters
under ``<name>.module.``); every norm is a container of per-modality
``BatchNorm2d`` named ``bn_0``, ``bn_1``; the exchange after a bottleneck's
``bn2`` writes channels by boolean-mask indexing; ReLUs are in place (which
makes the residual of a residual conv unit its ReLU'd input, as in the
reference); the ensemble is ``softmax(alpha)``-weighted over detached outputs.
Its state dict uses the reference's key names, so the tests can compare them
with ``tests/fixtures/reference/cen_official_refinenet101_nyudv2_keys.tsv``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PerModality(nn.Module):
    """Apply one shared module to every tensor of the list."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, xs):
        return [self.module(x) for x in xs]


class PerModalityBN(nn.Module):
    def __init__(self, channels: int, num: int) -> None:
        super().__init__()
        for i in range(num):
            self.add_module(f"bn_{i}", nn.BatchNorm2d(channels))
        self.num = num

    def forward(self, xs):
        return [getattr(self, f"bn_{i}")(x) for i, x in enumerate(xs)]


def masked_exchange(xs, bns, threshold):
    """Two modalities: channels with a small |gamma| are taken from the other one."""
    g0, g1 = bns[0].weight.abs(), bns[1].weight.abs()
    y0, y1 = torch.zeros_like(xs[0]), torch.zeros_like(xs[1])
    y0[:, g0 >= threshold] = xs[0][:, g0 >= threshold]
    y0[:, g0 < threshold] = xs[1][:, g0 < threshold]
    y1[:, g1 >= threshold] = xs[1][:, g1 >= threshold]
    y1[:, g1 < threshold] = xs[0][:, g1 < threshold]
    return [y0, y1]


def shared_conv(cin, cout, k=3, stride=1, bias=False):
    return PerModality(nn.Conv2d(cin, cout, kernel_size=k, stride=stride, padding=k // 2, bias=bias))


class RefBottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, num, threshold, stride=1, downsample=None):
        super().__init__()
        self.conv1 = shared_conv(cin, planes, k=1)
        self.bn1 = PerModalityBN(planes, num)
        self.conv2 = shared_conv(planes, planes, k=3, stride=stride)
        self.bn2 = PerModalityBN(planes, num)
        self.conv3 = shared_conv(planes, planes * 4, k=1)
        self.bn3 = PerModalityBN(planes * 4, num)
        self.relu = PerModality(nn.ReLU(inplace=True))
        self.downsample = downsample
        self.num = num
        self.threshold = threshold

    def forward(self, xs):
        out = self.relu(self.bn1(self.conv1(xs)))
        out = self.bn2(self.conv2(out))
        if len(xs) > 1:
            out = masked_exchange(out, [self.bn2.bn_0, self.bn2.bn_1], self.threshold)
        out = self.relu(out)
        out = self.bn3(self.conv3(out))
        res = self.downsample(xs) if self.downsample is not None else xs
        return self.relu([o + r for o, r in zip(out, res)])


class RefCRP(nn.Module):
    def __init__(self, cin, cout, stages, num):
        super().__init__()
        for i in range(stages):
            self.add_module(f"{i + 1}_outvar_dimred", shared_conv(cin if i == 0 else cout, cout))
        self.stages = stages
        self.pool = PerModality(nn.MaxPool2d(5, stride=1, padding=2))

    def forward(self, xs):
        top = xs
        for i in range(self.stages):
            top = getattr(self, f"{i + 1}_outvar_dimred")(self.pool(top))
            xs = [x + t for x, t in zip(xs, top)]
        return xs


class RefRCU(nn.Module):
    def __init__(self, cin, cout, blocks, stages, num):
        super().__init__()
        suffix = {0: "_conv", 1: "_conv_relu_varout_dimred"}
        for i in range(blocks):
            for j in range(stages):
                self.add_module(
                    f"{i + 1}{suffix[j]}", shared_conv(cin if i == 0 and j == 0 else cout, cout, bias=(j == 0))
                )
        self.blocks, self.stages, self.suffix = blocks, stages, suffix
        self.relu = PerModality(nn.ReLU(inplace=True))

    def forward(self, xs):
        for i in range(self.blocks):
            residual = xs  # the same tensors: the in-place ReLU below also changes them
            for j in range(self.stages):
                xs = self.relu(xs)
                xs = getattr(self, f"{i + 1}{self.suffix[j]}")(xs)
            xs = [x + r for x, r in zip(xs, residual)]
        return xs


def _seq(module):
    return nn.Sequential(module)


class RefRefineNet(nn.Module):
    """Reference-style RefineNet on bottleneck ResNets; ``forward(list) -> (outputs + [ensemble], alpha_soft)``."""

    def __init__(self, layers=(3, 4, 6, 3), num=2, num_classes=40, threshold=2e-2, widths=(512, 256, 256, 256)):
        super().__init__()
        self.num = num
        self.inplanes = 64
        self.dropout = PerModality(nn.Dropout(p=0.5))
        self.conv1 = PerModality(nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False))
        self.bn1 = PerModalityBN(64, num)
        self.relu = PerModality(nn.ReLU(inplace=True))
        self.maxpool = PerModality(nn.MaxPool2d(3, stride=2, padding=1))
        self.layer1 = self._layer(64, layers[0], threshold)
        self.layer2 = self._layer(128, layers[1], threshold, stride=2)
        self.layer3 = self._layer(256, layers[2], threshold, stride=2)
        self.layer4 = self._layer(512, layers[3], threshold, stride=2)
        w1, w2, w3, w4 = widths  # the reference: 512, 256, 256, 256
        self.p_ims1d2_outl1_dimred = shared_conv(2048, w1)
        self.adapt_stage1_b = _seq(RefRCU(w1, w1, 2, 2, num))
        self.mflow_conv_g1_pool = _seq(RefCRP(w1, w1, 4, num))
        self.mflow_conv_g1_b = _seq(RefRCU(w1, w1, 3, 2, num))
        self.mflow_conv_g1_b3_joint_varout_dimred = shared_conv(w1, w2)
        for stage, cin, w, w_next in ((2, 1024, w2, w3), (3, 512, w3, w4), (4, 256, w4, None)):
            setattr(self, f"p_ims1d2_outl{stage}_dimred", shared_conv(cin, w))
            setattr(self, f"adapt_stage{stage}_b", _seq(RefRCU(w, w, 2, 2, num)))
            setattr(self, f"adapt_stage{stage}_b2_joint_varout_dimred", shared_conv(w, w))
            setattr(self, f"mflow_conv_g{stage}_pool", _seq(RefCRP(w, w, 4, num)))
            setattr(self, f"mflow_conv_g{stage}_b", _seq(RefRCU(w, w, 3, 2, num)))
            if w_next is not None:
                setattr(self, f"mflow_conv_g{stage}_b3_joint_varout_dimred", shared_conv(w, w_next))
        self.clf_conv = shared_conv(w4, num_classes, bias=True)
        self.alpha = nn.Parameter(torch.ones(num))

    def _layer(self, planes, blocks, threshold, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                shared_conv(self.inplanes, planes * 4, k=1, stride=stride), PerModalityBN(planes * 4, self.num)
            )
        mods = [RefBottleneck(self.inplanes, planes, self.num, threshold, stride, downsample)]
        self.inplanes = planes * 4
        mods += [RefBottleneck(self.inplanes, planes, self.num, threshold) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    @staticmethod
    def _up(xs, like):
        return [F.interpolate(x, size=like[0].shape[2:], mode="bilinear", align_corners=True) for x in xs]

    def forward(self, xs):
        xs = self.maxpool(self.relu(self.bn1(self.conv1(xs))))
        l1 = self.layer1(xs)
        l2 = self.layer2(l1)
        l3 = self.layer3(l2)
        l4 = self.layer4(l3)
        l4 = self.dropout(l4)
        l3 = self.dropout(l3)

        x = self.adapt_stage1_b(self.p_ims1d2_outl1_dimred(l4))
        x = self.relu(x)
        x = self.mflow_conv_g1_b(self.mflow_conv_g1_pool(x))
        x = self._up(self.mflow_conv_g1_b3_joint_varout_dimred(x), l3)
        for stage, skip, nxt in ((2, l3, l2), (3, l2, l1), (4, l1, None)):
            y = getattr(self, f"p_ims1d2_outl{stage}_dimred")(skip)
            y = getattr(self, f"adapt_stage{stage}_b")(y)
            y = getattr(self, f"adapt_stage{stage}_b2_joint_varout_dimred")(y)
            x = self.relu([a + b for a, b in zip(y, x)])
            x = getattr(self, f"mflow_conv_g{stage}_pool")(x)
            x = getattr(self, f"mflow_conv_g{stage}_b")(x)
            if nxt is not None:
                x = self._up(getattr(self, f"mflow_conv_g{stage}_b3_joint_varout_dimred")(x), nxt)
        x = self.dropout(x)
        outs = self.clf_conv(x)
        weights = F.softmax(self.alpha, dim=0)
        ens = sum(weights[i] * outs[i].detach() for i in range(self.num))
        return outs + [ens], weights
