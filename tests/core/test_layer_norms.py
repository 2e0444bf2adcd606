"""The modality LayerNorm / LayerNorm2d / GroupNorm equal a per-modality loop of plain norms, in outputs and gradients.

Every layout (channels-last tokens and maps, channels-first maps, group norm), M = 1..4,
with and without a fusion, train and eval mode, and a missing modality at inference.
The reference normalises each modality with its own ``F.layer_norm`` / ``F.group_norm``
call and applies the strategies' formulas from ``tests/core/test_fusions.py``.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cen
from cen.nn import ModalityGroupNorm, ModalityLayerNorm, ModalityLayerNorm2d
from tests.core.reference_impl import join, split
from tests.core.test_fusions import THETA, VARIANTS, reference

CHANNELS = 6
GROUPS = 3
# name: (builder, per-modality input shape without the batch, channels last?, reference kind)
LAYOUTS = {
    "tokens": (lambda c, m, **kw: ModalityLayerNorm(c, m, **kw), (5, CHANNELS), True, "layer"),
    "maps_last": (lambda c, m, **kw: ModalityLayerNorm(c, m, **kw), (3, 4, CHANNELS), True, "layer"),
    "pooled": (lambda c, m, **kw: ModalityLayerNorm(c, m, **kw), (CHANNELS,), True, "layer"),
    "layer2d": (lambda c, m, **kw: ModalityLayerNorm2d(c, m, **kw), (CHANNELS, 3, 4), False, "layer"),
    "group": (lambda c, m, **kw: ModalityGroupNorm(GROUPS, c, m, **kw), (CHANNELS, 3, 4), False, "group"),
}


def _normalise(xs, norm, kind):
    """Per-modality normalisation without affine, channels first (B, C, *S), one plain call each."""
    if kind == "group":
        return [F.group_norm(xm, norm.num_groups, None, None, norm.eps) for xm in xs]
    return [F.layer_norm(xm.movedim(1, -1), (norm.num_features,), None, None, norm.eps).movedim(-1, 1) for xm in xs]


def _plain_reference(norm, params, x, idx, kind, channels_last):
    """No fusion: each modality through its own F.layer_norm / F.group_norm with its own gamma and beta."""
    channels, outs = norm.num_features, []
    for p, xm in zip(idx, split(x, len(idx))):
        weight = params["weight"][p * channels : (p + 1) * channels]
        bias = params["bias"][p * channels : (p + 1) * channels]
        if kind == "group":
            outs.append(F.group_norm(xm, norm.num_groups, weight, bias, norm.eps))
        elif channels_last:
            outs.append(F.layer_norm(xm, (channels,), weight, bias, norm.eps))
        else:
            outs.append(F.layer_norm(xm.movedim(1, -1), (channels,), weight, bias, norm.eps).movedim(-1, 1))
    return join(outs)


def _make(layout, num, fusion=None, options=None):
    build = LAYOUTS[layout][0]
    norm = build(CHANNELS, num, fusion=fusion, fusion_options=options, threshold=THETA)
    with torch.no_grad():
        norm.weight.uniform_(-1.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
        norm.gamma[:, 0] = 0.01  # every modality gives up channel 0
        norm.gamma[torch.rand_like(norm.gamma) < 0.3] = -0.02
        if fusion is not None:
            for p in norm.fusion.parameters():
                p.normal_(0, 0.5)
            if fusion == "token":
                norm.fusion.score_out.bias.fill_(-3.0)
    return norm.double()


def _check(layout, num, training, variant=None, present=None, batch=3):
    torch.manual_seed(0)
    _, shape, channels_last, kind = LAYOUTS[layout]
    fusion, options = VARIANTS[variant] if variant else (None, None)
    norm = _make(layout, num, fusion, options).train(training)
    idx = list(range(num)) if present is None else list(present)
    x = torch.randn(batch * len(idx), *shape, dtype=torch.float64, requires_grad=True)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in norm.named_parameters()}
    torch.manual_seed(7)
    if present is None:
        out = norm(x)
    else:
        with cen.present_modalities(present):
            out = norm(x)
    torch.manual_seed(7)
    scores = torch.rand(CHANNELS)  # the draw a random exchange makes in training
    x_ref = x.detach().clone().requires_grad_(True)
    if variant is None:
        ref = _plain_reference(norm, params, x_ref, idx, kind, channels_last)
    else:
        normalise = lambda xs, norm_, idx_, kind_, training_: _normalise(xs, norm_, kind)  # noqa: E731
        ref = reference(variant, norm, params, x_ref, idx, kind, training, scores, channels_last=channels_last,
                        normalise=normalise)  # fmt: skip
    assert out.shape == x.shape
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad)
    for name, p in norm.named_parameters():
        expected = params[name].grad
        if p.grad is None:
            assert expected is None or not expected.any(), name
        else:
            torch.testing.assert_close(p.grad, expected if expected is not None else torch.zeros_like(p), msg=name)
    return norm, out


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("num", [1, 2, 3, 4])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("variant", [None, "exchange"])
def test_norm_matches_per_modality_loop(layout, num, training, variant):
    _check(layout, num, training, variant)


STRATEGIES = [v for v in VARIANTS if v not in ("exchange",)]


@pytest.mark.parametrize("layout", ["tokens", "layer2d", "group"])
@pytest.mark.parametrize("variant", STRATEGIES)
@pytest.mark.parametrize("training", [True, False])
def test_every_strategy_matches_its_formula(layout, variant, training):
    _check(layout, 3, training, variant)


@pytest.mark.parametrize("layout", ["tokens", "maps_last", "layer2d", "group"])
@pytest.mark.parametrize("variant", [None, *(v for v in VARIANTS if v != "gated_sum")])
@pytest.mark.parametrize("present", [(0, 2), (1,)])
def test_missing_modality_at_inference(layout, variant, present):
    _check(layout, 3, False, variant, present=present)


def test_missing_modality_is_refused_in_training_and_gated_sum_needs_all():
    norm = _make("tokens", 3)
    with cen.present_modalities((0, 2)), pytest.raises(RuntimeError, match="only at inference"):
        norm.train()(torch.randn(4, 5, CHANNELS, dtype=torch.float64))
    gated = _make("tokens", 3, "gated_sum").eval()
    with cen.present_modalities((0, 2)), pytest.raises(ValueError, match="'gated_sum' reads every modality"):
        gated(torch.randn(4, 5, CHANNELS, dtype=torch.float64))


def test_exchange_really_moves_channels_across_modalities():
    norm = _make("maps_last", 2, "exchange").eval()
    plain = _make("maps_last", 2).eval()
    plain.load_state_dict(norm.state_dict(), strict=False)
    x = torch.randn(6, 3, 4, CHANNELS, dtype=torch.float64)
    out, base = norm(x).view(3, 2, 3, 4, CHANNELS), plain(x).view(3, 2, 3, 4, CHANNELS)
    mask = norm.exchange_mask()
    assert mask[0].any() and not mask.all()
    torch.testing.assert_close(out[:, 0, ..., mask[0]], base[:, 1, ..., mask[0]])
    torch.testing.assert_close(out[:, 0, ..., ~mask[0]], base[:, 0, ..., ~mask[0]])


def test_parameters_are_private_per_modality_and_match_the_batch_norms_layout():
    norm = ModalityLayerNorm(4, 3)
    assert norm.weight.shape == norm.bias.shape == (12,) and norm.gamma.shape == (3, 4)
    assert norm.running_mean is None and norm.gamma.data_ptr() == norm.weight.data_ptr()
    group = ModalityGroupNorm(2, 4, 3)
    assert group.gamma.shape == (3, 4) and "2, 4, num_modalities=3" in repr(group)
    assert "bias=False" in repr(ModalityLayerNorm(4, 2, bias=False))


def test_layer_norm_without_shift_and_without_affine():
    x = torch.randn(4, 5, CHANNELS)
    plain = nn.LayerNorm(CHANNELS, bias=False)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5)
    twin = cen.convert(nn.Sequential(plain), 2, exchange=False)[0]
    assert isinstance(twin, ModalityLayerNorm) and twin.bias is None
    torch.testing.assert_close(twin(x), plain(x))
    point = cen.convert(nn.Sequential(nn.LayerNorm(CHANNELS, elementwise_affine=False)), 2, exchange=True)[0]
    assert point.gamma.shape == (2, CHANNELS) and point.bias is not None  # a fusion point gets gamma = 1, beta = 0
    torch.testing.assert_close(point(x), F.layer_norm(x, (CHANNELS,)))
    free = cen.convert(nn.Sequential(nn.LayerNorm(CHANNELS, elementwise_affine=False)), 2, exchange=False)[0]
    assert free.weight is None
    torch.testing.assert_close(free(x), F.layer_norm(x, (CHANNELS,)))


@pytest.mark.parametrize(
    "build, bad, message",
    [
        (lambda: ModalityLayerNorm(6, 2), torch.randn(4, 5, 7), "built for 6 channels in the last dimension"),
        (lambda: ModalityLayerNorm2d(6, 2), torch.randn(4, 7, 3, 3), r"built for 6 channels in dimension 1"),
        (lambda: ModalityGroupNorm(3, 6, 2), torch.randn(4, 7, 3, 3), "built for 6 channels"),
        (lambda: ModalityLayerNorm(6, 3), torch.randn(4, 5, 6), "batch size 4 is not divisible by the number of mod"),
    ],
)
def test_bad_inputs(build, bad, message):
    with pytest.raises(ValueError, match=message):
        build()(bad)


def test_bad_group_arguments():
    with pytest.raises(ValueError, match="num_features=6 is not divisible by num_groups=4"):
        ModalityGroupNorm(4, 6, 2)
    with pytest.raises(ValueError, match="num_groups must be a positive int"):
        ModalityGroupNorm(0, 6, 2)
