"""Token fusion: its formula (per-modality loop), its sparsity term in cen.sparsity_loss, its replaced-token share."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cen
from cen.core.sparsity import exchanging_norms
from cen.nn import ModalityBatchNorm2d, ModalityLayerNorm, TokenFusion

C = 6
THETA = 0.3


def _norm(num, **options):
    torch.manual_seed(0)
    norm = ModalityLayerNorm(C, num, fusion="token", fusion_options=options or None, threshold=THETA)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
        for p in norm.fusion.parameters():
            p.normal_(0, 0.5)
        norm.fusion.score_out.bias.fill_(-0.85)  # scores spread around theta = sigmoid(-0.85)
    return norm.double()


def _loop(norm, x, num, training, straight_through=False):
    """Per modality: LayerNorm with its own affine, score MLP, replace under theta by Proj_m(mean of the others)."""
    f = norm.fusion
    parts = x.view(-1, num, *x.shape[1:]).unbind(1)
    ys = [F.layer_norm(xm, (C,), norm.gamma[m], norm.bias.view(num, C)[m], norm.eps) for m, xm in enumerate(parts)]
    outs, scores = [], []
    for m, y in enumerate(ys):
        score = torch.sigmoid(f.score_out(F.gelu(f.score_hidden(y))))  # (B, N, 1)
        scores.append(score)
        others = sum(ys[k] for k in range(num) if k != m) / (num - 1)
        projected = others @ f.proj_weight[m].T + f.proj_bias[m]
        kept = y
        if training:
            kept = y * (1 + score - score.detach()) if straight_through else y * score
        outs.append(torch.where(score < THETA, projected, kept))
    return torch.stack(outs, dim=1).flatten(0, 1), scores


@pytest.mark.parametrize("num", [2, 3])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("scaling", ["train", "straight_through"])
def test_token_fusion_matches_the_loop_with_its_gradients(num, training, scaling):
    norm = _norm(num, score_scaling=scaling).train(training)
    ref_norm = copy.deepcopy(norm)
    x = torch.randn(4 * num, 5, C, dtype=torch.float64)
    out = norm(x)
    ref, scores = _loop(ref_norm, x, num, training, scaling == "straight_through")
    replaced = torch.cat([s < THETA for s in scores])
    assert replaced.any() and not replaced.all()  # both branches are exercised
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    for (name, p), q in zip(norm.named_parameters(), ref_norm.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    if training:  # the score MLP learns through the kept tokens
        assert norm.fusion.score_out.weight.grad.abs().sum() > 0
    if scaling == "straight_through":  # the value is the unscaled token in training too
        norm.eval()
        torch.testing.assert_close(norm(x), out.detach())


def test_sparsity_loss_adds_the_token_scores_l1_and_not_gamma():
    num = 2
    norm = _norm(num)
    net = nn.Sequential(nn.Linear(C, C), norm)
    assert float(cen.sparsity_loss(net)) == 0.0  # nothing recorded before a forward
    assert list(exchanging_norms(net)) == []  # gamma of a token fusion point is not penalised
    x = torch.randn(3 * num, 5, C, dtype=torch.float64)
    net.double()(x)
    _, scores = _loop(norm, net[0](x).detach(), num, True)
    expected = sum(s.mean() for s in scores)  # per modality: the mean over samples and tokens
    loss = cen.sparsity_loss(net)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(cen.sparsity_loss(net, mode="all"), expected)  # the mode is about channels
    loss.backward()
    assert norm.fusion.score_hidden.weight.grad.abs().sum() > 0 and net[0].weight.grad.abs().sum() > 0
    # the proximal step has nothing to do at token points
    before = norm.weight.detach().clone()
    cen.sparsity_shrink_(net, 10.0)
    torch.testing.assert_close(norm.weight.detach(), before)


def test_exchange_stats_report_the_share_of_replaced_tokens():
    norm = _norm(3).eval()
    x = torch.randn(9, 5, C, dtype=torch.float64)
    net = nn.Sequential(norm)
    with torch.no_grad():
        net(x)
        _, scores = _loop(norm, x, 3, False)
    expected = [float((s < THETA).double().mean()) for s in scores]
    stats = cen.exchange_stats(net)
    assert list(stats) == ["0"]
    torch.testing.assert_close(torch.tensor(stats["0"]), torch.tensor(expected))
    with torch.no_grad():
        norm.fusion.score_out.bias.fill_(-50.0)  # every score ~0: every token replaced
        net(x)
    assert cen.exchange_stats(net)["0"] == [1.0, 1.0, 1.0]
    with torch.no_grad(), cen.present_modalities((0, 2)):  # absent modality 1 keeps its last share
        norm.fusion.score_out.bias.fill_(50.0)
        net(x[:6])
    assert cen.exchange_stats(net)["0"] == [0.0, 1.0, 0.0]


def test_projection_starts_as_the_identity_so_replacing_is_exchanging():
    norm = ModalityBatchNorm2d(C, 2, fusion="token", threshold=THETA).eval()
    plain = ModalityBatchNorm2d(C, 2).eval()
    with torch.no_grad():
        norm.fusion.score_out.bias.fill_(-50.0)
    x = torch.randn(4, C, 3, 3)
    out, base = norm(x).view(2, 2, C, 3, 3), plain(x).view(2, 2, C, 3, 3)
    torch.testing.assert_close(out, base.flip(1))  # every token is the other modality's


def test_single_modality_and_copies():
    norm = _norm(2)
    x = torch.randn(4, 5, C, dtype=torch.float64)
    norm(x)
    assert norm.fusion.sparsity_term() is not None
    clone = copy.deepcopy(norm)  # the recorded term (part of a graph) is not copied
    assert clone.fusion.sparsity_term() is None and "fusion.replaced_tokens" not in clone.state_dict()
    with torch.no_grad(), cen.present_modalities((1,)):
        norm.eval()
        single = norm(x[:2])
    torch.testing.assert_close(single, F.layer_norm(x[:2], (C,), norm.gamma[1], norm.bias.view(2, C)[1], norm.eps))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"reduction": 0}, r"fusion 'token': reduction must be an int >= 1"),
        ({"score_scaling": "always"}, r"fusion 'token': score_scaling must be one of \('train', 'straight_through'\)"),
        ({"theta": 0.1}, r"fusion 'token' has no option 'theta'; it takes reduction, score_scaling"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        ModalityLayerNorm(C, 2, fusion="token", fusion_options=options)
    assert issubclass(TokenFusion, cen.nn.Fusion) and "token" in cen.fusion_names()
