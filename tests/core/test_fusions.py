"""Every fusion strategy equals its formula written as a per-modality loop, in outputs and gradients."""

import pytest
import torch
import torch.nn.functional as F

import cen
from cen.core.fusions import FUSIONS
from cen.nn import ModalityBatchNorm1d, ModalityBatchNorm2d, ModalityInstanceNorm2d
from tests.core.reference_impl import join, split

THETA = 0.05
CHANNELS = 7  # uneven channel groups for M = 3: 3, 2, 2
VARIANTS = {
    "exchange": ("exchange", {}),
    "exchange_weighted": ("exchange", {"aggregate": "weighted"}),
    "sum": ("sum", {}),
    "gated_sum": ("gated_sum", {"reduction": 2}),
    "conditional_norm": ("conditional_norm", {"reduction": 2}),
    "fixed": ("fixed", {"fraction": 0.3}),
    "random": ("random", {"fraction": 0.3, "seed": 3}),
    "discard": ("discard", {}),
    "none": ("none", {}),
    "token": ("token", {"reduction": 2}),
}


# -- the formulas, as loops over modalities and channels ---------------------------------------------
def _pool(t):
    return t.mean(dim=tuple(range(2, t.dim()))) if t.dim() > 2 else t


def _bcast(t, like):
    """(B, C) -> broadcastable against like (B, C, *S)."""
    return t.view(*t.shape, *([1] * (like.dim() - 2)))


def _mean_others(parts, m):
    others = [parts[k] for k in range(len(parts)) if k != m]
    return sum(others) / len(others)


def _exchange_loop(ys, replaced, weights=None):
    """replaced: bool (K, C); weights: (K, C) or None for the plain mean of the others."""
    num, out = len(ys), []
    for m in range(num):
        chans = []
        for c in range(ys[m].shape[1]):
            if num > 1 and replaced[m, c]:
                others = [k for k in range(num) if k != m]
                if weights is not None and sum(weights[k, c] for k in others) > 0:
                    total = sum(weights[k, c] for k in others)
                    chans.append(sum(weights[k, c] * ys[k][:, c] for k in others) / total)
                else:
                    chans.append(sum(ys[k][:, c] for k in others) / len(others))
            else:
                chans.append(ys[m][:, c])
        out.append(torch.stack(chans, dim=1))
    return out


def _token_loop(ys, params, idx, training, theta=THETA):
    """TokenFusion per modality: score each token, replace those under theta by the projected mean of the others."""
    num = len(ys)
    if num == 1:
        return ys
    out = []
    for m, p in enumerate(idx):
        tokens = ys[m].movedim(1, -1)  # (B, *S, C)
        hidden = F.gelu(F.linear(tokens, params["fusion.score_hidden.weight"], params["fusion.score_hidden.bias"]))
        score = torch.sigmoid(F.linear(hidden, params["fusion.score_out.weight"], params["fusion.score_out.bias"]))
        others = sum(ys[k].movedim(1, -1) for k in range(num) if k != m) / (num - 1)
        projected = F.linear(others, params["fusion.proj_weight"][p], params["fusion.proj_bias"][p])
        kept = tokens * score if training else tokens
        out.append(torch.where(score < theta, projected, kept).movedim(-1, 1))
    return out


