"""``exchange="auto"`` finds fusion points in every registered family, and the converted models train.

Each family is built with random weights at a tiny size (torchvision and timm
constructors), converted for 2 and 3 modalities, and run forward and backward on a
stacked batch. timm is optional: its cases are skipped without it.
"""

import copy

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import (
    convnext,
    densenet,
    efficientnet,
    mobilenetv2,
    mobilenetv3,
    regnet,
    shufflenetv2,
    swin_transformer,
    vgg,
)

import cen
import cen.core.exchange_points
from cen.core.norms import _ModalityNorm
from cen.core.sparsity import fusion_points


def _tiny_vgg():
    class TinyVGG(vgg.VGG):  # VGG's own classifier is 100 M parameters; the rule reads only `features`
        def __init__(self):
            nn.Module.__init__(self)
            self.features = vgg.make_layers([8, "M", 16, "M", 16], batch_norm=True)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Linear(16, 4)

    return TinyVGG()


def _tiny_efficientnet_v2():
    settings = [
        efficientnet.FusedMBConvConfig(1, 3, 1, 8, 8, 1),
        efficientnet.FusedMBConvConfig(4, 3, 2, 8, 16, 1),
        efficientnet.MBConvConfig(4, 3, 2, 16, 24, 1),
    ]
    return efficientnet.EfficientNet(settings, dropout=0.0, num_classes=4, last_channel=32)


def _tiny_swin(v2=False):
    extra = {"block": swin_transformer.SwinTransformerBlockV2, "downsample_layer": swin_transformer.PatchMergingV2}
    return swin_transformer.SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=[2, 2], num_classes=4,
        **(extra if v2 else {}),
    )  # fmt: skip


def _tiny_mobilenet_v3():
    settings = [
        mobilenetv3.InvertedResidualConfig(8, 3, 8, 8, True, "RE", 2, 1, 1.0),
        mobilenetv3.InvertedResidualConfig(8, 5, 32, 16, True, "HS", 2, 1, 1.0),
    ]
    return mobilenetv3.MobileNetV3(settings, last_channel=32, num_classes=4)


def _tiny_efficientnet_b0():
    settings = [efficientnet.MBConvConfig(1, 3, 1, 8, 8, 1), efficientnet.MBConvConfig(6, 5, 2, 8, 16, 1)]
    return efficientnet.EfficientNet(settings, dropout=0.0, num_classes=4, last_channel=32)


def _tiny_regnet_y():
    params = regnet.BlockParams.from_init_params(depth=4, w_0=8, w_a=8.0, w_m=1.2, group_width=4, se_ratio=0.25)
    return regnet.RegNet(params, num_classes=4)


# Tiny members of each family, run converted. name: (builder, input side, the class name of the blocks that
# give one point each (None: not counted), the suffix of every point's name)
TORCHVISION = {
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(width_mult=0.25, num_classes=4), 32,
                     "InvertedResidual", ".1"),
    "mobilenet_v3": (_tiny_mobilenet_v3, 32, "InvertedResidual", ".1"),
    "efficientnet_b0": (_tiny_efficientnet_b0, 32, "MBConv", ".1"),
    "efficientnet_v2": (_tiny_efficientnet_v2, 32, None, ".1"),
    "regnet_y": (_tiny_regnet_y, 32, "ResBottleneckBlock", "f.b.1"),
    "convnext": (lambda: convnext.ConvNeXt([convnext.CNBlockConfig(16, 32, 1), convnext.CNBlockConfig(32, None, 1)],
                                           num_classes=4), 32, "CNBlock", "block.2"),
    "swin": (_tiny_swin, 32, "SwinTransformerBlock", "norm1"),
    "swin_v2": (lambda: _tiny_swin(v2=True), 32, "SwinTransformerBlockV2", "norm1"),
    "vit": (lambda: torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                         hidden_dim=32, mlp_dim=64, num_classes=4), 32,
            "EncoderBlock", "ln_1"),
    "densenet": (lambda: densenet.DenseNet(growth_rate=8, block_config=(1, 1), num_init_features=8, bn_size=2,
                                           num_classes=4), 32, "_DenseLayer", "norm2"),
    "shufflenet_v2": (lambda: shufflenetv2.ShuffleNetV2([1, 1, 1], [8, 16, 32, 64, 64], num_classes=4), 32,
                      "InvertedResidual", "branch2.4"),
    "vgg_bn": (_tiny_vgg, 32, None, ""),
}  # fmt: skip

