"""Choosing fusion points and strategies through cen.convert; the l1 and the stats; compiled fusions."""

import copy

import pytest
import torch
import torchvision
from torch import nn

import cen
import cen.core.convert
import cen.core.exchange_points
from cen.core.sparsity import exchanging_norms, fusion_points
from tests.core.test_fusions import VARIANTS

STRATEGIES = sorted({name for name, _ in VARIANTS.values()})


class UNetish(nn.Module):
    """A network without any torchvision block: conv-norm-relu stages."""

    def __init__(self, width=8):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.head = nn.Conv2d(width, 2, 1)

    def forward(self, x):
        return self.head(self.mid(self.enc(x)))


class MyBlock(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.norm = nn.BatchNorm2d(width)

    def forward(self, x):
        return x + torch.relu(self.norm(self.conv(x)))


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the exchange-point registry for the test."""
    monkeypatch.setattr(cen.core.exchange_points, "_RULES", dict(cen.core.exchange_points._RULES))


def test_auto_on_a_network_without_known_blocks_is_a_clear_error():
    net = UNetish()
    with pytest.raises(ValueError, match="exchange='auto' found no known block in UNetish") as info:
        cen.convert(net, 2)
    message = str(info.value)
    for part in (
        "Bottleneck -> bn2",
        "BasicBlock -> bn1",
        "exchange=[norm names",
        "predicate",
        "register_exchange_point",
    ):
        assert part in message
    assert isinstance(net.enc[1], nn.BatchNorm2d)  # nothing was converted
    # one modality has nothing to fuse, so 'auto' finding nothing is fine there
    assert not list(fusion_points(cen.convert(UNetish(), 1)))


def test_register_exchange_point_and_decorator(registry):
    assert cen.register_exchange_point(MyBlock, "norm") is MyBlock
    net = cen.convert(nn.Sequential(UNetish().enc, MyBlock(), MyBlock()), 2)
    assert {name for name, _ in fusion_points(net)} == {"1.norm", "2.norm"}

    @cen.exchange_point("bn")
    class Other(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(4)

    assert cen.core.convert.exchange_points()[Other] == "bn"
    assert {n for n, _ in fusion_points(cen.convert(nn.Sequential(Other()), 3))} == {"0.bn"}
    with pytest.raises(TypeError, match="block_type must be an nn.Module subclass"):
        cen.register_exchange_point("MyBlock", "norm")
    cen.register_exchange_point(MyBlock, "missing")
    with pytest.raises(TypeError, match="registered to exchange after its norm 'missing'"):
        cen.convert(nn.Sequential(MyBlock()), 2)


def test_builtin_rules_come_from_the_registry(registry):
    from torchvision.models.resnet import BasicBlock

    cen.register_exchange_point(BasicBlock, "bn2")
    net = cen.convert(torchvision.models.resnet18(), 2)
    assert {n.rsplit(".", 1)[1] for n, _ in fusion_points(net)} == {"bn2"}


@pytest.mark.parametrize("fusion", STRATEGIES)
def test_convert_puts_the_strategy_at_the_auto_points(fusion):
    net = cen.convert(torchvision.models.resnet18(), 2, fusion=fusion)
    points = dict(fusion_points(net))
    assert len(points) == 8 and all(n.endswith(".bn1") and n.startswith("layer") for n in points)
    assert all(norm.fusion.name == fusion for norm in points.values())
    assert f"fusion={fusion!r}" in repr(net.layer1[0].bn1)
    assert net.bn1.fusion is None  # the stem is no fusion point


def test_exchange_false_means_no_fusion_point_whatever_the_strategy():
    net = cen.convert(UNetish(), 2, fusion="gated_sum", exchange=False)
    assert not list(fusion_points(net))
    assert not any(k.startswith("fusion") or ".fusion." in k for k in net.state_dict())


def test_default_convert_is_todays_exchange():
    a = cen.convert(torchvision.models.resnet18(num_classes=3), 2)
    b = cen.convert(torchvision.models.resnet18(num_classes=3), 2, fusion="exchange", exchange="auto")
    b.load_state_dict(a.state_dict())
    assert all(norm.exchange and norm.fusion.aggregate == "mean" for _, norm in fusion_points(a))
    with torch.no_grad():
        for _, norm in fusion_points(a):
            norm.gamma[:, ::3] = 0.001
        for _, norm in fusion_points(b):
            norm.gamma[:, ::3] = 0.001
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(a.eval()(x), b.eval()(x))


def test_fusion_options_pass_through_and_bad_names_fail_before_any_change():
    net = cen.convert(UNetish(), 3, fusion="fixed", fusion_options={"fraction": 0.25}, exchange=["mid.1"])
    assert net.mid[1].fusion.fraction == 0.25 and net.enc[1].fusion is None
    plain = UNetish()
    with pytest.raises(ValueError, match="unknown fusion 'xchg'; known: exchange"):
        cen.convert(plain, 2, fusion="xchg", exchange=["mid.1"])
    with pytest.raises(ValueError, match="fusion 'none' has no option 'fraction'"):
        cen.convert(plain, 2, fusion="none", fusion_options={"fraction": 0.3}, exchange=False)
    with pytest.raises(ValueError, match="fusion 'fixed' exchanges between modalities and needs at least 2, got 1"):
        cen.convert(plain, 1, fusion="fixed", exchange=["mid.1"])
    assert isinstance(plain.mid[1], nn.BatchNorm2d)


def test_sparsity_penalises_every_fusion_point_but_fixed_and_random():
    def penalty(fusion):
        net = cen.convert(torchvision.models.resnet18(), 2, fusion=fusion)
        with torch.no_grad():
            for norm in net.modules():
                if isinstance(norm, cen.core.norms._ModalityNorm):
                    norm.weight.copy_(torch.linspace(-1, 1, norm.weight.numel()))
        return cen.sparsity_loss(net)

    exchange = penalty("exchange")
    assert exchange > 0
    for fusion in ("none", "discard", "sum", "gated_sum", "conditional_norm"):
        torch.testing.assert_close(penalty(fusion), exchange, msg=fusion)
    for fusion in ("fixed", "random"):
        assert penalty(fusion).item() == 0.0


def test_l1_alone_shrinks_gamma_at_none_points():
    net = cen.convert(torchvision.models.resnet18(), 2, fusion="none")
    before = net.layer1[0].bn1.gamma.detach().clone()
    cen.sparsity_shrink_(net, 0.5)
    after = net.layer1[0].bn1.gamma.detach()
    half = after.shape[1] // 2
    assert torch.all(after[0, :half] == 0.5) and torch.equal(after[0, half:], before[0, half:])
    assert [n for n, _ in exchanging_norms(net)] == [n for n, _ in fusion_points(net)]


def test_exchange_stats_per_strategy():
    net = cen.convert(UNetish(64), 2, fusion="fixed", exchange=["mid.1"])
    assert cen.exchange_stats(net) == {"mid.1": [19 / 64, 19 / 64]}
    net = cen.convert(UNetish(8), 2, fusion="discard", exchange=["mid.1"])
    with torch.no_grad():
        net.mid[1].gamma[1, :2] = 0.0
    assert cen.exchange_stats(net) == {"mid.1": [0.0, 0.25]}
    assert cen.exchange_stats(cen.convert(UNetish(8), 2, fusion="sum", exchange=["mid.1"])) == {}


@pytest.mark.parametrize("fusion", STRATEGIES)
@pytest.mark.parametrize("num", [2, 3])
def test_every_strategy_compiles_without_graph_breaks(fusion, num):
    torch.manual_seed(0)
    net = cen.convert(UNetish(6), num, fusion=fusion, exchange=True)
    with torch.no_grad():
        for _, norm in fusion_points(net):
            norm.gamma[:, ::2] = 0.001
            for p in norm.fusion.parameters():
                p.normal_(0, 0.3)
    net = net.double().train()
    x = torch.randn(2 * num, 3, 6, 6, dtype=torch.float64)
    explanation = torch._dynamo.explain(net)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    net.train(fusion != "random")  # random draws differ between the two runs in training
    eager = copy.deepcopy(net)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    out, expected = compiled(x), eager(x)
    torch.testing.assert_close(out, expected)
    out.square().mean().backward()
    expected.square().mean().backward()
    for (name, p), q in zip(net.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_compiled_model_follows_the_present_modalities_context():
    net = cen.convert(UNetish(6), 3, exchange=True).eval()
    with torch.no_grad():
        for _, norm in fusion_points(net):
            norm.gamma[:, ::2] = 0.001
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    x = torch.randn(6, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), net(x))
        with cen.present_modalities((0, 2)):
            torch.testing.assert_close(compiled(x[:4]), net(x[:4]))
        torch.testing.assert_close(compiled(x), net(x))


def test_refinenet_passes_the_fusion_through():
    from cen.models import RefineNetCEN

    model = RefineNetCEN("resnet18", 3, ("rgb", "depth"), fusion="fixed", fusion_options={"fraction": 0.2},
                         decoder_widths=(8, 8, 8, 8))  # fmt: skip
    points = dict(fusion_points(model.encoder))
    assert len(points) == 8 and all(n.fusion.name == "fixed" and n.fusion.fraction == 0.2 for n in points.values())
    assert model.config["spec"]["strategy"] == "fixed" and model.config["spec"]["options"] == {"fraction": 0.2}
    assert model.config["spec"]["shared_convs"] is True
    unshared = RefineNetCEN("resnet18", 3, ("rgb", "depth"), shared_convs=False, decoder_widths=(8, 8, 8, 8))
    assert isinstance(unshared.encoder.conv1, cen.nn.ModalityConv2d)
    assert not any(isinstance(m, cen.nn.ModalityConv2d) for m in unshared.decoder.modules())
