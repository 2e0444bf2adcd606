"""The backbone registry: names, sources in order, encoder interface, local weights, one-line errors."""

from __future__ import annotations

import sys

import pytest
import timm
import torch
import torchvision
from torch import nn

from cen.models import ENCODERS, MixTransformer, ResNetEncoder, TimmEncoder, backbone_names, build_encoder
from cen.models.backbones import is_backbone, register_backbone
from cen.models.mit import build_mit


def _meta_encoder(name, **kwargs):
    with torch.device("meta"):
        return build_encoder(name, **kwargs)


# -- names and sources -------------------------------------------------------------


def test_cen_names_resnets_first_then_mit():
    names = backbone_names()
    assert names[:5] == ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
    assert names[5:11] == tuple(f"mit_b{i}" for i in range(6))
    assert is_backbone("mit_b3") and is_backbone("convnext_atto") and is_backbone("timm:resnet18")
    assert not is_backbone("resnet11") and not is_backbone(3)


def test_a_name_cen_knows_is_cens_even_where_timm_has_it_too():
    assert timm.is_model("resnet18")
    ours = _meta_encoder("resnet18")
    assert type(ours) is ResNetEncoder and "conv1.weight" in ours.state_dict()
    theirs = _meta_encoder("timm:resnet18")
    assert type(theirs) is TimmEncoder and "body.conv1.weight" in theirs.state_dict()
    assert type(_meta_encoder("mit_b0")) is MixTransformer


@pytest.mark.parametrize(
    ("name", "channels", "strides"),
    [
        ("resnet18", (64, 128, 256, 512), (4, 8, 16, 32)),
        ("resnet50", (256, 512, 1024, 2048), (4, 8, 16, 32)),
        ("mit_b0", (32, 64, 160, 256), (4, 8, 16, 32)),
        ("mit_b2", (64, 128, 320, 512), (4, 8, 16, 32)),
        ("convnext_atto", (40, 80, 160, 320), (4, 8, 16, 32)),
        ("timm:resnet18", (64, 128, 256, 512), (4, 8, 16, 32)),  # timm's stride-2 level is left out
        ("efficientnet_b0", (24, 40, 112, 320), (4, 8, 16, 32)),
    ],
)
def test_out_channels_and_strides(name, channels, strides):
    enc = _meta_encoder(name)
    assert enc.out_channels == channels and enc.strides == strides