# The full-size constructors of the families named in the brief, only searched for points (no forward).
REAL = {
    "mobilenet_v2": (torchvision.models.mobilenet_v2, mobilenetv2.InvertedResidual),
    "mobilenet_v3_small": (torchvision.models.mobilenet_v3_small, mobilenetv3.InvertedResidual),
    "mobilenet_v3_large": (torchvision.models.mobilenet_v3_large, mobilenetv3.InvertedResidual),
    "efficientnet_b0": (torchvision.models.efficientnet_b0, efficientnet.MBConv),
    "efficientnet_v2_s": (torchvision.models.efficientnet_v2_s, (efficientnet.MBConv, efficientnet.FusedMBConv)),
    "regnet_y_400mf": (torchvision.models.regnet_y_400mf, regnet.ResBottleneckBlock),
    "densenet121": (torchvision.models.densenet121, densenet._DenseLayer),
    "shufflenet_v2_x0_5": (torchvision.models.shufflenet_v2_x0_5, shufflenetv2.InvertedResidual),
}


@pytest.mark.parametrize("family", list(REAL))
def test_full_size_torchvision_constructors_have_a_point_per_block(family):
    build, block_types = REAL[family]
    model = build()
    names = cen.core.exchange_points.auto_exchange_names(model)
    blocks = [m for m in model.modules() if isinstance(m, block_types)]
    assert blocks and len(names) == len(blocks)
    assert all(type(model.get_submodule(n)) in (nn.BatchNorm2d,) for n in names)


def _timm(name):
    pytest.importorskip("timm", reason="timm is optional")
    from timm import models as tm
    from timm.models._efficientnet_builder import decode_arch_def
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3

    tiny = {"channels": (8, 16, 24, 32), "stem_width": 8, "num_classes": 4}
    regnet_cfg = {"depth": 4, "w0": 8, "wa": 8.0, "wm": 1.2, "group_size": 4, "se_ratio": 0.25, "stem_width": 8}
    builders = {
        "resnet_basic": lambda: tm.resnet.ResNet(tm.resnet.BasicBlock, (1, 1, 1, 1), **tiny),
        "resnet_bottleneck": lambda: tm.resnet.ResNet(tm.resnet.Bottleneck, (1, 1, 1, 1), **tiny),
        "convnext": lambda: tm.convnext.ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), num_classes=4),
        "convnext_conv_mlp": lambda: tm.convnext.ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), num_classes=4,
                                                       conv_mlp=True),
        # depthwise-separable, inverted residual (with SE), edge residual (EfficientNetV2), conv-bn-act blocks
        "efficientnet": lambda: EfficientNet(
            decode_arch_def([["ds_r1_k3_s1_e1_c8"], ["ir_r1_k3_s2_e4_c16_se0.25"], ["er_r1_k3_s2_e4_c16"],
                             ["cn_r1_k3_s1_c16"]]), num_features=32, stem_size=8, num_classes=4),
        # MobileNetV3 blocks and MobileNetV4's universal inverted residual
        "mobilenetv3": lambda: MobileNetV3(
            decode_arch_def([["ds_r1_k3_s2_e1_c8_se0.25"], ["ir_r1_k3_s2_e4_c16_se0.25"], ["uir_r1_a3_k5_s2_e4_c16"]]),
            num_features=32, stem_size=8, num_classes=4),
        "regnety": lambda: tm.regnet.RegNet(tm.regnet.RegNetCfg(**regnet_cfg), num_classes=4),
        "regnet_preact": lambda: tm.regnet.RegNet(tm.regnet.RegNetCfg(**regnet_cfg, preact=True), num_classes=4),
        "swin": lambda: tm.swin_transformer.SwinTransformer(img_size=32, patch_size=4, window_size=2, embed_dim=16,
                                                         depths=(1, 1), num_heads=(1, 2), num_classes=4),
        "swin_v2": lambda: tm.swin_transformer_v2.SwinTransformerV2(img_size=32, patch_size=4, window_size=2,
                                                                 embed_dim=16, depths=(1, 1), num_heads=(1, 2),
                                                                 num_classes=4),
        "vit": lambda: tm.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2,
                                                            num_heads=2, num_classes=4),
        "pvt_v2": lambda: tm.pvt_v2.PyramidVisionTransformerV2(depths=(1, 1, 1, 1), embed_dims=(8, 16, 24, 32),
                                                            num_heads=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2),
                                                            num_classes=4),
    }  # fmt: skip
    return builders[name]()


