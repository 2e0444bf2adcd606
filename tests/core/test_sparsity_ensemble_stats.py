import pytest
import torch
import torchvision

import cen
from cen.core.sparsity import disjoint_groups


def _model(num=2):
    torch.manual_seed(0)
    model = cen.convert(torchvision.models.resnet18(), num)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-1, 1)
    return model


def test_disjoint_penalises_each_modality_on_its_own_half():
    model = _model()
    expected = 0.0
    for _name, module in model.named_modules():
        if getattr(module, "exchange", False):
            g = module.gamma.detach().abs()
            half = g.shape[1] // 2
            expected += g[0, :half].sum() + g[1, half:].sum()
    torch.testing.assert_close(cen.sparsity_loss(model), torch.as_tensor(expected))


def test_all_mode_penalises_every_channel_of_exchanging_norms_only():
    model = _model()
    expected = sum(m.gamma.detach().abs().sum() for m in model.modules() if getattr(m, "exchange", False))
    torch.testing.assert_close(cen.sparsity_loss(model, mode="all"), expected)
    non_exchanging = sum(1 for m in model.modules() if hasattr(m, "gamma") and not m.exchange)
    assert non_exchanging > 0  # so the "only" above is a real restriction


def test_disjoint_gradient_touches_one_modality_per_channel():
    model = _model(3)
    cen.sparsity_loss(model).backward()
    seen = {"exchanging": 0, "other": 0}
    for m in model.modules():
        if getattr(m, "exchange", False):
            touched = m.weight.grad.view(3, -1) != 0
            assert torch.equal(touched.sum(0), torch.ones(m.num_features, dtype=torch.long))
            seen["exchanging"] += 1
        elif hasattr(m, "gamma"):
            assert m.weight.grad is None
            seen["other"] += 1
    assert seen["exchanging"] > 0 and seen["other"] > 0  # both branches of the loop were checked


def test_disjoint_groups_are_contiguous_and_cover_every_channel():
    groups = disjoint_groups(3, 10)
    assert groups.sum(0).tolist() == [1] * 10
    first = [int(groups[:, c].nonzero()) for c in range(10)]
    assert first == sorted(first) and set(first) == {0, 1, 2}


def test_bad_sparsity_mode():
    with pytest.raises(ValueError, match="expected one of"):
        cen.sparsity_loss(_model(), mode="half")


def test_ensemble_starts_equal_and_detaches_by_default():
    ens = cen.Ensemble(["rgb", "depth"])
    a = torch.randn(2, 3, requires_grad=True)
    b = torch.randn(2, 3, requires_grad=True)
    out = ens({"rgb": a, "depth": b})
    torch.testing.assert_close(out, (a + b) / 2)
    out.sum().backward()
    assert a.grad is None and b.grad is None and ens.alpha.grad is not None
    ens2 = cen.Ensemble(["rgb", "depth"], detach=False)
    ens2({"rgb": a, "depth": b}).sum().backward()
    torch.testing.assert_close(a.grad, torch.full_like(a, 0.5))


def test_ensemble_renormalises_over_present_modalities():
    ens = cen.Ensemble(["a", "b", "c"])
    with torch.no_grad():
        ens.alpha.copy_(torch.tensor([0.0, 1.0, 2.0]))
    x, z = torch.ones(1), torch.zeros(1)
    w = torch.softmax(torch.tensor([0.0, 2.0]), 0)
    torch.testing.assert_close(ens({"a": x, "c": z}), w[0] * x)
    with pytest.raises(ValueError, match="unknown modalities"):
        ens({"a": x, "d": x})


def test_exchange_stats_are_fractions_of_replaced_channels():
    model = cen.convert(torchvision.models.resnet18(), 2, threshold=0.5)
    norm = model.layer2[0].bn1
    with torch.no_grad():
        norm.gamma[0, : norm.num_features // 4] = 0.1
    stats = cen.exchange_stats(model)
    assert set(stats) == {f"layer{i}.{j}.bn1" for i in range(1, 5) for j in range(2)}
    assert stats["layer2.0.bn1"] == [0.25, 0.0]
    assert stats["layer1.0.bn1"] == [0.0, 0.0]


def test_a_single_modality_has_no_exchanging_norms_and_no_penalty():
    model = _model(1)
    assert cen.sparsity_loss(model).item() == 0.0
    assert cen.exchange_stats(model) == {}


def test_shrink_soft_thresholds_exactly_the_penalised_scales():
    from cen.core.sparsity import sparsity_shrink_

    model = _model(2)
    before = {n: m.gamma.detach().clone() for n, m in model.named_modules() if getattr(m, "exchange", False)}
    sparsity_shrink_(model, 0.3)
    for name, old in before.items():
        new = model.get_submodule(name).gamma
        group = disjoint_groups(2, old.shape[1])
        expected = old.sign() * (old.abs() - 0.3).clamp_min(0)
        torch.testing.assert_close(new[group], expected[group])
        torch.testing.assert_close(new[~group], old[~group])
    assert any((model.get_submodule(n).gamma == 0).any() for n in before)
    with pytest.raises(ValueError, match="amount must be >= 0"):
        sparsity_shrink_(model, -1.0)


def test_exchange_split_adds_up_to_exchange_stats():
    from cen.core.stats import exchange_split

    model = _model(2)
    for norm in (m for m in model.modules() if getattr(m, "exchange", False)):
        with torch.no_grad():
            g = norm.gamma
            g.fill_(1.0)
            g[0, : norm.num_features // 2 + 1] = 0.0  # modality 0: its penalised half and one channel beyond
            g[1, 0] = 0.0  # modality 1: one channel outside its penalised half (the second half)
    stats, split = cen.exchange_stats(model), exchange_split(model)
    assert split and set(split) == set(stats)
    for name, parts in split.items():
        c = next(m for n, m in model.named_modules() if n == name).num_features
        assert parts["penalised"] == pytest.approx([(c // 2) / c, 0.0])
        assert parts["unpenalised"] == pytest.approx([1 / c, 1 / c])
        assert [a + b for a, b in zip(parts["penalised"], parts["unpenalised"])] == pytest.approx(stats[name])
