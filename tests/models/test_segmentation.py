"""SegmentationCEN on other backbones (timm, ConvNeXt, MiT) and decoders (RefineNet, MLP); specs, configs, builder."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import cen
from cen.atomic import atomic_torch_save
from cen.core.norms import ModalityBatchNorm2d
from cen.models import RefineNetCEN, SegmentationCEN, build_encoder
from cen.tasks.registry import MODELS
from cen.train.checkpoint import weights_checkpoint
from cen.train.config import from_container, load_config

NAMES = ("rgb", "depth")


def _inputs(b=2, size=64, names=NAMES, seed=3):
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(b, 3, size, size, generator=gen) for n in names}


def _fusion_points(model):
    return sorted(n for n, m in model.encoder.named_modules() if getattr(m, "fusion", None) is not None)


def _check_groups(model):
    enc, dec = list(model.encoder_parameters()), list(model.decoder_parameters())
    ids = [id(p) for p in enc + dec]
    assert enc and dec and len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert {id(p) for p in enc} == {id(p) for p in model.encoder.parameters()}


def _train_step_reaches_every_parameter(model, x, num_classes):
    model.train()
    out = model(x)
    h, w = out[next(iter(x))].shape[-2:]
    target = torch.randint(0, num_classes, (x[next(iter(x))].shape[0], h, w))
    sum(nn.functional.cross_entropy(out[n], target) for n in x).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == [] or missing == ["ensemble.alpha"]
    return out


# -- ConvNeXt and MiT, one modality ---------------------------------------------------


@pytest.mark.parametrize(
    ("backbone", "decoder", "options"),
    [
        ("convnext_atto", "refinenet", {"decoder_widths": (32, 16, 16, 16)}),
        ("convnext_atto", "mlp", {"decoder_dim": 32}),
        ("mit_b0", "mlp", {"decoder_dim": 32}),
        ("mit_b0", "refinenet", {"decoder_widths": (32, 16, 16, 16)}),
    ],
)
def test_layernorm_backbones_with_one_modality(backbone, decoder, options):
    torch.manual_seed(0)
    # exchange=False: these encoders have only LayerNorms, which this cen.convert does not convert yet.
    model = SegmentationCEN(backbone, 5, ("rgb",), decoder=decoder, exchange=False, **options)
    out = _train_step_reaches_every_parameter(model, _inputs(names=("rgb",)), 5)
    assert list(out) == ["rgb"] and out["rgb"].shape == (2, 5, 16, 16)
    _check_groups(model)
    assert model.config["backbone"] == backbone and model.config["decoder"] == decoder
    model.eval()
    with torch.no_grad():
        assert model(_inputs(b=1, size=72, names=("rgb",)))["rgb"].shape == (1, 5, 18, 18)


# -- timm BatchNorm backbones, two modalities ---------------------------------------------

TIMM_BN = {
    "timm:resnet18": r"body\.layer\d\.\d\.bn1",
    "mobilenetv3_small_050": r"body\.blocks\.\d\.\d\.bn1",
    "efficientnet_b0": r"body\.blocks\.\d\.\d\.bn1",
    "regnety_002": r"body\.s\d\.b\d\.conv2\.bn",
}


def _norm_names(backbone):
    with torch.device("meta"):
        enc = build_encoder(backbone)
    names = [n for n, m in enc.named_modules() if isinstance(m, nn.BatchNorm2d) and re.fullmatch(TIMM_BN[backbone], n)]
    assert len(names) >= 4
    return names


@pytest.mark.parametrize("backbone", list(TIMM_BN))
def test_timm_batchnorm_backbones_with_two_modalities(backbone):
    torch.manual_seed(0)
    names = _norm_names(backbone)
    model = SegmentationCEN(backbone, 4, NAMES, exchange=names, decoder="mlp", decoder_dim=16)
    assert _fusion_points(model) == sorted(names)
    assert model.config["spec"]["points"] == "custom"
    assert [n for n, m in model.encoder.named_modules() if isinstance(m, nn.modules.batchnorm._NormBase)] == []
    private = [m for m in model.encoder.modules() if isinstance(m, ModalityBatchNorm2d)]
    assert len(private) > len(names) and all(m.num_modalities == 2 for m in private)
    out = _train_step_reaches_every_parameter(model, _inputs(), 4)
    assert list(out) == ["rgb", "depth", "ensemble"] and all(o.shape == (2, 4, 16, 16) for o in out.values())
    _check_groups(model)


# timm's BatchNormAct2d (a BatchNorm2d with its activation inside) becomes a modality norm that keeps the
# activation (cen.core.twins), so the converted network computes what the plain one does.
@pytest.mark.parametrize("backbone", ["timm:resnet18", "efficientnet_b0", "mobilenetv3_small_050", "regnety_002"])
def test_converting_a_timm_encoder_keeps_its_function(backbone):
    """Private norms start as copies: each modality's branch computes the unconverted encoder (eval, no fusion)."""
    torch.manual_seed(0)
    plain = build_encoder(backbone).eval()
    with torch.no_grad():
        for m in plain.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    converted = cen.convert(copy.deepcopy(plain), 2, exchange=False).eval()
    x = torch.randn(2, 3, 64, 64)
    stacked = torch.stack([x, x.flip(-1)], 1).flatten(0, 1)  # row b*2 + m
    with torch.no_grad():
        for got, want, want_flipped in zip(converted(stacked), plain(x), plain(x.flip(-1)), strict=True):
            torch.testing.assert_close(got[0::2], want, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(got[1::2], want_flipped, rtol=1e-4, atol=1e-4)


def test_a_converted_timm_encoder_trains():
    torch.manual_seed(0)
    names = _norm_names("timm:resnet18")
    model = SegmentationCEN("timm:resnet18", 3, NAMES, exchange=names, decoder="mlp", decoder_dim=16).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = _inputs(size=32)
    target = torch.randint(0, 3, (2, 8, 8), generator=torch.Generator().manual_seed(0))
    stem = model.encoder.body.conv1.weight.detach().clone()
    losses = []
    for _ in range(6):
        out = model(x)
        loss = sum(nn.functional.cross_entropy(out[n], target) for n in NAMES)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses
    assert not torch.equal(model.encoder.body.conv1.weight, stem)


# -- the MLP decoder in a CEN model -----------------------------------------------------------


def test_mlp_decoder_norm_is_private_and_missing_modalities_work():
    torch.manual_seed(0)
    model = SegmentationCEN("resnet18", 3, NAMES, decoder="mlp", decoder_dim=16, exchange=False)
    norm = model.decoder.fuse.norm
    assert isinstance(norm, ModalityBatchNorm2d) and norm.num_modalities == 2 and norm.fusion is None
    assert model.config["dropout"] == 0.1 and model.config["decoder_dim"] == 16
    model.train()
    model(_inputs())  # statistics of each modality into its own slot
    assert not torch.allclose(norm.running_mean.view(2, 16)[0], norm.running_mean.view(2, 16)[1])
    model.eval()
    x = _inputs()
    with torch.no_grad():
        both, alone = model(x), model({"depth": x["depth"]})
    assert list(alone) == ["depth", "ensemble"]
    torch.testing.assert_close(alone["depth"], both["depth"], rtol=1e-4, atol=1e-5)


def test_concat_head_with_the_mlp_decoder():
    torch.manual_seed(0)
    model = SegmentationCEN("resnet18", 3, NAMES, decoder="mlp", decoder_dim=16, head="concat")
    assert model.concat_head.fuse.in_channels == 32 and model.concat_head.out[1].kernel_size == (1, 1)
    out = model(_inputs())
    assert out["ensemble"].shape == (2, 3, 16, 16)
    out["ensemble"].square().mean().backward()
    assert model.encoder.conv1.weight.grad.abs().sum() > 0


# -- spec, config, errors ---------------------------------------------------------------


def test_a_fusion_spec_or_the_keywords():
    spec = cen.FusionSpec(strategy="sum", threshold=0.1, points="auto")
    with torch.device("meta"):
        a = SegmentationCEN("resnet18", 3, NAMES, spec=spec, decoder_widths=(32, 16, 16, 16))
        b = RefineNetCEN("resnet18", 3, NAMES, 0.1, fusion="sum", decoder_widths=(32, 16, 16, 16))
    assert a.spec == spec and b.spec == spec
    assert _fusion_points(a) == _fusion_points(b) and len(_fusion_points(a)) == 8
    assert {m.fusion.name for m in a.encoder.modules() if getattr(m, "fusion", None) is not None} == {"sum"}
    assert a.config["spec"] == spec.to_dict() and SegmentationCEN(**{**a.config, "pretrained": None}).spec == spec
    none = cen.FusionSpec(points=False)
    with torch.device("meta"):
        assert _fusion_points(SegmentationCEN("resnet18", 3, NAMES, spec=none)) == []
    with pytest.raises(TypeError, match=r"pass either spec= or the keywords \['fusion', 'threshold'\], not both"):
        SegmentationCEN("resnet18", 3, NAMES, 0.5, spec=spec, fusion="sum")


def test_config_rebuilds_the_model():
    torch.manual_seed(0)
    model = SegmentationCEN("mit_b0", 4, ("rgb",), decoder="mlp", decoder_dim=16, exchange=False)
    cfg = model.config
    assert (cfg["decoder"], cfg["decoder_dim"], cfg["decoder_widths"], cfg["dropout"]) == ("mlp", 16, None, 0.1)
    again = SegmentationCEN(**cfg)
    again.load_state_dict(model.state_dict(), strict=True)
    assert again.config == cfg
    with torch.device("meta"):
        r = RefineNetCEN("resnet18", 4, decoder_widths=(32, 16, 16, 16))
    assert (
        "decoder" not in r.config and "decoder_dim" not in r.config and r.config["decoder_widths"] == [32, 16, 16, 16]
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"decoder": "fpn"}, "unknown decoder 'fpn'; known: refinenet, mlp"),
        ({"decoder": "mlp", "decoder_widths": (8, 8, 8, 8)}, "decoder_widths are RefineNet's stage widths"),
        ({"decoder_dim": 64}, "decoder_dim is the MLP decoder's width; decoder='refinenet'"),
        ({"decoder": "mlp", "decoder_dim": 0}, "decoder_dim must be an int >= 1, got 0"),
        ({"backbone": "convnext_atto", "decoder_widths": (8, 8, 8)}, "decoder_widths must be 4 positive ints"),
        ({"backbone": "no_such_net"}, r"unknown backbone 'no_such_net'; expected one of \['resnet18'"),
        ({"backbone_options": 3}, "backbone_options must be a mapping"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match), torch.device("meta"):
        SegmentationCEN(**{"backbone": "resnet18", "num_classes": 3, **kwargs})


