"""The CEN pix2pix U-Net: reference sizes, structure, exchange, ensemble, inputs it refuses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cen
from cen.core.defaults import ENSEMBLE_KEY, TRANSLATION_THRESHOLD
from cen.core.norms import ModalityInstanceNorm2d
from cen.core.unshared import ModalityConv2d
from cen.models import UNetCEN, UNetGenerator, count_parameters

NAMES = ("reshading", "edge_texture")


def _inputs(names=NAMES, batch=2, size=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand(batch, 3, size, size, generator=gen) * 2 - 1 for n in names}


# -- sizes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "expected"), [(NAMES, 54_429_317), (("depth_zbuffer", "normal", "edge_texture"), 54_439_174)]
)
def test_parameter_counts_equal_the_references_applied_parameters(names, expected):
    with torch.device("meta"):
        model = UNetCEN(names)
    assert count_parameters(model) == expected


def test_unimodal_generator_is_the_plain_unet_plus_nothing():
    with torch.device("meta"):
        plain = UNetGenerator()
        single = UNetCEN(("reshading",))
    assert single.ensemble is None
    assert count_parameters(single) == count_parameters(plain)


# -- structure ----------------------------------------------------------------------


@pytest.mark.parametrize("num_downs", [8, 6, 5, 3])
def test_norms_exchange_and_dropout_are_where_the_reference_puts_them(num_downs):
    with torch.device("meta"):
        model = UNetCEN(NAMES, ngf=4, num_downs=num_downs)
    gen = model.generator
    n = num_downs
    has_norm = [b.norm is not None for b in gen.down]
    assert has_norm == [False] + [True] * (n - 2) + [False]
    exchanging = [i for i, b in enumerate(gen.down) if b.norm is not None and b.norm.exchange]
    assert exchanging == list(range(1, n - 1))  # blocks 2 .. n-1 (1-based), i.e. 2-7 with 8 levels
    assert [b.norm is not None for b in gen.up] == [True] * (n - 1) + [False]
    assert not any(b.norm.exchange for b in gen.up if b.norm is not None)
    assert all(
        isinstance(m, ModalityInstanceNorm2d) and m.num_modalities == 2
        for m in gen.modules()
        if "Norm" in type(m).__name__
    )
    dropout = [b.dropout is not None for b in gen.up]
    assert dropout == [j < min(3, n - 1) for j in range(n)]
    assert all(b.dropout.p == 0.5 for b in gen.up if b.dropout is not None)
    assert all(m.threshold == TRANSLATION_THRESHOLD for m in gen.modules() if isinstance(m, ModalityInstanceNorm2d))


def test_plain_generator_runs_alone_and_its_conversion_is_unetcen():
    torch.manual_seed(0)
    plain = UNetGenerator(in_channels=2, out_channels=1, ngf=4, num_downs=4, dropout=0.0).eval()
    x = torch.randn(3, 2, 32, 32)
    with torch.no_grad():
        y = plain(x)
    assert y.shape == (3, 1, 32, 32) and y.abs().max() <= 1
    assert plain.exchange_norm_names() == ["down.1.norm", "down.2.norm"]
    # One input through UNetCEN with the plain weights (every norm slot a copy) is the plain generator.
    model = UNetCEN(("depth_zbuffer",), in_channels=2, out_channels=1, ngf=4, num_downs=4, dropout=0.0).eval()
    model.generator.load_state_dict(plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model({"depth_zbuffer": x})["depth_zbuffer"], y)
    with pytest.raises(ValueError, match="image size 40x32 .* multiples of 16"):
        plain(torch.zeros(1, 2, 40, 32))


def test_reference_widths():
    with torch.device("meta"):
        gen = UNetGenerator()
    assert [b.conv.out_channels for b in gen.down] == [64, 128, 256, 512, 512, 512, 512, 512]
    assert [b.conv.in_channels for b in gen.up] == [512, 1024, 1024, 1024, 1024, 512, 256, 128]
    assert [b.conv.out_channels for b in gen.up] == [512, 512, 512, 512, 256, 128, 64, 3]
    assert isinstance(gen.up[0].conv, nn.ConvTranspose2d)


# -- forward --------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "num_downs"), [(64, 6), (96, 5), (256, 8)])
def test_outputs_per_input_and_ensemble(size, num_downs):
    torch.manual_seed(0)
    model = UNetCEN(NAMES, ngf=4, num_downs=num_downs).eval()
    with torch.no_grad():
        model.ensemble.alpha.copy_(torch.tensor([0.7, -0.4]))
        out = model(_inputs(size=size))
    assert list(out) == [*NAMES, ENSEMBLE_KEY]
    for v in out.values():
        assert v.shape == (2, 3, size, size)
        assert v.abs().max() <= 1  # tanh
    w = torch.softmax(torch.tensor([0.7, -0.4]), 0)
    torch.testing.assert_close(out[ENSEMBLE_KEY], w[0] * out[NAMES[0]] + w[1] * out[NAMES[1]])


def test_branches_share_convolutions_but_not_norms():
    """Each branch equals the plain U-Net with that input's norm slot; exchange makes a branch see the other input."""
    torch.manual_seed(0)
    # Train mode (instance statistics) without dropout: deterministic, and every channel normalised.
    model = UNetCEN(NAMES, ngf=4, num_downs=6, exchange=False, dropout=0.0).train()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ModalityInstanceNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
    x = _inputs()
    other = dict(x, edge_texture=torch.randn(2, 3, 64, 64))
    with torch.no_grad():
        a, b = model(x), model(other)
    torch.testing.assert_close(a["reshading"], b["reshading"])  # no exchange: branch 0 ignores input 1
    assert not torch.allclose(a["edge_texture"], b["edge_texture"])

    exchanging = UNetCEN(NAMES, ngf=4, num_downs=6, dropout=0.0).train()
    exchanging.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(exchanging(x)["reshading"], a["reshading"])  # all |gamma| >= theta: nothing moves
        norm = exchanging.generator.down[2].norm
        norm.gamma[0, :3] = TRANSLATION_THRESHOLD / 2  # input 0 takes 3 channels of input 1 there
        c, d = exchanging(x), exchanging(other)
    assert not torch.allclose(c["reshading"], d["reshading"])


