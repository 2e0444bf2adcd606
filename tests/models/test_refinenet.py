"""RefineNetCEN: sizes, outputs, missing modalities, parameter groups, weights, errors."""

from __future__ import annotations

import inspect

import pytest
import torch
import torchvision
from torch import nn

import cen
from cen.core.defaults import THRESHOLD
from cen.core.norms import ModalityBatchNorm2d
from cen.core.unshared import ModalityConv2d
from cen.models import RefineNetCEN, count_parameters
from cen.models.refinenet import RefineNetDecoder, default_decoder_widths

SMALL = (32, 16, 16, 16)  # narrow decoder widths for the quick forward tests


def _meta(*args, **kwargs) -> RefineNetCEN:
    with torch.device("meta"):
        return RefineNetCEN(*args, **kwargs)


def _inputs(b=2, size=64, names=("rgb", "depth")):
    gen = torch.Generator().manual_seed(3)
    return {n: torch.randn(b, 3, size, size, generator=gen) for n in names}


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    model = RefineNetCEN("resnet18", 7, ("rgb", "depth"), decoder_widths=SMALL)
    with torch.no_grad():  # some gammas under the threshold so that exchange happens
        for norm in model.encoder.modules():
            if isinstance(norm, ModalityBatchNorm2d) and norm.exchange:
                norm.weight[::3] = 1e-3
    return model


# -- the paper's sizes ----------------------------------------------------------


@pytest.mark.parametrize(
    ("backbone", "modalities", "millions"),
    [
        ("resnet101", ("rgb", "depth"), "118.20"),
        ("resnet152", ("rgb", "depth"), "133.89"),
        ("resnet101", ("rgb",), "118.10"),
    ],
)
def test_parameter_counts_match_the_reference(backbone, modalities, millions):
    model = _meta(backbone, 40, modalities)
    assert f"{count_parameters(model) / 1e6:.2f}" == millions


def test_decoder_widths():
    assert _meta("resnet101").decoder.widths == (512, 256, 256, 256)
    assert _meta("resnet50").decoder.widths == (512, 256, 256, 256)
    assert _meta("resnet34").decoder.widths == (512, 256, 128, 64)
    assert default_decoder_widths((64, 128, 256, 512)) == (512, 256, 128, 64)
    dec = _meta("resnet18").decoder
    assert dec.p_ims1d2_outl1_dimred.weight.shape == (512, 512, 3, 3)
    assert dec.p_ims1d2_outl4_dimred.weight.shape == (64, 64, 3, 3)
    assert dec.mflow_conv_g3_b3_joint_varout_dimred.weight.shape == (64, 128, 3, 3)