# -- the task's builder and checkpoints -------------------------------------------------------


def _config(exchange=None, **model):
    return {
        "task": "segmentation",
        "modalities": ["rgb", "depth"],
        "data": {"num_classes": 3},
        "model": {"name": "refinenet", **model},
        **({} if exchange is None else {"fusion": {"points": exchange}}),
    }


def test_the_builder_takes_any_backbone_and_the_decoder_key():
    cfg = from_container(_config(backbone="mit_b0", decoder="mlp", decoder_dim=16, exchange=False))
    model = MODELS.get("refinenet")(cfg)
    assert type(model) is SegmentationCEN and model.config["decoder"] == "mlp" and model.backbone == "mit_b0"
    cfg = from_container(_config(backbone="convnext_atto", exchange=False, decoder_widths=[32, 16, 16, 16]))
    model = MODELS.get("refinenet")(cfg)
    assert type(model) is RefineNetCEN and model.encoder.out_channels == (40, 80, 160, 320)
    assert type(MODELS.get("refinenet")(from_container(_config(decoder_widths=[32, 16, 16, 16])))) is RefineNetCEN
    with pytest.raises(cen.errors.ConfigError, match="decoder_dim is the MLP decoder's width"):
        MODELS.get("refinenet")(from_container(_config(decoder_dim=16)))
    with pytest.raises(
        cen.errors.ConfigError, match=r"model.decoder='fpn' is not valid; expected one of \['refinenet', 'mlp'\]"
    ):
        MODELS.get("refinenet")(from_container(_config(decoder="fpn")))


