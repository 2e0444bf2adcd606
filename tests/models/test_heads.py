"""The fused output chosen by ``head``: the concat-fusion block of RefineNetCEN and UNetCEN."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cen.core.defaults import ENSEMBLE_KEY
from cen.models import RefineNetCEN, UNetCEN
from cen.models.heads import ConcatFusionHead

SMALL = (32, 16, 16, 16)
RGBD = ("rgb", "depth")
TRANSLATION = ("reshading", "edge_texture")


def _images(names, b=2, size=64, seed=3):
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(b, 3, size, size, generator=gen) for n in names}


def _refinenet(**kwargs) -> RefineNetCEN:
    torch.manual_seed(0)
    return RefineNetCEN("resnet18", 5, RGBD, decoder_widths=SMALL, head="concat", **kwargs)


def _unet(**kwargs) -> UNetCEN:
    torch.manual_seed(0)
    return UNetCEN(TRANSLATION, ngf=8, num_downs=5, head="concat", **kwargs)


def _grad_norm(p: nn.Parameter) -> float:
    return 0.0 if p.grad is None else float(p.grad.abs().sum())


# -- the block against a loop over samples ----------------------------------------------


def test_concat_block_is_conv_norm_relu_out_on_each_samples_concatenated_features():
    torch.manual_seed(1)
    b, m, c = 3, 3, 4
    norm = nn.BatchNorm2d(c).eval()
    with torch.no_grad():
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.normal_()
        norm.bias.normal_()
    head = ConcatFusionHead(m, c, norm=norm, out=nn.Conv2d(c, 2, 1)).eval()
    features = torch.randn(b * m, c, 5, 6)  # sample-major: row s*M + k is sample s, modality k
    with torch.no_grad():
        got = head(features)
    expected = []
    for s in range(b):
        cat = torch.cat([features[s * m + k] for k in range(m)], dim=0)[None]  # (1, M*C, 5, 6)
        z = F.conv2d(cat, head.fuse.weight, padding=1)
        z = (z - norm.running_mean[:, None, None]) / torch.sqrt(norm.running_var[:, None, None] + norm.eps)
        z = z * norm.weight[:, None, None] + norm.bias[:, None, None]
        expected.append(head.out(torch.relu(z)))
    assert got.shape == (b, 2, 5, 6)
    torch.testing.assert_close(got, torch.cat(expected))
    assert head.fuse.weight.shape == (c, m * c, 3, 3) and head.fuse.bias is None


def test_concat_block_refuses_features_that_are_not_a_stack():
    head = ConcatFusionHead(2, 4, norm=nn.BatchNorm2d(4), out=nn.Identity())
    with pytest.raises(ValueError, match=r"expects stacked features \(B\*2, 4, H, W\), got shape \(3, 4, 2, 2\)"):
        head(torch.zeros(3, 4, 2, 2))
    with pytest.raises(ValueError, match=r"got shape \(4, 5, 2, 2\)"):
        head(torch.zeros(4, 5, 2, 2))
    with pytest.raises(ValueError, match="num_modalities must be an int >= 2"):
        ConcatFusionHead(1, 4, norm=nn.BatchNorm2d(4), out=nn.Identity())


# -- RefineNetCEN --------------------------------------------------------------------------


def test_refinenet_concat_outputs_and_what_the_fused_one_sees():
    model = _refinenet(exchange=False).eval()  # no fusion point: each branch sees its own input only
    assert model.head == "concat" and model.ensemble is None
    assert model.output_names == (*RGBD, ENSEMBLE_KEY)
    x = _images(RGBD)
    with torch.no_grad():
        out = model(x)
        new_rgb = model(dict(x, rgb=torch.randn(2, 3, 64, 64)))
        new_depth = model(dict(x, depth=torch.randn(2, 3, 64, 64)))
    assert list(out) == [*RGBD, ENSEMBLE_KEY]
    assert all(v.shape == (2, 5, 16, 16) for v in out.values())
    torch.testing.assert_close(new_rgb["depth"], out["depth"])
    assert not torch.allclose(new_rgb[ENSEMBLE_KEY], out[ENSEMBLE_KEY])  # the fused output reads rgb ...
    assert not torch.allclose(new_depth[ENSEMBLE_KEY], out[ENSEMBLE_KEY])  # ... and depth
    # Per sample: changing sample 1 leaves sample 0's fused prediction alone.
    other = {n: torch.cat([v[:1], torch.randn(1, 3, 64, 64)]) for n, v in x.items()}
    with torch.no_grad():
        torch.testing.assert_close(model(other)[ENSEMBLE_KEY][0], out[ENSEMBLE_KEY][0])


def test_refinenet_concat_branches_are_the_ensemble_models_branches():
    concat = _refinenet().eval()
    plain = RefineNetCEN("resnet18", 5, RGBD, decoder_widths=SMALL).eval()
    shared = {k: v for k, v in concat.state_dict().items() if k.startswith("model.")}
    result = plain.load_state_dict(shared, strict=False)
    assert result.missing_keys == ["ensemble.alpha"] and result.unexpected_keys == []
    x = _images(RGBD)
    with torch.no_grad():
        a, b = concat(x), plain(x)
    for name in RGBD:
        torch.testing.assert_close(a[name], b[name])


def test_refinenet_fused_loss_trains_block_decoder_and_encoder_branch_losses_do_not_touch_the_block():
    model = _refinenet().train()
    x = _images(RGBD)
    target = torch.randint(0, 5, (2, 16, 16))
    out = model(x)
    F.cross_entropy(out[ENSEMBLE_KEY], target).backward(retain_graph=True)
    head, dec, enc = model.concat_head, model.decoder, model.encoder
    for p in (
        head.fuse.weight,
        head.norm.weight,
        head.out[1].weight,
        dec.mflow_conv_g4_b.units[2].conv2.weight,
        dec.p_ims1d2_outl1_dimred.weight,
        enc.conv1.weight,
    ):
        assert _grad_norm(p) > 0
    assert dec.clf_conv.weight.grad is None  # the branches' classifier is not on the fused path
    model.zero_grad(set_to_none=True)
    sum(F.cross_entropy(out[n], target) for n in RGBD).backward()
    assert all(p.grad is None for p in head.parameters())
    assert _grad_norm(dec.clf_conv.weight) > 0 and _grad_norm(enc.layer1[0].bn1.weight) > 0
    model.zero_grad(set_to_none=True)
    # All three losses together reach every parameter.
    out = model(x)
    sum(F.cross_entropy(o, target) for o in out.values()).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    model.zero_grad(set_to_none=True)


def test_refinenet_concat_state_dict_and_config_round_trip():
    model = _refinenet(fusion="fixed", fusion_options={"fraction": 0.25})
    cfg = model.config
    assert cfg["head"] == "concat" and cfg["ensemble"] is True
    spec = cfg["spec"]
    assert (spec["strategy"], spec["options"], spec["shared_convs"]) == ("fixed", {"fraction": 0.25}, True)
    keys = [k for k in model.state_dict() if k.startswith("concat_head.")]
    assert "concat_head.fuse.weight" in keys and "concat_head.out.1.bias" in keys and "ensemble.alpha" not in keys
    with torch.no_grad():  # move the block's statistics and weights away from their initial values
        model.concat_head.norm.running_mean.normal_()
        model.concat_head.fuse.weight.mul_(3)
    again = RefineNetCEN(**cfg)
    again.load_state_dict(model.state_dict(), strict=True)
    x = _images(RGBD)
    with torch.no_grad():
        a, b = model.eval()(x), again.eval()(x)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    assert "head='concat'" in repr(model)


def test_refinenet_concat_needs_every_modality():
    model = _refinenet().eval()
    x = _images(RGBD)
    with pytest.raises(
        ValueError, match=r"head='concat' fuses the features of every modality .*\['depth'\] are missing"
    ):
        model({"rgb": x["rgb"]})
    with pytest.raises(ValueError, match="missing"):
        model.train()({"depth": x["depth"]})


# -- UNetCEN -----------------------------------------------------------------------------


def test_unet_features_are_the_last_convolutions_input():
    gen = UNetCEN(TRANSLATION, ngf=8, num_downs=5).generator.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        f = gen.features(x)
        assert f.shape == (4, 16, 16, 16) and f.min() >= 0  # relu(cat(up-block 4, down-block 1))
        torch.testing.assert_close(gen.predict(f), gen(x))


def test_unet_concat_outputs_and_what_the_fused_one_sees():
    model = _unet(exchange=False, dropout=0.0).eval()
    x = _images(TRANSLATION, size=32)
    with torch.no_grad():
        out = model(x)
        new_a = model(dict(x, reshading=torch.randn(2, 3, 32, 32)))
        new_b = model(dict(x, edge_texture=torch.randn(2, 3, 32, 32)))
    assert list(out) == [*TRANSLATION, ENSEMBLE_KEY] == list(model.output_names)
    assert all(v.shape == (2, 3, 32, 32) for v in out.values())
    assert out[ENSEMBLE_KEY].abs().max() <= 1  # ends with tanh, like the branches
    torch.testing.assert_close(new_a["edge_texture"], out["edge_texture"])
    assert not torch.allclose(new_a[ENSEMBLE_KEY], out[ENSEMBLE_KEY])
    assert not torch.allclose(new_b[ENSEMBLE_KEY], out[ENSEMBLE_KEY])


def test_unet_fused_loss_trains_block_and_generator():
    model = _unet().train()
    out = model(_images(TRANSLATION, size=32))
    out[ENSEMBLE_KEY].abs().mean().backward(retain_graph=True)
    gen, head = model.generator, model.concat_head
    for p in (head.fuse.weight, head.norm.weight, head.out[0].weight, gen.down[0].conv.weight, gen.up[3].conv.weight):
        assert _grad_norm(p) > 0
    assert gen.up[-1].conv.weight.grad is None  # the branches' last convolution is not on the fused path
    model.zero_grad(set_to_none=True)
    sum(out[n].abs().mean() for n in TRANSLATION).backward()
    assert all(p.grad is None for p in head.parameters())
    assert _grad_norm(gen.up[-1].conv.weight) > 0


def test_unet_concat_state_dict_config_round_trip_and_missing_input():
    model = _unet(fusion="gated_sum")
    cfg = model.config
    assert (cfg["head"], cfg["ensemble"], cfg["spec"]["strategy"]) == ("concat", True, "gated_sum")
    again = UNetCEN(**cfg)
    again.load_state_dict(model.state_dict(), strict=True)
    x = _images(TRANSLATION, size=32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x)[ENSEMBLE_KEY], again.eval()(x)[ENSEMBLE_KEY])
    with pytest.raises(ValueError, match=r"\['reshading'\] are missing; give all of them"):
        model({"edge_texture": x["edge_texture"]})


# -- bad arguments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"head": "x"}, r"^unknown head 'x'; known: ensemble, concat$"),
        ({"head": None}, r"^unknown head None; known: ensemble, concat$"),
        ({"head": "concat", "modalities": ("rgb",)}, "head='concat' fuses two or more modalities, got 1"),
        ({"head": "concat", "ensemble": False}, "head='concat' is the fused output, so it needs ensemble=True"),
    ],
)
def test_bad_heads(kwargs, match):
    with torch.device("meta"), pytest.raises(ValueError, match=match):
        RefineNetCEN("resnet18", 5, **{"modalities": RGBD, **kwargs})
    unet_kwargs = dict(kwargs)
    names = unet_kwargs.pop("modalities", TRANSLATION)
    with torch.device("meta"), pytest.raises(ValueError, match=match):
        UNetCEN(names, ngf=4, num_downs=3, **unet_kwargs)


def test_concat_head_compiles_without_graph_breaks():
    model = _unet(dropout=0.0, fusion="sum").train()  # train mode: instance statistics, deterministic without dropout
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = _images(TRANSLATION, size=32)
    got, expected = compiled(x), model(x)
    assert list(got) == list(expected)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k])