def test_exchange_sits_where_the_paper_puts_it():
    r50 = _meta("resnet50", 40)
    exchanging = {name for name, _ in cen.core.sparsity.exchanging_norms(r50)}
    assert len(exchanging) == 16 and all(name.endswith(".bn2") for name in exchanging)
    assert all(name.startswith("model.encoder.layer") for name in exchanging)
    r18 = _meta("resnet18", 40)
    assert {n.rsplit(".", 1)[1] for n, _ in cen.core.sparsity.exchanging_norms(r18)} == {"bn1"}
    assert list(cen.core.sparsity.exchanging_norms(_meta("resnet50", 40, exchange=False))) == []
    # Every norm is private to the modalities, exchanging or not; the decoder has none.
    norms = [m for m in r50.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    assert norms == []
    assert not any(isinstance(m, ModalityBatchNorm2d) for m in r50.decoder.modules())


# -- forward --------------------------------------------------------------------


def test_outputs_by_name_at_a_quarter_of_the_input(r18):
    r18.eval()
    with torch.no_grad():
        out = r18(_inputs(size=64))
        odd = r18(_inputs(b=1, size=50))
    assert list(out) == ["rgb", "depth", "ensemble"]
    assert all(t.shape == (2, 7, 16, 16) for t in out.values())
    assert odd["rgb"].shape == (1, 7, 13, 13)
    w = r18.ensemble.weights()
    torch.testing.assert_close(out["ensemble"], w["rgb"] * out["rgb"] + w["depth"] * out["depth"])


def test_missing_modality_at_inference(r18):
    r18.eval()
    x = _inputs()
    with torch.no_grad():
        full = r18(x)
        only_depth = r18({"depth": x["depth"]})
    assert list(only_depth) == ["depth", "ensemble"]
    torch.testing.assert_close(only_depth["ensemble"], only_depth["depth"])
    # With exchange, the missing rgb changes what depth sees ...
    assert not torch.allclose(only_depth["depth"], full["depth"])
    # ... without it, the branches are independent and the decoder works per sample.
    plain = RefineNetCEN("resnet18", 7, exchange=False, decoder_widths=SMALL).eval()
    with torch.no_grad():
        both = plain(x)
        alone = plain({"rgb": x["rgb"]})
    torch.testing.assert_close(alone["rgb"], both["rgb"], rtol=1e-4, atol=1e-5)
    r18.train()
    with pytest.raises(ValueError, match="missing"):
        r18({"rgb": x["rgb"]})


def test_training_step_reaches_every_parameter(r18):
    r18.train()
    x = _inputs(b=2, size=64)
    target = torch.randint(0, 7, (2, 16, 16))
    out = r18(x)
    loss = sum(nn.functional.cross_entropy(o, target) for o in out.values())
    r18.zero_grad()
    loss.backward()
    missing = [n for n, p in r18.named_parameters() if p.grad is None]
    assert missing == []
    assert r18.ensemble.alpha.grad.abs().sum() > 0
    r18.zero_grad()
    # The ensemble's loss trains alpha only (predictions detached, as the reference).
    nn.functional.cross_entropy(r18(x)["ensemble"], target).backward()
    assert [n for n, p in r18.named_parameters() if p.grad is not None] == ["ensemble.alpha"]
    r18.zero_grad()


def test_one_modality_is_a_plain_refinenet():
    model = RefineNetCEN("resnet18", 3, ("depth",), decoder_widths=SMALL).eval()
    assert model.ensemble is None
    with torch.no_grad():
        out = model({"depth": torch.randn(1, 3, 64, 64)})
    assert list(out) == ["depth"] and out["depth"].shape == (1, 3, 16, 16)
    no_ens = _meta("resnet18", 3, ("rgb", "depth"), ensemble=False)
    assert no_ens.ensemble is None


def test_encoder_and_decoder_parameters_partition_the_model():
    model = _meta("resnet50", 40)
    enc = list(model.encoder_parameters())
    dec = list(model.decoder_parameters())
    ids = [id(p) for p in enc + dec]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert any(p is model.ensemble.alpha for p in dec)  # as the reference: alpha with the decoder
    assert {id(p) for p in enc} == {id(p) for p in model.encoder.parameters()}
    # The reference script's rule (names matching conv1|bn1|layer) gives the same split.
    import re

    by_rule = {id(p) for n, p in model.named_parameters() if re.match(".*conv1.*|.*bn1.*|.*layer.*", n)}
    assert by_rule - {id(p) for p in model.decoder.parameters()} == {id(p) for p in enc}
    assert model.names == ("rgb", "depth")


# -- fusion strategies and unshared convolutions ------------------------------------


@pytest.mark.parametrize("fusion", cen.fusion_names())
def test_every_fusion_builds_a_working_model(fusion):
    torch.manual_seed(0)
    model = RefineNetCEN("resnet18", 5, ("rgb", "depth"), decoder_widths=SMALL, fusion=fusion).train()
    points = {n: m.fusion.name for n, m in model.encoder.named_modules() if getattr(m, "fusion", None) is not None}
    assert len(points) == 8 and set(points.values()) == {fusion}  # after bn1 of ResNet-18's 8 BasicBlocks
    assert all(n.endswith(".bn1") for n in points)
    assert model.config["spec"]["strategy"] == fusion
    out = model(_inputs(size=64))
    target = torch.randint(0, 5, (2, 16, 16))
    sum(nn.functional.cross_entropy(out[n], target) for n in ("rgb", "depth")).backward()
    bad = [n for n, p in model.model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert bad == []
    assert model.encoder.layer3[0].conv1.weight.grad.abs().sum() > 0


def test_unshared_encoder_convolutions_with_a_fusion_and_the_concat_head():
    torch.manual_seed(0)
    model = RefineNetCEN(
        "resnet18", 5, ("rgb", "depth", "normal"), decoder_widths=SMALL, fusion="sum", shared_convs=False, head="concat"
    ).train()
    assert isinstance(model.encoder.conv1, ModalityConv2d) and model.encoder.conv1.weight.shape == (3 * 64, 3, 7, 7)
    assert type(model.decoder.clf_conv) is nn.Conv2d  # the decoder is built after the conversion: shared
    assert model.config["spec"]["shared_convs"] is False and model.concat_head.fuse.in_channels == 3 * 16
    out = model(_inputs(size=64, names=("rgb", "depth", "normal")))
    assert list(out) == ["rgb", "depth", "normal", "ensemble"]
    out["ensemble"].square().mean().backward()
    w = model.encoder.conv1.weight.grad.view(3, 64, 3, 7, 7)
    assert all(w[m].abs().sum() > 0 for m in range(3))  # every modality's private stem feeds the fused output
    with pytest.raises(ValueError, match=r"fusion 'fixed': fraction must be a number in \(0, 1\), got 1.5"):
        _meta("resnet18", 5, fusion="fixed", fusion_options={"fraction": 1.5})


def test_default_threshold_is_the_shared_constant():
    assert inspect.signature(RefineNetCEN).parameters["threshold"].default is None  # None: the spec's default
    assert cen.FusionSpec().threshold == THRESHOLD
    model = _meta("resnet18", 5)
    assert model.config["spec"]["threshold"] == THRESHOLD
    assert {m.threshold for m in model.encoder.modules() if isinstance(m, ModalityBatchNorm2d)} == {THRESHOLD}


def test_takes_segmentation_cens_arguments_but_not_the_decoders_choice():
    params = inspect.signature(RefineNetCEN).parameters
    assert "decoder" not in params and "decoder_dim" not in params
    assert {"backbone", "spec", "dropout", "decoder_widths", "backbone_options"} <= set(params)
    assert _meta("resnet18", 5).config["dropout"] == 0.5  # the reference RefineNet's dropout
    for key, value in (("decoder", "mlp"), ("decoder_dim", 64)):
        with pytest.raises(TypeError, match=rf"RefineNetCEN takes no '{key}'.*SegmentationCEN\({key}="):
            RefineNetCEN("resnet18", 5, **{key: value})


def test_config_rebuilds_the_model():
    model = RefineNetCEN("resnet18", 5, ("rgb", "depth"), decoder_widths=SMALL, fusion="discard", threshold=0.1)
    cfg = model.config
    spec = cfg["spec"]
    assert (cfg["head"], spec["strategy"], spec["options"], spec["shared_convs"]) == ("ensemble", "discard", {}, True)
    assert spec["threshold"] == 0.1
    again = RefineNetCEN(**cfg)
    again.load_state_dict(model.state_dict(), strict=True)
    assert again.config == cfg


# -- weights --------------------------------------------------------------------


def test_local_pretrained_weights_reach_every_modality(tmp_path):
    torch.manual_seed(5)
    resnet = torchvision.models.resnet18()
    with torch.no_grad():
        resnet.bn1.weight.uniform_(0.5, 1.5)
        resnet.bn1.running_mean.normal_()
    path = tmp_path / "r18.pth"
    torch.save(resnet.state_dict(), path)
    model = RefineNetCEN("resnet18", 4, ("rgb", "depth", "normal"), pretrained=path, decoder_widths=SMALL)
    enc = model.encoder
    torch.testing.assert_close(enc.conv1.weight, resnet.conv1.weight)
    torch.testing.assert_close(enc.layer4[1].conv2.weight, resnet.layer4[1].conv2.weight)
    torch.testing.assert_close(enc.bn1.weight.view(3, 64), resnet.bn1.weight.expand(3, 64))
    torch.testing.assert_close(enc.bn1.running_mean.view(3, 64), resnet.bn1.running_mean.expand(3, 64))
    # Without fc, and from a DataParallel save under "state_dict", works too.
    sd = {f"module.{k}": v for k, v in resnet.state_dict().items() if not k.startswith("fc.")}
    torch.save({"state_dict": sd}, path)
    again = RefineNetCEN("resnet18", 4, pretrained=str(path), decoder_widths=SMALL)
    torch.testing.assert_close(again.encoder.conv1.weight, resnet.conv1.weight)


def test_bad_pretrained_files_name_the_file(tmp_path):
    wrong = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet18().state_dict(), wrong)
    with pytest.raises(ValueError, match=r"r34.pth does not hold resnet34 weights[\s\S]*layer1.2"):
        _meta("resnet34", 4, pretrained=wrong)
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(wrong.read_bytes()[:1000])
    with pytest.raises(ValueError, match="cut.pth: cannot read it"):
        _meta("resnet18", 4, pretrained=truncated)
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        _meta("resnet18", 4, pretrained=tmp_path / "nothere.pth")


def test_imagenet_asks_torchvision_for_its_weights_enum(monkeypatch):
    seen = {}
    real = torchvision.models.resnet50

    def fake(*, weights=None, progress=True):
        seen["weights"] = weights
        return real(weights=None)

    monkeypatch.setattr(torchvision.models, "resnet50", fake)
    _meta("resnet50", 40, pretrained="imagenet")
    assert seen["weights"] is torchvision.models.ResNet50_Weights.IMAGENET1K_V1


# -- errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backbone": "resnet11"}, r"unknown backbone 'resnet11'; expected one of \['resnet18'"),
        ({"backbone": 101}, "unknown backbone 101"),
        ({"num_classes": 0}, "num_classes must be an int >= 1, got 0"),
        ({"num_classes": 2.5}, "num_classes must be an int >= 1"),
        ({"modalities": ()}, "at least one modality"),
        ({"modalities": ("rgb", "rgb")}, "more than once"),
        ({"modalities": ("rgb", "ensemble")}, "reserved"),
        ({"threshold": -1.0}, "threshold must be"),
        ({"dropout": 1.5}, "dropout must be"),
        ({"pretrained": 3}, "pretrained must be"),
        ({"decoder_widths": (1, 2)}, "decoder_widths must be 4 positive ints"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        _meta(**{"backbone": "resnet18", **kwargs})


def test_modalities_as_a_string_is_refused():
    with pytest.raises(TypeError, match="got the string 'rgb'"):
        _meta("resnet18", 4, "rgb")


def test_decoder_alone_checks_its_input():
    with pytest.raises(ValueError, match=r"in_channels must give the channels of >= 1 encoder stages"):
        RefineNetDecoder((), 3)
    with pytest.raises(ValueError, match=r"widths must be 3 positive ints \(one per encoder stage, deepest first\)"):
        RefineNetDecoder((64, 128, 256), 3, widths=(32, 16, 16, 16))
    dec = RefineNetDecoder((64, 128, 256), 3, widths=(16, 8, 8))
    with pytest.raises(ValueError, match="expects 3 encoder features, got 4"):
        dec([torch.zeros(1, c, 8, 8) for c in (64, 128, 256, 512)])