def _fixed_sets(num, channels, fraction):
    """Modality m replaces the first round(fraction*C) channels c with floor(c*M/C) == m."""
    count = round(fraction * channels)
    sets = torch.zeros(num, channels, dtype=torch.bool)
    for m in range(num):
        own = [c for c in range(channels) if c * num // channels == m]
        sets[m, own[:count]] = True
    return sets


def _random_sets(num, channels, fraction, scores):
    """The channels are ordered by score; modality m takes positions [m*k, (m+1)*k) of that order."""
    count = round(fraction * channels)
    order = scores.argsort()
    sets = torch.zeros(num, channels, dtype=torch.bool)
    for m in range(num):
        sets[m, order[m * count : (m + 1) * count]] = True
    return sets


def _normalise(xs, norm, idx, kind, training):
    """Per-modality normalisation without the affine (x_hat), one call each."""
    channels, out = norm.num_features, []
    for p, xm in zip(idx, xs):
        sl = slice(p * channels, (p + 1) * channels)
        rm = None if norm.running_mean is None else norm.running_mean.detach().clone()[sl]
        rv = None if norm.running_var is None else norm.running_var.detach().clone()[sl]
        if kind == "instance":
            out.append(F.instance_norm(xm, rm, rv, None, None, training or rm is None, 0.0, norm.eps))
        else:
            out.append(F.batch_norm(xm, rm, rv, None, None, training, 0.0, norm.eps))
    return out


def reference(variant, norm, params, x, idx, kind, training, scores=None, *, channels_last=False, normalise=None):
    """The fused output for stacked x of the present modalities idx, from leaf copies params of the parameters.

    ``channels_last``: x is ``(B*K, *S, C)`` (a LayerNorm's tokens); the formulas run on it moved channels first.
    ``normalise(xs, norm, idx, kind, training)``: the per-modality normalisation (default: batch/instance norms).
    """
    if channels_last:
        out = reference(variant, norm, params, x.movedim(-1, 1), idx, kind, training, scores, normalise=normalise)
        return out.movedim(1, -1)
    name, opts = VARIANTS[variant]
    xs = split(x, len(idx))
    gamma = params["weight"].view(norm.num_modalities, -1)[idx]
    beta = params["bias"].view(norm.num_modalities, -1)[idx]
    hats = (normalise or _normalise)(xs, norm, idx, kind, training)
    ys = [_bcast(g, h) * h + _bcast(b, h) for g, b, h in zip(gamma, beta, hats)]
    num = len(idx)
    if name == "exchange":
        weights = gamma.detach().abs() if opts.get("aggregate") == "weighted" else None
        return join(_exchange_loop(ys, gamma.detach().abs() < THETA, weights))
    if name == "sum":
        return join([y + _mean_others(ys, m) if num > 1 else y for m, y in enumerate(ys)])
    if name == "gated_sum":
        pooled = torch.cat([_pool(xm) for xm in xs], dim=1)  # (B, M*C)
        hidden = F.relu(F.linear(pooled, params["fusion.squeeze.weight"], params["fusion.squeeze.bias"]))
        gate = torch.sigmoid(F.linear(hidden, params["fusion.excite.weight"], params["fusion.excite.bias"]))
        channels = norm.num_features
        return join([y + _bcast(gate[:, m * channels : (m + 1) * channels], y) * _mean_others(ys, m)
                     for m, y in enumerate(ys)])  # fmt: skip
    if name == "conditional_norm":
        out = []
        for m, p in enumerate(idx):
            if num == 1:
                out.append(ys[m])
                continue
            context = _mean_others([_pool(xm) for xm in xs], m)  # (B, C)
            hidden = F.relu(context @ params["fusion.hidden_weight"][p].T + params["fusion.hidden_bias"][p])
            delta = hidden @ params["fusion.out_weight"][p].T + params["fusion.out_bias"][p]
            dgamma, dbeta = delta[:, : norm.num_features], delta[:, norm.num_features :]
            h = hats[m]
            out.append(_bcast(gamma[m] + dgamma, h) * h + _bcast(beta[m] + dbeta, h))
        return join(out)
    if name == "fixed":
        return join(_exchange_loop(ys, _fixed_sets(norm.num_modalities, norm.num_features, opts["fraction"])[idx]))
    if name == "random":
        if training:
            sets = _random_sets(norm.num_modalities, norm.num_features, opts["fraction"], scores)
        else:
            generator = torch.Generator().manual_seed(opts["seed"])
            sets = _random_sets(norm.num_modalities, norm.num_features, opts["fraction"],
                                torch.rand(norm.num_features, generator=generator))  # fmt: skip
        return join(_exchange_loop(ys, sets[idx]))
    if name == "discard":
        return join([torch.where(_bcast(gamma[m].detach().abs() >= THETA, y), y, torch.zeros_like(y))
                     for m, y in enumerate(ys)])  # fmt: skip
    if name == "token":
        return join(_token_loop(ys, params, idx, training))
    assert name == "none"
    return join(ys)


# -- the comparison ----------------------------------------------------------------------------------
def _make(variant, cls, num):
    name, opts = VARIANTS[variant]
    norm = cls(CHANNELS, num, fusion=name, fusion_options=opts, threshold=THETA)
    with torch.no_grad():
        norm.weight.uniform_(-1.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
        norm.gamma[:, 0] = 0.01  # every modality gives up channel 0
        norm.gamma[torch.rand_like(norm.gamma) < 0.3] = -0.02
        norm.gamma[-1, 1] = 0.0
        if norm.running_mean is not None:
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
        for p in norm.fusion.parameters():  # away from the identity initialisations
            p.normal_(0, 0.5)
        if name == "token":  # scores around theta: some tokens are replaced, others kept
            norm.fusion.score_out.bias.fill_(-3.0)
    return norm.double()


def _check(variant, cls, num, shape, training, present=None):
    torch.manual_seed(0)
    norm = _make(variant, cls, num).train(training)
    idx = list(range(num)) if present is None else list(present)
    kind = "instance" if cls is ModalityInstanceNorm2d else "batch"
    x = torch.randn(shape[0] * len(idx), *shape[1:], dtype=torch.float64, requires_grad=True)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in norm.named_parameters()}
    seed = 1234
    torch.manual_seed(seed)
    if present is None:
        out = norm(x)
    else:
        with cen.present_modalities(present):
            out = norm(x)
    torch.manual_seed(seed)
    scores = torch.rand(CHANNELS, dtype=torch.float32)  # the draw a random exchange makes in training
    x_ref = x.detach().clone().requires_grad_(True)
    ref = reference(variant, norm, params, x_ref, idx, kind, training, scores)
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


@pytest.fixture(params=["fused", "split"])
def route(request, monkeypatch):
    """Both routes of the batch norms (eager one-call, and the torch.compile route on (B, M, C, ...))."""
    monkeypatch.setattr(cen.core.norms, "_split_route", lambda: request.param == "split")
    return request.param


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("num", [2, 3])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm2d_fusion_matches_loop(variant, num, training, route):
    _check(variant, ModalityBatchNorm2d, num, (3, CHANNELS, 4, 3), training)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_instancenorm_and_batchnorm1d_fusion_matches_loop(variant):
    _check(variant, ModalityInstanceNorm2d, 3, (2, CHANNELS, 4, 3), True)
    _check(variant, ModalityBatchNorm1d, 3, (5, CHANNELS), True)
    _check(variant, ModalityBatchNorm1d, 2, (3, CHANNELS, 4), False)


MISSING_OK = [v for v in VARIANTS if v != "gated_sum"]


@pytest.mark.parametrize("variant", MISSING_OK)
@pytest.mark.parametrize("present", [(0, 2), (1, 2), (1,)])
def test_missing_modalities_at_inference(variant, present, route):
    _check(variant, ModalityBatchNorm2d, 3, (2, CHANNELS, 3, 3), False, present=present)


def test_gated_sum_refuses_a_missing_modality():
    norm = _make("gated_sum", ModalityBatchNorm2d, 3).eval()
    with cen.present_modalities((0, 2)), pytest.raises(ValueError, match="'gated_sum' reads every modality"):
        norm(torch.randn(4, CHANNELS, 3, 3, dtype=torch.float64))


def test_fusions_with_parameters_start_harmless():
    """conditional_norm starts as the plain private norm; exchange's plain and weighted means agree for M = 2."""
    torch.manual_seed(0)
    x = torch.randn(6, CHANNELS, 3, 3)
    plain = ModalityBatchNorm2d(CHANNELS, 3)
    cbn = ModalityBatchNorm2d(CHANNELS, 3, fusion="conditional_norm")
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5)
    cbn.load_state_dict(plain.state_dict(), strict=False)
    torch.testing.assert_close(cbn(x), plain(x))
    a = _make("exchange", ModalityBatchNorm2d, 2)
    b = _make("exchange_weighted", ModalityBatchNorm2d, 2)
    b.load_state_dict(a.state_dict())
    x = torch.randn(6, CHANNELS, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(a(x), b(x))


def test_random_exchange_draws_afresh_in_training_and_is_fixed_in_eval():
    norm = _make("random", ModalityBatchNorm2d, 2)
    x = torch.randn(4, CHANNELS, 3, 3, dtype=torch.float64)
    norm.train()
    draws = {tuple(norm(x).detach().flatten()[:50].tolist()) for _ in range(8)}
    assert len(draws) > 1
    norm.eval()
    torch.testing.assert_close(norm(x), norm(x))
    replaced = norm.fusion.eval_replace
    assert replaced.sum(dim=1).tolist() == [2, 2] and not (replaced[0] & replaced[1]).any()
    other_seed = ModalityBatchNorm2d(CHANNELS, 2, fusion="random", fusion_options={"seed": 3})
    assert torch.equal(other_seed.fusion.eval_replace, replaced)


def test_fixed_sets_are_disjoint_and_in_each_modalitys_own_group():
    norm = ModalityBatchNorm2d(64, 2, fusion="fixed")
    replaced = norm.fusion.replace
    assert replaced.sum(dim=1).tolist() == [19, 19]  # round(0.3 * 64)
    assert replaced[0, :19].all() and not replaced[0, 19:].any()
    assert replaced[1, 32:51].all() and not replaced[1, :32].any() and not replaced[1, 51:].any()
    assert torch.equal(norm.state_dict()["fusion.replace"], replaced)


def test_state_dict_round_trip_and_repr():
    for variant in ("gated_sum", "conditional_norm"):
        name, opts = VARIANTS[variant]
        a = _make(variant, ModalityBatchNorm2d, 3).float().eval()
        keys = [k for k in a.state_dict() if k.startswith("fusion.")]
        assert keys, variant
        b = ModalityBatchNorm2d(CHANNELS, 3, fusion=name, fusion_options=opts, threshold=THETA).eval()
        b.load_state_dict(a.state_dict())
        x = torch.randn(6, CHANNELS, 3, 3)
        torch.testing.assert_close(a(x), b(x))
        assert f"fusion={name!r}" in repr(a)
    assert "aggregate='weighted'" in repr(_make("exchange_weighted", ModalityBatchNorm2d, 3))


def test_every_registered_strategy_is_tested():
    assert {name for name, _ in VARIANTS.values()} == set(FUSIONS.names())


@pytest.mark.parametrize(
    "fusion, options, num, message",
    [
        ("shuffle", {}, 2, r"unknown fusion 'shuffle'; known: exchange, sum, gated_sum"),
        ("sum", {"fraction": 0.3}, 2, r"fusion 'sum' has no option 'fraction'; it takes no options"),
        ("fixed", {"ratio": 0.3}, 2, r"fusion 'fixed' has no option 'ratio'; it takes fraction"),
        ("fixed", {"fraction": 1.0}, 2, r"fraction must be a number in \(0, 1\), got 1.0"),
        ("random", {"fraction": 0.0}, 2, r"fraction must be a number in \(0, 1\), got 0.0"),
        ("fixed", {"fraction": 0.6}, 2, r"2 disjoint sets leave at most 32 each; use fraction <= 0.5"),
        ("fixed", {}, 1, r"fusion 'fixed' exchanges between modalities and needs at least 2, got 1"),
        ("random", {}, 1, r"fusion 'random' exchanges between modalities and needs at least 2, got 1"),
        ("exchange", {"aggregate": "max"}, 2, r"aggregate must be 'mean' or 'weighted', got 'max'"),
        ("gated_sum", {"reduction": 0}, 2, r"reduction must be an int >= 1"),
    ],
)
def test_bad_fusion_arguments(fusion, options, num, message):
    with pytest.raises(ValueError, match=message):
        ModalityBatchNorm2d(64, num, fusion=fusion, fusion_options=options)