def test_ensemble_trains_alpha_only_and_branches_train_the_generator():
    torch.manual_seed(0)
    model = UNetCEN(NAMES, ngf=4, num_downs=5).train()
    out = model(_inputs(size=32))
    out[ENSEMBLE_KEY].abs().mean().backward(retain_graph=True)
    assert model.ensemble.alpha.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.generator.parameters())
    model.zero_grad()
    (out["reshading"].abs().mean() + out["edge_texture"].abs().mean()).backward()
    missing = [n for n, p in model.generator.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_missing_input_at_inference():
    torch.manual_seed(0)
    model = UNetCEN(NAMES, ngf=4, num_downs=5).eval()
    x = _inputs(size=32)
    with torch.no_grad():
        only = model({"edge_texture": x["edge_texture"]})
    assert list(only) == ["edge_texture", ENSEMBLE_KEY]
    torch.testing.assert_close(only[ENSEMBLE_KEY], only["edge_texture"])
    with pytest.raises(ValueError, match="missing"):
        model.train()({"edge_texture": x["edge_texture"]})


# -- bad input -------------------------------------------------------------------------


def test_sizes_the_depth_cannot_halve_are_refused():
    model = UNetCEN(NAMES, ngf=4, num_downs=5)
    with pytest.raises(ValueError, match=r"image size 48x48 .*num_downs=5 .*multiples of 32"):
        model(_inputs(size=48))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\), got shape \(4, 1, 32, 32\)"):
        model({n: torch.zeros(2, 1, 32, 32) for n in NAMES})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_downs": 2}, "num_downs must be an int >= 3"),
        ({"ngf": 0}, "ngf must be an int >= 1"),
        ({"threshold": -1.0}, "threshold must be >= 0"),
        ({"dropout": 1.0}, r"dropout must be a probability in \[0, 1\)"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNetCEN(NAMES, **kwargs)


def test_config_records_the_arguments():
    model = UNetCEN(NAMES, ngf=8, num_downs=6, threshold=3e-2, ensemble=False)
    assert model.config == {
        "modalities": list(NAMES),
        "in_channels": 3,
        "out_channels": 3,
        "ngf": 8,
        "num_downs": 6,
        "spec": {"strategy": "exchange", "options": {}, "threshold": 3e-2, "points": "auto", "shared_convs": True},
        "ensemble": False,
        "dropout": 0.5,
        "head": "ensemble",
    }
    assert model.ensemble is None
    again = UNetCEN(**model.config)
    again.load_state_dict(model.state_dict(), strict=True)
    assert again.config == model.config


# -- fusion strategies ------------------------------------------------------------------


@pytest.mark.parametrize("fusion", cen.fusion_names())
def test_every_fusion_builds_a_working_generator(fusion):
    torch.manual_seed(0)
    model = UNetCEN(NAMES, ngf=8, num_downs=4, fusion=fusion).train()
    gen = model.generator
    points = {name: m.fusion.name for name, m in gen.named_modules() if getattr(m, "fusion", None) is not None}
    assert points == {"down.1.norm": fusion, "down.2.norm": fusion}
    assert model.config["spec"]["strategy"] == fusion
    out = model(_inputs(size=32))
    assert all(v.shape == (2, 3, 32, 32) and torch.isfinite(v).all() for v in out.values())
    sum(out[n].abs().mean() for n in NAMES).backward()
    assert [n for n, p in gen.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()] == []
    assert gen.down[1].conv.weight.grad.abs().sum() > 0


def test_fusion_options_and_unshared_convolutions_reach_the_generator():
    torch.manual_seed(0)
    model = UNetCEN(NAMES, ngf=8, num_downs=4, fusion="fixed", fusion_options={"fraction": 0.25}, shared_convs=False)
    gen = model.generator
    assert cen.exchange_stats(gen) == {"down.1.norm": [0.25, 0.25], "down.2.norm": [0.25, 0.25]}
    # Down-convolutions become one grouped convolution with a slot per input; transposed ones stay shared.
    assert all(isinstance(b.conv, ModalityConv2d) for b in gen.down)
    assert gen.down[1].conv.weight.shape == (2 * 16, 8, 4, 4)
    assert all(type(b.conv) is nn.ConvTranspose2d for b in gen.up)
    assert (model.config["spec"]["options"], model.config["spec"]["shared_convs"]) == ({"fraction": 0.25}, False)
    out = model(_inputs(size=32))
    out[NAMES[1]].abs().mean().backward()
    w = gen.down[1].conv.weight.grad.view(2, 16, 8, 4, 4)
    assert w[1].abs().sum() > 0 and w[0].abs().sum() > 0  # input 0's kernel reaches output 1 through the exchange
    with pytest.raises(ValueError, match="unknown fusion 'bogus'; known: exchange"):
        UNetCEN(NAMES, ngf=4, num_downs=3, fusion="bogus")
