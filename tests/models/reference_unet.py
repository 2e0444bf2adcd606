"""An independent re-implementation of the reference CEN translation generator, in the reference's own style.

Written for the tests from the facts about the reference (its published architecture),
not from our model: a Python list with one tensor per input flows through the
network; every shared layer is wrapped so that it is called once per input
(parameters under ``<name>.module.``); every norm is a container of per-input
``InstanceNorm2d(affine=True, track_running_stats=True)`` named ``insnorm_0``,
``insnorm_1``; blocks are pre-activated with *in-place* LeakyReLU 0.2 (down) or
ReLU (up); the exchange after the norm of ``conv2`` .. ``conv7`` writes channels
by boolean-mask indexing (two inputs only, as the reference); ``conv1``,
``conv8`` and ``deconv8`` build norms they never apply; dropout 0.5 after
``deconv1`` .. ``deconv3``; ``tanh``; the ensemble is ``softmax(alpha)``-weighted
over detached outputs. Its state dict uses the reference's key names, so the
tests can compare them with
``tests/fixtures/reference/cen_official_translation_generator_2inputs_keys.tsv``.
"""

from __future__ import annotations

import torch
from torch import nn


class PerInput(nn.Module):
    """Apply one shared module to every tensor of the list."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, xs):
        return [self.module(x) for x in xs]


class PerInputInstanceNorm(nn.Module):
    def __init__(self, channels: int, num: int) -> None:
        super().__init__()
        for i in range(num):
            self.add_module(f"insnorm_{i}", nn.InstanceNorm2d(channels, affine=True, track_running_stats=True))
        self.num = num

    def norms(self):
        return [getattr(self, f"insnorm_{i}") for i in range(self.num)]

    def forward(self, xs):
        return [norm(x) for norm, x in zip(self.norms(), xs)]


def masked_exchange(xs, norms, threshold):
    """Two inputs: channels with a small |gamma| are taken from the other one."""
    g0, g1 = norms[0].weight.abs(), norms[1].weight.abs()
    y0, y1 = torch.zeros_like(xs[0]), torch.zeros_like(xs[1])
    y0[:, g0 >= threshold] = xs[0][:, g0 >= threshold]
    y0[:, g0 < threshold] = xs[1][:, g0 < threshold]
    y1[:, g1 >= threshold] = xs[1][:, g1 >= threshold]
    y1[:, g1 < threshold] = xs[0][:, g1 < threshold]
    return [y0, y1]


class RefConvBlock(nn.Module):
    def __init__(self, cin, cout, num, threshold, *, activation=True, apply_norm=True, exchange=True):
        super().__init__()
        self.conv = PerInput(nn.Conv2d(cin, cout, 4, 2, 1))
        self.lrelu = PerInput(nn.LeakyReLU(0.2, inplace=True))
        self.insnorm_conv = PerInputInstanceNorm(cout, num)  # built even where it is never applied
        self.activation, self.apply_norm, self.exchange = activation, apply_norm, exchange
        self.threshold = threshold

    def forward(self, xs):
        out = self.conv(self.lrelu(xs) if self.activation else xs)
        if self.apply_norm:
            out = self.insnorm_conv(out)
            if self.exchange and len(out) > 1:
                out = masked_exchange(out, self.insnorm_conv.norms(), self.threshold)
        return out


class RefDeconvBlock(nn.Module):
    def __init__(self, cin, cout, num, *, apply_norm=True, dropout=False):
        super().__init__()
        self.deconv = PerInput(nn.ConvTranspose2d(cin, cout, 4, 2, 1))
        self.relu = PerInput(nn.ReLU(inplace=True))
        self.insnorm_deconv = PerInputInstanceNorm(cout, num)
        self.drop = PerInput(nn.Dropout(0.5))
        self.apply_norm, self.dropout = apply_norm, dropout

    def forward(self, xs):
        out = self.deconv(self.relu(xs))
        if self.apply_norm:
            out = self.insnorm_deconv(out)
        return self.drop(out) if self.dropout else out


class RefUNetGenerator(nn.Module):
    """The reference generator: 8 down, 8 up, list in, ``(list of outputs, ensemble)`` out."""

    def __init__(self, num=2, in_channels=3, out_channels=3, ngf=64, threshold=1e-2):
        super().__init__()
        if num > 2:
            raise NotImplementedError("the reference exchange is written for two inputs")
        w = [ngf, ngf * 2, ngf * 4, ngf * 8, ngf * 8, ngf * 8, ngf * 8, ngf * 8]
        self.conv1 = RefConvBlock(in_channels, w[0], num, threshold, activation=False, apply_norm=False)
        for k in range(2, 8):
            self.add_module(f"conv{k}", RefConvBlock(w[k - 2], w[k - 1], num, threshold))
        self.conv8 = RefConvBlock(w[6], w[7], num, threshold, apply_norm=False)
        self.deconv1 = RefDeconvBlock(w[7], w[6], num, dropout=True)
        for k in range(2, 8):  # deconv k takes deconv k-1 (width w[8-k]) + conv 8-k (width w[8-k])
            self.add_module(f"deconv{k}", RefDeconvBlock(2 * w[8 - k], w[7 - k], num, dropout=k <= 3))
        self.deconv8 = RefDeconvBlock(2 * w[0], out_channels, num, apply_norm=False)
        self.alpha = nn.Parameter(torch.ones(num))

    def forward(self, xs):
        enc = [self.conv1(xs)]
        for k in range(2, 9):
            enc.append(getattr(self, f"conv{k}")(enc[-1]))
        dec = self.deconv1(enc[7])
        for k in range(2, 9):
            skip = enc[8 - k]
            dec = getattr(self, f"deconv{k}")([torch.cat([d, s], 1) for d, s in zip(dec, skip)])
        outs = [torch.tanh(d) for d in dec]
        soft = torch.softmax(self.alpha, dim=0)
        ens = sum(soft[i] * o.detach() for i, o in enumerate(outs))
        return outs, ens
