"""The list baseline of benchmarks/bench_core.py computes what the converted stacked model computes.

The benchmark compares the speed of ``cen.convert(resnet, M)`` on a stacked
batch with the reference-style list network; that comparison is only fair if,
given the same weights, both compute the same function. Checked here on small
torchvision ResNets (Bottleneck and BasicBlock), in train mode, with some
gammas under theta so that exchange happens: outputs, input gradients,
parameter gradients and running statistics.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

import cen
from cen.core.norms import _ModalityNorm

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "reference_list_resnet.py"
_spec = importlib.util.spec_from_file_location("reference_list_resnet", _PATH)
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

THETA = 2e-2


def _small_resnet(block) -> ResNet:
    """A torchvision ResNet of ``block``s with narrow layers, so the test is fast (torchvision's own builder)."""
    model = ResNet(block, [1, 1, 1, 1], num_classes=7)
    model.inplanes = 8
    model.conv1 = torch.nn.Conv2d(3, 8, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = torch.nn.BatchNorm2d(8)
    model.layer1 = model._make_layer(block, 4, 1)
    model.layer2 = model._make_layer(block, 8, 2, stride=2)  # its 2nd block has no downsample
    model.layer3 = model._make_layer(block, 8, 1, stride=2)
    model.layer4 = model._make_layer(block, 16, 1, stride=2)
    model.fc = torch.nn.Linear(16 * block.expansion, 7)
    with torch.no_grad():  # non-trivial norm parameters and statistics
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return model.double()


def _shrink_exchanging_gammas(model, fraction=0.3, seed=0):
    """Set a random ``fraction`` of every exchanging norm's ``(M, C)`` gammas under theta (±theta/10)."""
    g = torch.Generator().manual_seed(seed)
    count = 0
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, _ModalityNorm) and mod.exchange:
                gamma = mod.gamma
                pick = torch.rand(gamma.shape, generator=g) < fraction
                sign = torch.where(torch.rand(gamma.shape, generator=g) < 0.5, -1.0, 1.0).to(gamma)
                gamma[pick] = (THETA / 10) * sign[pick]
                count += int(pick.sum())
    assert count > 0


def _pair(block, num_modalities):
    stacked = cen.convert(_small_resnet(block), num_modalities, threshold=THETA)
    _shrink_exchanging_gammas(stacked)
    listed = ref.ListResNet.from_torchvision(stacked, num_modalities, threshold=THETA)
    stacked.train()
    listed.train()
    return stacked, listed


def _inputs(batch, num_modalities, size=48):
    xs = [torch.randn(batch, 3, size, size, dtype=torch.float64) for _ in range(num_modalities)]
    target = torch.randint(0, 7, (batch * num_modalities,))
    return xs, target


def _step(stacked, listed, xs, target):
    num = len(xs)
    xs_s = [x.clone().requires_grad_() for x in xs]
    xs_l = [x.clone().requires_grad_() for x in xs]
    out_s = stacked(cen.stack(xs_s))
    torch.nn.functional.cross_entropy(out_s, target).backward()
    out_l = listed(xs_l)
    per_mod = target.view(-1, num)
    loss_l = sum(torch.nn.functional.cross_entropy(o, per_mod[:, m], reduction="sum") for m, o in enumerate(out_l))
    (loss_l / target.numel()).backward()
    return out_s, out_l, xs_s, xs_l


def _list_counterpart(listed, name):
    """The list-model module(s) holding what ``name`` holds in the stacked model."""
    return listed.get_submodule(name)


@pytest.mark.parametrize(("block", "num_modalities"), [(Bottleneck, 2), (Bottleneck, 3), (BasicBlock, 2)])
def test_list_baseline_matches_converted_model(block, num_modalities):
    stacked, listed = _pair(block, num_modalities)
    xs, target = _inputs(2, num_modalities)
    out_s, out_l, xs_s, xs_l = _step(stacked, listed, xs, target)

    # outputs, row b*M + m of the stacked output is modality m of sample b
    torch.testing.assert_close(out_s.view(2, num_modalities, -1).transpose(0, 1), torch.stack(out_l))
    for a, b in zip(xs_s, xs_l):
        torch.testing.assert_close(a.grad, b.grad)

    checked_norms = checked_convs = 0
    for name, mod in stacked.named_modules():
        if isinstance(mod, _ModalityNorm):
            twin = _list_counterpart(listed, name)
            c = mod.num_features
            for m in range(num_modalities):
                part = slice(m * c, (m + 1) * c)
                bn = twin[m]
                torch.testing.assert_close(mod.weight.grad[part], bn.weight.grad)
                torch.testing.assert_close(mod.bias.grad[part], bn.bias.grad)
                torch.testing.assert_close(mod.running_mean[part], bn.running_mean)
                torch.testing.assert_close(mod.running_var[part], bn.running_var)
            checked_norms += 1
        elif isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            twin = _list_counterpart(listed, name).module
            torch.testing.assert_close(mod.weight.grad, twin.weight.grad)
            checked_convs += 1
    assert checked_norms > 10 and checked_convs > 10


def test_exchange_happens_and_matters():
    """The shrunken gammas make the baseline exchange; with theta = 0 the output differs."""
    stacked, listed = _pair(Bottleneck, 2)
    xs, _ = _inputs(2, 2)
    with torch.no_grad():
        out = listed([x.clone() for x in xs])
        no_exchange = ref.ListResNet.from_torchvision(stacked, 2, threshold=0.0).train()
        out0 = no_exchange([x.clone() for x in xs])
    assert not torch.allclose(out[0], out0[0])


def test_load_from_plain_torchvision_replicates_norms():
    """From an unconverted ResNet every modality gets the same norm, so equal inputs give equal outputs."""
    model = _small_resnet(Bottleneck).eval()
    listed = ref.ListResNet.from_torchvision(model, 2).eval()
    x = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
        out = listed([x, x.clone()])
    torch.testing.assert_close(out[0], expected)
    torch.testing.assert_close(out[1], expected)