def test_a_checkpoint_of_an_mlp_model_loads(tmp_path):
    torch.manual_seed(0)
    data = _config(backbone="timm:resnet18", decoder="mlp", decoder_dim=16, exchange=False)
    model = MODELS.get("refinenet")(from_container(data))
    with torch.no_grad():
        model.decoder.classifier.bias.add_(1.0)
    path = tmp_path / "mlp.pt"
    atomic_torch_save(weights_checkpoint(model.state_dict(), data), path)
    loaded = cen.load_model(path).eval()
    assert type(loaded) is SegmentationCEN and loaded.config == model.config
    x = _inputs(b=1, size=32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["ensemble"], model.eval()(x)["ensemble"])


RECIPES = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize(
    ("recipe", "backbone", "decoder", "kind"),
    [
        ("scenes_convnext.yaml", "convnext_atto", "refinenet", RefineNetCEN),
        ("scenes_mit.yaml", "mit_b0", "mlp", SegmentationCEN),
        ("nyudv2_convnext_t.yaml", "convnext_tiny", "refinenet", RefineNetCEN),
        ("nyudv2_mit_b2.yaml", "mit_b2", "mlp", SegmentationCEN),
    ],
)
def test_the_recipes_build_their_models(recipe, backbone, decoder, kind):
    cfg = load_config(RECIPES / recipe, ["model.pretrained=null"])  # no weights file here
    assert (cfg.model.backbone, cfg.model.decoder, cfg.fusion.points) == (backbone, decoder, "auto")
    with torch.device("meta"):
        model = MODELS.get("refinenet")(cfg)
    assert type(model) is kind and model.names == ("rgb", "depth") and model.backbone == backbone
    assert _fusion_points(model)  # the LayerNorm blocks exchange


def test_the_old_import_path_of_the_model_still_works():
    from cen.models import refinenet

    assert refinenet.RefineNetCEN is RefineNetCEN and refinenet.count_parameters is cen.models.count_parameters


def test_models_deep_copy_and_pickle():
    import pickle

    with torch.device("meta"):
        model = SegmentationCEN("resnet18", 3, NAMES, spec=cen.FusionSpec(strategy="sum", options={}))
    twin = copy.deepcopy(model)
    assert twin.spec == model.spec and twin.spec.strategy == "sum" and twin.model is not model.model
    again = pickle.loads(pickle.dumps(model))
    assert again.config == model.config
