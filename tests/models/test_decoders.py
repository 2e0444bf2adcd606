"""Decoders of any depth: RefineNet on 3, 4 and 5 stages (4 exactly the reference's), SegFormer's MLP decoder."""

from __future__ import annotations

import pytest
import torch

from cen.models import MLPDecoder, RefineNetDecoder
from cen.models.refinenet import default_decoder_widths

# The reference decoder's modules, in its registration order (the reference conversion relies on them).
REFERENCE_ORDER = [
    "p_ims1d2_outl1_dimred",
    "adapt_stage1_b",
    "mflow_conv_g1_pool",
    "mflow_conv_g1_b",
    "mflow_conv_g1_b3_joint_varout_dimred",
    *[
        name
        for k in (2, 3, 4)
        for name in (
            f"p_ims1d2_outl{k}_dimred",
            f"adapt_stage{k}_b",
            f"adapt_stage{k}_b2_joint_varout_dimred",
            f"mflow_conv_g{k}_pool",
            f"mflow_conv_g{k}_b",
            *([f"mflow_conv_g{k}_b3_joint_varout_dimred"] if k < 4 else []),
        )
    ],
    "clf_conv",
]


def _features(channels, size=32, batch=2, seed=0):
    """Encoder-like features, shallowest first, stride 2 between stages (``size`` at the shallowest)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, size >> i, size >> i, generator=g) for i, c in enumerate(channels)]


def test_four_stages_are_the_reference_decoder():
    with torch.device("meta"):
        dec = RefineNetDecoder((256, 512, 1024, 2048), 40)
    assert dec.widths == (512, 256, 256, 256)
    assert [name for name, _ in dec.named_children() if name != "dropout"] == REFERENCE_ORDER
    assert dec.p_ims1d2_outl1_dimred.weight.shape == (512, 2048, 3, 3)
    assert dec.mflow_conv_g3_b3_joint_varout_dimred.weight.shape == (256, 256, 3, 3)
    assert dec.clf_conv.weight.shape == (40, 256, 3, 3) and dec.out_channels == 256


def test_four_stages_compute_the_reference_forward():
    """The 4-stage forward written out as the reference's stage-by-stage code."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    dec = RefineNetDecoder((8, 16, 24, 32), 3, widths=(16, 8, 8, 8)).eval()
    l1, l2, l3, l4 = _features((8, 16, 24, 32))

    def up(x, like):
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)

    with torch.no_grad():
        x = F.relu(dec.adapt_stage1_b(dec.p_ims1d2_outl1_dimred(l4)))
        x = up(dec.mflow_conv_g1_b3_joint_varout_dimred(dec.mflow_conv_g1_b(dec.mflow_conv_g1_pool(x))), l3)
        for k, f, nxt in ((2, l3, l2), (3, l2, l1), (4, l1, None)):
            y = getattr(dec, f"adapt_stage{k}_b2_joint_varout_dimred")(
                getattr(dec, f"adapt_stage{k}_b")(getattr(dec, f"p_ims1d2_outl{k}_dimred")(f))
            )
            x = F.relu(y + x)
            x = getattr(dec, f"mflow_conv_g{k}_b")(getattr(dec, f"mflow_conv_g{k}_pool")(x))
            if nxt is not None:
                x = up(getattr(dec, f"mflow_conv_g{k}_b3_joint_varout_dimred")(x), nxt)
        expected = dec.clf_conv(x)
        torch.testing.assert_close(dec([l1, l2, l3, l4]), expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("channels", "widths"),
    [
        ((16, 32, 64), (32, 16, 16)),
        ((16, 32, 64, 128), (32, 16, 16, 8)),
        ((8, 16, 32, 64, 128), (32, 16, 16, 8, 8)),
        ((24,), (16,)),
    ],
)
def test_refinenet_decoder_on_any_number_of_stages(channels, widths):
    torch.manual_seed(0)
    n = len(channels)
    dec = RefineNetDecoder(channels, 5, widths=widths)
    assert dec.num_stages == n and dec.out_channels == widths[-1]
    names = {name for name, _ in dec.named_children()}
    assert {f"p_ims1d2_outl{k}_dimred" for k in range(1, n + 1)} <= names
    assert f"p_ims1d2_outl{n + 1}_dimred" not in names
    assert f"mflow_conv_g{n}_b3_joint_varout_dimred" not in names  # the last stage goes to the classifier
    assert "adapt_stage1_b2_joint_varout_dimred" not in names
    feats = _features(channels)
    out = dec(feats)
    assert out.shape == (2, 5, 32, 32)
    out.square().mean().backward()
    assert [n for n, p in dec.named_parameters() if p.grad is None] == []
    # Every stage matters: changing the deepest feature changes the logits.
    dec.eval()
    with torch.no_grad():
        changed = [*feats[:-1], feats[-1] + 1]
        assert not torch.allclose(dec(feats), dec(changed))


def test_default_widths_cap_512_and_256_by_the_encoder():
    assert default_decoder_widths((256, 512, 1024, 2048)) == (512, 256, 256, 256)
    assert default_decoder_widths((64, 128, 256, 512)) == (512, 256, 128, 64)
    assert default_decoder_widths((40, 80, 160, 320)) == (320, 160, 80, 40)
    assert default_decoder_widths((96, 192, 384, 768, 1536)) == (512, 256, 256, 192, 96)


@pytest.mark.parametrize("channels", [(16, 32, 64), (32, 64, 160, 256), (8, 16, 32, 64, 128)])
def test_mlp_decoder_on_any_number_of_stages(channels):
    torch.manual_seed(0)
    dec = MLPDecoder(channels, 7, embed_dim=24)
    assert [e.in_channels for e in dec.embed] == list(channels) and all(e.kernel_size == (1, 1) for e in dec.embed)
    assert dec.fuse.conv.in_channels == len(channels) * 24 and dec.fuse.conv.bias is None
    assert dec.classifier.in_channels == 24 and dec.out_channels == 24
    feats = _features(channels)
    out = dec(feats)
    assert out.shape == (2, 7, 32, 32)
    out.square().mean().backward()
    assert [n for n, p in dec.named_parameters() if p.grad is None] == []


def test_mlp_decoder_is_linear_upsample_concat_fuse():
    torch.manual_seed(0)
    import torch.nn.functional as F

    dec = MLPDecoder((4, 8), 3, embed_dim=6).eval()
    f1, f2 = _features((4, 8), size=8)
    with torch.no_grad():
        a = dec.embed[0](f1)
        b = F.interpolate(dec.embed[1](f2), size=(8, 8), mode="bilinear", align_corners=False)
        fused = F.relu(dec.fuse.norm(dec.fuse.conv(torch.cat([a, b], 1))))
        torch.testing.assert_close(dec([f1, f2]), dec.classifier(fused), rtol=0, atol=0)


def test_decoders_check_their_arguments():
    with pytest.raises(ValueError, match="in_channels must give the channels of >= 1 encoder stages"):
        MLPDecoder((), 3)
    with pytest.raises(ValueError, match="embed_dim must be an int >= 1, got 0"):
        MLPDecoder((8,), 3, embed_dim=0)
    with pytest.raises(ValueError, match="MLPDecoder expects 2 encoder features, got 1"):
        MLPDecoder((8, 16), 3)(_features((8,)))
    with pytest.raises(ValueError, match=r"widths must be 5 positive ints"):
        RefineNetDecoder((8, 16, 32, 64, 128), 3, widths=(16, 8, 8, 8))
