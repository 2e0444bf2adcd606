"""Channels-last layout and bf16 autocast give the fp32 NCHW results, for M = 1..4.

Tolerances: channels-last in fp32 reorders sums only (1e-5 relative). Under bf16 autocast
the convolutions round their inputs and outputs to 8 significant bits (relative error
about 2**-9 per rounding), so a single norm is compared at 2e-2 and a small converted
network (stem + one exchanging block) by the relative error of its outputs at 5e-2 and
of every gradient at 0.15 (and at most twice bf16's own error in NCHW). Deeper networks drift further in bf16 whatever the layout: a plain
torchvision ResNet-18 in train mode at batch 2 has first-layer gradients ~40 % off fp32. The norms' statistics
stay fp32 in every case: the running buffers keep their dtype and match fp32 to 1e-3.
"""

import copy

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

import cen
import cen.core.norms as norms
from cen.core.norms import ModalityBatchNorm2d

CL = torch.channels_last


def _rel(a, b):
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _norm(num):
    torch.manual_seed(num)
    bn = ModalityBatchNorm2d(6, num, exchange=num > 1)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.weight[::4] = bn.threshold / 10  # some channels exchange
        bn.bias.normal_()
    return bn


@pytest.mark.parametrize("split", [False, True], ids=["flat-route", "split-route"])
@pytest.mark.parametrize("num", [1, 2, 3, 4])
def test_norm_in_channels_last_and_bf16_matches_fp32_nchw(num, split, monkeypatch):
    ref = _norm(num)
    x = torch.randn(3 * num, 6, 5, 7) * 3 + 1
    g = torch.randn(3 * num, 6, 5, 7)
    xr = x.clone().requires_grad_()
    y_ref = ref(xr)
    y_ref.backward(g)
    monkeypatch.setattr(norms, "_split_route", lambda: split)

    bn = copy.deepcopy(_norm(num))
    xc = x.contiguous(memory_format=CL).requires_grad_()
    y = bn(xc)
    y.backward(g)
    if split:  # the split route works on a view: no copy, the output keeps the layout
        assert y.is_contiguous(memory_format=CL)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_var, ref.running_var, rtol=1e-6, atol=1e-6)
    for a, b in ((xc.grad, xr.grad), (bn.weight.grad, ref.weight.grad), (bn.bias.grad, ref.bias.grad)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)

    low = _norm(num)
    xb = x.bfloat16().contiguous(memory_format=CL).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yb = low(xb)
    assert yb.dtype == torch.bfloat16 and low.running_mean.dtype == low.running_var.dtype == torch.float32
    yb.backward(g.bfloat16())
    assert _rel(yb, y_ref) < 2e-2
    assert _rel(xb.grad, xr.grad) < 3e-2
    assert _rel(low.weight.grad, ref.weight.grad) < 3e-2 and _rel(low.bias.grad, ref.bias.grad) < 3e-2
    torch.testing.assert_close(low.running_mean, ref.running_mean, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(low.running_var, ref.running_var, rtol=1e-3, atol=1e-3)


def _small_net(num):
    """Stem (conv, norm, ReLU), one exchanging BasicBlock, a 1x1 head: converted for ``num`` modalities."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(inplace=True),
        BasicBlock(16, 16),
        nn.Conv2d(16, 5, 1),
    )
    cen.convert(net, num)
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, ModalityBatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                if mod.exchange:
                    mod.gamma[:, ::5] = mod.threshold / 10
    return net.train()


@pytest.mark.parametrize("num", [1, 2, 3, 4])
def test_converted_network_in_bf16_channels_last_matches_fp32_nchw(num):
    net = _small_net(num)
    x = torch.randn(2 * num, 3, 32, 32)
    target = torch.randn(2 * num, 5, 16, 16)
    ref = copy.deepcopy(net)
    out_ref = ref(x)
    (out_ref - target).square().mean().backward()

    fast = copy.deepcopy(net).to(memory_format=CL)
    assert fast[0].weight.is_contiguous(memory_format=CL)
    xc = x.contiguous(memory_format=CL)
    out = fast(xc)
    (out - target).square().mean().backward()
    assert _rel(out, out_ref) < 1e-4
    for (name, a), b in zip(fast.named_parameters(), ref.parameters()):
        assert _rel(a.grad, b.grad) < 1e-4, name

    low = copy.deepcopy(net).to(memory_format=CL)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = low(xc)
        loss = (out.float() - target).square().mean()
    loss.backward()
    assert out.dtype == torch.bfloat16
    assert _rel(out, out_ref) < 5e-2
    plain_bf16 = copy.deepcopy(net)  # bf16 in NCHW: how far bf16 alone moves the gradients
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (plain_bf16(x).float() - target).square().mean().backward()
    for (name, a), b, c in zip(low.named_parameters(), ref.parameters(), plain_bf16.parameters()):
        assert a.dtype == a.grad.dtype == torch.float32, name
        assert _rel(a.grad, b.grad) < 0.15, name  # the stem's gradient passes two train-mode norms in bf16
        assert _rel(a.grad, b.grad) < 2 * _rel(c.grad, b.grad) + 2e-2, name  # channels-last adds no error of its own
    for a, b in zip(low.buffers(), ref.buffers()):
        assert a.dtype == b.dtype
        if a.is_floating_point():  # running statistics, in fp32
            torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)
