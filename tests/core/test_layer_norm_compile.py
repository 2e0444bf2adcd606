"""Converted ConvNeXt-like and ViT-like models compile to one graph (fullgraph) and match eager, M = 2."""

import copy

import pytest
import torch

import cen
from cen.core.sparsity import fusion_points
from tests.core.tiny_models import TinyViT, tiny_convnext

BUILDERS = {"convnext": (tiny_convnext, 32), "vit": (TinyViT, 32)}


@pytest.mark.parametrize("arch", list(BUILDERS))
@pytest.mark.parametrize("fusion", ["exchange", "token"])
def test_compiles_to_one_graph_and_matches_eager(arch, fusion):
    build, side = BUILDERS[arch]
    torch.manual_seed(0)
    net = cen.convert(build(), 2, fusion=fusion).double().train()
    points = dict(fusion_points(net))
    assert points
    with torch.no_grad():
        for norm in points.values():
            norm.gamma[:, ::3] = 0.001  # exchange really happens
            if fusion == "token":
                norm.fusion.score_out.bias.fill_(-0.5)  # some scores under theta... (sigmoid(-0.5) = 0.38)
                norm.threshold = 0.4  # ...and some above
    x = cen.stack([torch.randn(2, 3, side, side, dtype=torch.float64) for _ in range(2)])
    explanation = torch._dynamo.explain(net)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    torch._dynamo.reset()
    eager = copy.deepcopy(net)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    out, expected = compiled(x), eager(x)
    torch.testing.assert_close(out, expected)
    # the token scores' l1 recorded by the compiled forward is the eager one, with its graph
    loss, expected_loss = (
        out.square().mean() + cen.sparsity_loss(net),
        expected.square().mean() + cen.sparsity_loss(eager),
    )
    torch.testing.assert_close(loss, expected_loss)
    loss.backward()
    expected_loss.backward()
    for (name, p), q in zip(net.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    if fusion == "token":
        stats = cen.exchange_stats(net)
        assert set(stats) == set(points) and any(0 < s < 1 for shares in stats.values() for s in shares)
