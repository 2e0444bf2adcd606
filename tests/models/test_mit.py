"""MiT (SegFormer's Mix Transformer): sizes, shapes, its computation, its exchange point."""

from __future__ import annotations

import re

import pytest
import timm
import torch

import cen
from cen.models import MixTransformer, count_parameters
from cen.models.mit import MIT_VARIANTS, DropPath, MiTBlock, build_mit


def _meta(name):
    with torch.device("meta"):
        return build_mit(name)


@pytest.mark.parametrize(
    ("name", "params", "paper"),
    [
        ("mit_b0", 3_319_392, 3.4),
        ("mit_b1", 13_151_424, 13.1),
        ("mit_b2", 24_196_288, 24.2),
        ("mit_b3", 44_072_128, 44.0),
        ("mit_b4", 60_842_688, 60.8),
        ("mit_b5", 81_443_008, 81.4),
    ],
)
def test_parameter_counts_and_the_papers_encoder_sizes(name, params, paper):
    count = count_parameters(_meta(name))
    assert count == params
    assert abs(count / 1e6 - paper) < 0.1  # the paper's table gives one decimal


def test_variants_follow_the_paper():
    b0, b5 = MIT_VARIANTS["mit_b0"], MIT_VARIANTS["mit_b5"]
    assert (b0.widths, b0.depths, b0.heads, b0.sr_ratios, b0.mlp_ratio) == (
        (32, 64, 160, 256),
        (2, 2, 2, 2),
        (1, 2, 5, 8),
        (8, 4, 2, 1),
        4,
    )
    assert b5.widths == (64, 128, 320, 512) and b5.depths == (3, 6, 40, 3)
    model = _meta("mit_b2")
    assert [len(s.blocks) for s in model.stages] == [3, 4, 6, 3]
    first, second = model.stages[0].embed.proj, model.stages[1].embed.proj
    assert (first.kernel_size, first.stride, first.padding) == ((7, 7), (4, 4), (3, 3))
    assert (second.kernel_size, second.stride, second.padding) == ((3, 3), (2, 2), (1, 1))
    assert [s.blocks[0].attn.sr_ratio for s in model.stages] == [8, 4, 2, 1]
    assert not hasattr(model.stages[3].blocks[0].attn, "sr")  # R = 1: attention over every token
    ffn = model.stages[0].blocks[0].ffn
    assert ffn.fc1.out_features == 256 and ffn.dwconv.groups == 256 and ffn.dwconv.kernel_size == (3, 3)


def test_stage_outputs_shapes_and_gradients():
    torch.manual_seed(0)
    model = build_mit("mit_b0")
    feats = model(torch.randn(2, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(2, 32, 16, 24), (2, 64, 8, 12), (2, 160, 4, 6), (2, 256, 2, 3)]
    sum(f.square().mean() for f in feats).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_the_same_computation_as_timms_pvt_v2_relative():
    """PVTv2-B0 is MiT-B0 with Mix-FFN ratios (8, 8, 4, 4) and a classifier; timm has it.

    Built with those ratios and timm's weights renamed, our module must give timm's stage
    features: the attention, spatial reduction, Mix-FFN, patch embeddings and norms are
    then computed as an independent implementation computes them.
    """
    torch.manual_seed(0)
    ref = timm.create_model("pvt_v2_b0").eval()
    ours = MixTransformer((32, 64, 160, 256), (2, 2, 2, 2), (1, 2, 5, 8), mlp_ratio=(8, 8, 4, 4)).eval()

    def rename(key):
        key = re.sub(r"^patch_embed\.", "stages.0.embed.", key)
        key = re.sub(r"^stages\.(\d)\.downsample\.", r"stages.\1.embed.", key)
        return key.replace("attn.norm.", "attn.sr_norm.").replace(".mlp.", ".ffn.")

    ours.load_state_dict({rename(k): v for k, v in ref.state_dict().items() if not k.startswith("head.")})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = ref.forward_intermediates(x, intermediates_only=True)
        got = ours(x)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)  # timm's patch-embedding norms use eps 1e-5, ours 1e-6


def test_stochastic_depth_only_in_training():
    torch.manual_seed(0)
    model = build_mit("mit_b0")  # drop_path_rate 0.1: 0 for the first block, 0.1 for the last
    rates = [b.drop_path.p for s in model.stages for b in s.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1) and rates == sorted(rates)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x)[-1], model(x)[-1])
    drop = DropPath(0.5).train()
    out = drop(torch.ones(1000, 3))
    kept = out[:, 0] > 0
    assert 350 < int(kept.sum()) < 650 and torch.all(out[kept] == 2.0)


def test_blocks_are_registered_exchange_points_at_norm1():
    assert cen.core.convert.exchange_points()[MiTBlock] == "norm1"
    names = cen.core.convert.auto_exchange_names(_meta("mit_b0"))
    assert len(names) == 8 and all(re.fullmatch(r"stages\.\d\.blocks\.\d\.norm1", n) for n in names)


def test_too_small_inputs_and_bad_sizes_give_one_line_errors():
    model = build_mit("mit_b0")
    with pytest.raises(ValueError, match=r"MiT: a 7x7 token grid is smaller than the spatial reduction 8"):
        model(torch.zeros(1, 3, 28, 28))
    with pytest.raises(ValueError, match="MiT expects images"):
        model(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match=r"channels \(30\) must be divisible by heads \(4\)"):
        MixTransformer((30,), (1,), (4,), (1,))
    with pytest.raises(ValueError, match="one entry per stage"):
        MixTransformer((32, 64), (1,), (1, 2), (8, 4))
    with pytest.raises(ValueError, match="unknown MiT variant 'mit_b9'"):
        build_mit("mit_b9")