# name: (the class name of the blocks giving one point each (None: not counted), input side, the norm suffix)
TIMM = {
    "resnet_basic": ("BasicBlock", 32, "bn1"),
    "resnet_bottleneck": ("Bottleneck", 32, "bn2"),
    "convnext": ("ConvNeXtBlock", 32, "norm"),
    "convnext_conv_mlp": ("ConvNeXtBlock", 32, "norm"),
    "efficientnet": (None, 32, ""),
    "mobilenetv3": (None, 32, ""),
    "regnety": ("Bottleneck", 32, "conv2.bn"),
    "regnet_preact": ("PreBottleneck", 32, "norm2"),
    "swin": ("SwinTransformerBlock", 32, "norm1"),
    "swin_v2": ("SwinTransformerV2Block", 32, "norm1"),
    "vit": ("Block", 32, "norm1"),
    "pvt_v2": ("Block", 64, "norm1"),
}


def _run_converted(model, num, side):
    """Convert a copy for ``num`` modalities with exchange at the auto points; one training step's forward/backward."""
    torch.manual_seed(0)
    net = cen.convert(copy.deepcopy(model), num).train()
    points = dict(fusion_points(net))
    with torch.no_grad():
        for norm in points.values():
            norm.gamma[:, ::3] = 0.0  # some channels really exchange
    x = cen.stack([torch.randn(2, 3, side, side) for _ in range(num)])
    out = net(x)
    assert out.shape[0] == 2 * num and torch.isfinite(out).all()
    (out.square().mean() + 1e-3 * cen.sparsity_loss(net)).backward()
    gammas = [norm.weight.grad for norm in points.values()]
    assert all(g is not None and torch.isfinite(g).all() for g in gammas)
    assert any(g.abs().sum() > 0 for g in gammas)
    assert not any(type(m) in (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm) for m in net.modules())
    return points


def _check_family(model, side, block_name, suffix):
    """``block_name``: the class name of the blocks that each give one point (None: not counted)."""
    names = cen.core.exchange_points.auto_exchange_names(model)
    assert names, "exchange='auto' found no point"
    assert all(n.endswith(suffix) for n in names), sorted(names)
    if block_name is not None:
        blocks = [n for n, m in model.named_modules() if type(m).__name__ == block_name]
        assert len(names) == len(blocks), (sorted(names), blocks)
    for num in (2, 3):
        points = _run_converted(model, num, side)
        assert set(points) == names
        assert all(isinstance(norm, _ModalityNorm) and norm.num_modalities == num for norm in points.values())


@pytest.mark.parametrize("family", list(TORCHVISION))
def test_torchvision_family(family):
    build, side, block_name, suffix = TORCHVISION[family]
    torch.manual_seed(0)
    _check_family(build(), side, block_name, suffix)


@pytest.mark.parametrize("family", list(TIMM))
def test_timm_family(family):
    block_name, side, suffix = TIMM[family]
    torch.manual_seed(0)
    _check_family(_timm(family), side, block_name, suffix)


def test_specific_points_follow_the_table():
    mv2 = torchvision.models.mobilenet_v2(width_mult=0.25)
    names = cen.core.exchange_points.auto_exchange_names(mv2)
    assert "features.1.conv.0.1" in names and "features.2.conv.1.1" in names  # without, with expansion
    eff = _tiny_efficientnet_v2()
    names = cen.core.exchange_points.auto_exchange_names(eff)
    assert names == {"features.1.0.block.0.1", "features.2.0.block.0.1", "features.3.0.block.1.1"}
    tiny_vgg = _tiny_vgg()
    assert cen.core.exchange_points.auto_exchange_names(tiny_vgg) == {"features.5", "features.9"}


def test_timm_efficientnet_points_and_activations_survive():
    model = _timm("efficientnet")
    names = cen.core.exchange_points.auto_exchange_names(model)
    assert names == {"blocks.0.0.bn1", "blocks.1.0.bn2", "blocks.2.0.bn1", "blocks.3.0.bn1"}
    mobile = _timm("mobilenetv3")
    assert "blocks.2.0.dw_start.bn" in cen.core.exchange_points.auto_exchange_names(mobile)
    # timm's norm + activation layers keep their activation (after the fusion) when converted
    plain = copy.deepcopy(model).eval()
    net = cen.convert(model, 2).eval()
    twin = net.blocks[1][0].bn2
    assert isinstance(twin, cen.nn.ModalityBatchNormAct2d) and type(twin.act).__name__ == "ReLU"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # identical weights in every slot and no exchange below theta: the plain network
        for norm in net.modules():
            if isinstance(norm, _ModalityNorm) and norm.fusion is not None:
                norm.threshold = 0.0
        torch.testing.assert_close(net(cen.stack([x, x])).view(2, 2, -1)[:, 0], plain(x))
