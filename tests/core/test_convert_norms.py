"""cen.convert on LayerNorm / GroupNorm variants, and the generalised exchange-point registry."""

import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.convnext import LayerNorm2d

import cen
import cen.core.exchange_points
from cen.core.sparsity import fusion_points
from cen.core.twins import register_layer_norm_layout
from cen.nn import ModalityGroupNorm, ModalityLayerNorm, ModalityLayerNorm2d


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the exchange-point registry for the test."""
    monkeypatch.setattr(cen.core.exchange_points, "_RULES", dict(cen.core.exchange_points._RULES))


class GroupNormPlus(nn.GroupNorm):
    pass


class OwnLayout(nn.LayerNorm):
    """A LayerNorm subclass with its own forward: cen cannot know its layout."""

    def forward(self, x):
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


def test_each_norm_becomes_its_twin_with_the_parameters_in_every_slot():
    torch.manual_seed(0)
    net = nn.Sequential(nn.LayerNorm(6), LayerNorm2d(6), nn.GroupNorm(3, 6), GroupNormPlus(2, 6), OwnLayout(6))
    with torch.no_grad():
        for p in net.parameters():
            p.uniform_(-1, 1)
    originals = [(m.weight.detach().clone(), m.eps) for m in net]
    cen.convert(net, 3, exchange=False)
    kinds = [ModalityLayerNorm, ModalityLayerNorm2d, ModalityGroupNorm, ModalityGroupNorm, OwnLayout]
    assert [type(m) for m in net] == kinds  # OwnLayout: its layout is unknown, it stays (shared)
    for m, (weight, eps) in zip(list(net)[:4], originals):
        assert torch.equal(m.gamma, weight.expand(3, -1)) and m.eps == eps
    assert net[2].num_groups == 3 and net[3].num_groups == 2


def test_a_layer_norm_subclass_with_a_declared_layout_is_converted(monkeypatch):
    monkeypatch.setattr(cen.core.twins, "_LAYOUTS", dict(cen.core.twins._LAYOUTS))
    register_layer_norm_layout(OwnLayout, "channels_first")
    net = cen.convert(nn.Sequential(OwnLayout(6)), 2, exchange=True)
    assert isinstance(net[0], ModalityLayerNorm2d) and net[0].fusion is not None
    with pytest.raises(ValueError, match="layout must be 'channels_last' or 'channels_first'"):
        register_layer_norm_layout(OwnLayout, "nhwc")


def test_a_layer_norm_over_several_dimensions_is_a_clear_error():
    net = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm([5, 4]))
    with pytest.raises(ValueError, match=r"cannot convert 1 \(LayerNorm\): normalized_shape=\(5, 4\) normalises sev"):
        cen.convert(net, 2, exchange=False)
    assert isinstance(net[1], nn.LayerNorm)  # nothing changed


def test_converted_layer_and_group_norms_equal_the_plain_ones_with_one_modality_each():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 6, 3), nn.GroupNorm(3, 6), LayerNorm2d(6), nn.Flatten(2), nn.LayerNorm(4))
    with torch.no_grad():
        for p in plain.parameters():
            p.uniform_(-1, 1)
    import copy

    net = cen.convert(copy.deepcopy(plain), 2, exchange=False)
    x = torch.randn(3, 3, 4, 4)
    out = net(cen.stack([x, x])).view(3, 2, 6, 4)
    torch.testing.assert_close(out[:, 0], plain(x))
    torch.testing.assert_close(out[:, 1], plain(x))


def test_sparsity_and_stats_read_layer_norm_gamma_as_batch_norm_gamma():
    net = cen.convert(nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8)), 2, exchange=True)
    with torch.no_grad():
        net[1].weight.copy_(torch.linspace(-1, 1, 16))
        net[1].gamma[0, 0] = 0.001
    expected = net[1].gamma[0, :4].abs().sum() + net[1].gamma[1, 4:].abs().sum()  # disjoint halves
    torch.testing.assert_close(cen.sparsity_loss(net), expected)
    assert cen.exchange_stats(net) == {"1": [1 / 8, 0.0]}
    cen.sparsity_shrink_(net, 0.5)
    assert float(net[1].gamma[0, 2].abs()) == pytest.approx(max(0.0, abs(-1 + 2 * 2 / 15) - 0.5))


def test_registry_takes_dotted_paths_and_functions(registry):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
            self.tail = nn.BatchNorm2d(4)

        def forward(self, x):
            return self.tail(self.body(x))

    class Twice(Block):
        pass

    class Never(Block):
        pass

    cen.register_exchange_point(Block, "body.1")
    cen.register_exchange_point(Twice, lambda block: [block.body[1], "tail"])
    cen.register_exchange_point(Never, lambda block: None)
    net = cen.convert(nn.Sequential(Block(), Twice(), Never()), 2)
    assert {n for n, _ in fusion_points(net)} == {"0.body.1", "1.body.1", "1.tail"}  # the subclass's own rule wins
    assert cen.core.convert.exchange_points()[Block] == "body.1"
    cen.register_exchange_point(Block, "body.7")
    with pytest.raises(TypeError, match="registered to exchange after its norm 'body.7', but has no child module"):
        cen.convert(nn.Sequential(Block()), 2)
    with pytest.raises(TypeError, match="norm must be the dotted path of the block's norm"):
        cen.register_exchange_point(Block, 3)


def test_auto_without_known_blocks_lists_the_families():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm(2))
    with pytest.raises(ValueError, match="exchange='auto' found no known block in Sequential") as info:
        cen.convert(net, 2)
    message = str(info.value)
    assert "\n" not in message
    for family in ("MobileNetV2", "EfficientNet", "ConvNeXt", "Swin", "ViT", "timm", "PVT v2", "Bottleneck -> bn2"):
        assert family in message


def test_a_network_without_norms_says_so_and_lists_the_families():
    with pytest.raises(ValueError, match="has no BatchNorm1d/2d") as info:
        cen.convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), 2)
    assert "\n" not in str(info.value) and "ConvNeXt" in str(info.value) and "PVT v2" in str(info.value)


def test_timm_is_never_imported_by_cen():
    code = (
        "import sys, torchvision, cen; "
        "cen.convert(torchvision.models.mobilenet_v2(width_mult=0.25), 2); "
        "cen.core.exchange_points.exchange_points(); "
        "assert 'timm' not in sys.modules, 'timm was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_timm_rules_load_once_timm_is_imported_and_user_entries_win(registry):
    timm = pytest.importorskip("timm", reason="timm is optional")
    from timm.models.vision_transformer import Block

    assert cen.core.exchange_points.exchange_points()[Block] == "norm1"
    cen.register_exchange_point(Block, "norm2")
    model = timm.models.vision_transformer.VisionTransformer(img_size=16, patch_size=8, embed_dim=8, depth=1,
                                                             num_heads=1, num_classes=2)  # fmt: skip
    assert cen.core.exchange_points.auto_exchange_names(model) == {"blocks.0.norm2"}
    net = cen.convert(model, 2)
    assert isinstance(net.blocks[0].norm2, ModalityLayerNorm) and net.blocks[0].norm2.fusion is not None


def test_torchvision_convnext_is_converted_with_both_layer_norm_layouts():
    model = torchvision.models.convnext.ConvNeXt(
        [torchvision.models.convnext.CNBlockConfig(8, 16, 1), torchvision.models.convnext.CNBlockConfig(16, None, 1)]
    )
    net = cen.convert(model, 2)
    kinds = {type(m) for m in net.modules() if isinstance(m, cen.core.norms._ModalityNorm)}
    assert kinds == {ModalityLayerNorm, ModalityLayerNorm2d}
    assert {n for n, _ in fusion_points(net)} == {"features.1.0.block.2", "features.3.0.block.2"}


def test_torch_transformer_layers_fuse_at_norm1_and_stay_off_their_fused_inference_kernel():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    plain = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    import copy

    net = cen.convert(copy.deepcopy(plain), 2).eval()
    assert {n for n, _ in fusion_points(net)} == {"layers.0.norm1", "layers.1.norm1"}
    with torch.no_grad():
        for _, norm in fusion_points(net):
            norm.threshold = 0.0  # no exchange: each modality must be the plain network
        x, y = torch.randn(3, 5, 16), torch.randn(3, 5, 16)
        out = net(cen.stack([x, y])).view(3, 2, 5, 16)  # eval + no_grad: torch's fused path would read gamma as (C,)
    torch.testing.assert_close(out[:, 0], plain(x))
    torch.testing.assert_close(out[:, 1], plain(y))