@pytest.mark.parametrize("name", ["resnet18", "mit_b0", "convnext_atto", "timm:regnety_002"])
def test_forward_returns_the_stages_at_their_strides(name):
    torch.manual_seed(0)
    enc = build_encoder(name).eval()
    with torch.no_grad():
        feats = enc(torch.randn(2, 3, 64, 64))
    assert isinstance(feats, tuple) and len(feats) == len(enc.out_channels) == 4
    assert [tuple(f.shape) for f in feats] == [(2, c, 64 // s, 64 // s) for c, s in zip(enc.out_channels, enc.strides)]


def test_timm_out_indices_pick_levels():
    enc = _meta_encoder("timm:resnet18", out_indices=(1, 2, 3))
    assert enc.out_channels == (64, 128, 256) and enc.strides == (4, 8, 16)
    with pytest.raises(ValueError, match="out_indices selects timm feature levels; backbone 'mit_b0'"):
        _meta_encoder("mit_b0", out_indices=(0, 1))


def test_channels_last_timm_features_come_back_channels_first():
    # Swin's timm features are NHWC; the encoder permutes them. Tiny Swin: one block per stage.
    enc = build_encoder("swin_tiny_patch4_window7_224", embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
    assert enc.channels_last and enc.out_channels == (16, 32, 64, 128)
    with torch.no_grad():
        feats = enc(torch.randn(1, 3, 224, 224))
    assert [tuple(f.shape) for f in feats] == [(1, 16, 56, 56), (1, 32, 28, 28), (1, 64, 14, 14), (1, 128, 7, 7)]


def test_register_backbone_adds_a_name(monkeypatch):
    monkeypatch.setattr(ENCODERS, "_entries", dict(ENCODERS._entries))  # the name goes away after the test

    class Tiny(nn.Module):
        out_channels, strides = (4,), (2,)

        def forward(self, x):
            return (x[:, :1].repeat(1, 4, 1, 1)[..., ::2, ::2],)

    name = "cen_test_tiny_encoder"
    register_backbone(name)(lambda pretrained=None: Tiny())
    assert name in backbone_names()
    assert build_encoder(name)(torch.zeros(1, 3, 8, 8))[0].shape == (1, 4, 4, 4)
    with pytest.raises(ValueError, match="already registered"):
        register_backbone(name)(lambda pretrained=None: Tiny())


# -- errors ----------------------------------------------------------------------------


def test_unknown_name_says_what_is_known_and_how_to_list_timm():
    with pytest.raises(
        ValueError, match=r"unknown backbone 'resnet11'; expected one of \['resnet18'.*'mit_b5'.*\].*timm\.list_models"
    ):
        build_encoder("resnet11")
    with pytest.raises(ValueError, match="unknown backbone 'timm:no_such_model'"):
        build_encoder("timm:no_such_model")
    with pytest.raises(ValueError, match="unknown backbone None"):
        build_encoder(None)


def test_without_timm_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(
        ValueError, match=r"unknown backbone 'convnext_atto'.*timm is not installed.*pip install -e \"\.\[timm\]\""
    ):
        build_encoder("convnext_atto")
    with pytest.raises(ImportError, match=r"needs timm, an optional dependency: pip install -e \"\.\[timm\]\""):
        build_encoder("timm:convnext_atto")
    assert type(_meta_encoder("resnet18")) is ResNetEncoder  # cen's own names need no timm


def test_a_timm_model_without_features_only_is_refused():
    from timm.models import build_model_with_cfg, register_model

    class Plain(nn.Module):  # a classifier that declares no feature_info
        def __init__(self, num_classes=1000, **_):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.num_classes = num_classes

        def forward(self, x):
            return self.conv(x)

    name = "cen_test_no_features"
    if not timm.is_model(name):

        def cen_test_no_features(pretrained=False, **kwargs):
            return build_model_with_cfg(Plain, name, pretrained, **kwargs)

        register_model(cen_test_no_features)
    with pytest.raises(ValueError, match=r"timm model 'cen_test_no_features' does not support features_only=True"):
        build_encoder(name)


# -- weights -------------------------------------------------------------------------


def test_timm_weights_from_a_local_file(tmp_path):
    torch.manual_seed(1)
    full = timm.create_model("convnext_atto")
    path = tmp_path / "convnext_atto.pth"
    torch.save(full.state_dict(), path)
    enc = build_encoder("convnext_atto", pretrained=path)
    torch.testing.assert_close(enc.body.stem_0.weight, full.stem[0].weight, rtol=0, atol=0)
    torch.testing.assert_close(
        enc.body.stages_3.blocks[1].conv_dw.weight, full.stages[3].blocks[1].conv_dw.weight, rtol=0, atol=0
    )
    random = build_encoder("convnext_atto")
    assert not torch.equal(random.body.stem_0.weight, full.stem[0].weight)
    # The classifier is optional.
    torch.save({k: v for k, v in full.state_dict().items() if not k.startswith("head.fc.")}, path)
    enc = build_encoder("convnext_atto", pretrained=str(path))
    torch.testing.assert_close(enc.body.stem_0.weight, full.stem[0].weight, rtol=0, atol=0)


def test_a_timm_weights_file_that_does_not_fit_names_the_file_and_keys(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    with pytest.raises(
        ValueError,
        match=r"r18.pth does not hold timm convnext_atto weights.*missing \['stem.0.weight'.*unexpected \['conv1.weight'",
    ):
        build_encoder("convnext_atto", pretrained=path)
    wide = tmp_path / "wide.pth"
    torch.save(timm.create_model("convnext_femto").state_dict(), wide)
    with pytest.raises(
        ValueError, match=r"shape mismatches \['stem.0.weight: file \(48, 3, 4, 4\) vs model \(40, 3, 4, 4\)'"
    ):
        build_encoder("convnext_atto", pretrained=wide)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="cut.pth: cannot read it as a state dict of timm's convnext_atto"):
        build_encoder("convnext_atto", pretrained=cut)
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        build_encoder("convnext_atto", pretrained=tmp_path / "nothere.pth")
    with pytest.raises(ValueError, match="cen never downloads timm weights"):
        build_encoder("convnext_atto", pretrained="imagenet")


def test_mit_weights_from_our_names_or_the_segformer_release(tmp_path):
    torch.manual_seed(2)
    src = build_mit("mit_b0")
    path = tmp_path / "mit_b0.pth"
    torch.save(src.state_dict(), path)
    enc = build_encoder("mit_b0", pretrained=path)
    for key, value in src.state_dict().items():
        assert torch.equal(enc.state_dict()[key], value), key
    # The SegFormer release's names (patch_embed1, block1.0.attn.norm, mlp.dwconv.dwconv, norm1, head).
    release = {}
    for key, value in src.state_dict().items():
        parts = key.split(".")
        stage, rest = int(parts[1]) + 1, ".".join(parts[3:])
        if parts[2] == "embed":
            release[f"patch_embed{stage}.{rest}"] = value
        elif parts[2] == "norm":
            release[f"norm{stage}.{rest}"] = value
        else:
            rest = ".".join(parts[4:])
            rest = rest.replace("attn.sr_norm.", "attn.norm.").replace("ffn.dwconv.", "mlp.dwconv.dwconv.")
            release[f"block{stage}.{parts[3]}.{rest.replace('ffn.', 'mlp.')}"] = value
    assert "block1.0.attn.norm.weight" in release and "block4.1.mlp.dwconv.dwconv.weight" in release
    release["head.weight"], release["head.bias"] = torch.zeros(1000, 256), torch.zeros(1000)
    torch.save({"state_dict": release}, path)
    enc = build_encoder("mit_b0", pretrained=path)
    for key, value in src.state_dict().items():
        assert torch.equal(enc.state_dict()[key], value), key


def test_a_mit_weights_file_that_does_not_fit_names_the_file_and_keys(tmp_path):
    path = tmp_path / "b0.pth"
    torch.save(build_mit("mit_b0").state_dict(), path)
    with pytest.raises(ValueError, match=r"b0.pth does not hold mit_b1 weights: shape mismatches \['stages.0.embed"):
        _meta_encoder("mit_b1", pretrained=path)
    with pytest.raises(ValueError, match="b0.pth does not hold mit_b2 weights: missing \\['stages.0.blocks.2"):
        _meta_encoder("mit_b2", pretrained=path)
    with pytest.raises(ValueError, match="cen loads MiT weights from a local file only"):
        _meta_encoder("mit_b0", pretrained="imagenet")


def test_resnet_weights_as_before(tmp_path):
    torch.manual_seed(3)
    resnet = torchvision.models.resnet34()
    path = tmp_path / "r34.pth"
    torch.save(resnet.state_dict(), path)
    enc = build_encoder("resnet34", pretrained=path)
    assert torch.equal(enc.layer3[5].conv2.weight, resnet.layer3[5].conv2.weight)
    with pytest.raises(ValueError, match=r"r34.pth does not hold resnet18 weights"):
        _meta_encoder("resnet18", pretrained=path)
