"""cen.FusionSpec: one value for the fusion settings, and convert's keywords as a shim over it."""

import copy
import dataclasses
import pickle

import pytest
import torch
import torchvision

import cen
from cen.core.fusions import FUSIONS
from cen.core.norms import _ModalityNorm


def _points(model):
    return {n: m.fusion.name for n, m in model.named_modules() if isinstance(m, _ModalityNorm) and m.fusion}


def test_spec_and_keywords_convert_alike():
    torch.manual_seed(0)
    a = cen.convert(torchvision.models.resnet18(), 2, cen.FusionSpec("fixed", {"fraction": 0.25}, threshold=0.05))
    torch.manual_seed(0)
    b = cen.convert(torchvision.models.resnet18(), 2, fusion="fixed", fusion_options={"fraction": 0.25}, threshold=0.05)
    assert _points(a) == _points(b) and set(_points(a).values()) == {"fixed"}
    assert {n for n, _ in a.named_modules()} == {n for n, _ in b.named_modules()}
    norm = a.layer1[0].bn1
    assert norm.threshold == 0.05 and norm.fusion.fraction == 0.25


def test_points_false_and_none_mean_no_fusion_point():
    for points in (False, None):
        net = cen.convert(torchvision.models.resnet18(), 2, exchange=points)
        assert _points(net) == {}
    assert _points(cen.convert(torchvision.models.resnet18(), 2, cen.FusionSpec(points=False))) == {}


def test_unshared_spec_makes_private_convs():
    net = cen.convert(torchvision.models.resnet18(), 2, cen.FusionSpec(shared_convs=False))
    assert type(net.conv1).__name__ == "ModalityConv2d"


def test_spec_and_keywords_together_is_an_error():
    with pytest.raises(TypeError, match="not both"):
        cen.convert(torchvision.models.resnet18(), 2, cen.FusionSpec(), threshold=0.1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"strategy": "exchnage"}, "unknown fusion 'exchnage'; known: exchange"),
        ({"strategy": "fixed", "options": {"fractoin": 0.3}}, "has no option 'fractoin'"),
        ({"threshold": -1.0}, "threshold must be >= 0"),
        ({"points": "everywhere"}, "not understood"),
        ({"shared_convs": "yes"}, "shared_convs must be a bool"),
    ],
)
def test_bad_specs_name_the_setting(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        cen.FusionSpec(**kwargs)


def test_round_trip_and_custom_points():
    spec = cen.FusionSpec("random", {"fraction": 0.2, "seed": 3}, threshold=0.01, points=True, shared_convs=False)
    assert cen.FusionSpec.from_dict(spec.to_dict()) == spec
    custom = spec.replace(points=["layer1.0.bn1"])
    assert custom.to_dict()["points"] == "custom"
    with pytest.raises(ValueError, match="custom points"):
        cen.FusionSpec.from_dict(custom.to_dict())
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.strategy = "sum"
    assert copy.deepcopy(spec) == spec and pickle.loads(pickle.dumps(spec)) == spec


def test_strategy_flags_replace_lists_kept_elsewhere():
    linear = {n for n in FUSIONS.names() if cen.FusionSpec(n).strategy_class.linear}
    assert linear == {"exchange", "fixed", "discard", "sum", "none"}
    assert [n for n in FUSIONS.names() if not FUSIONS.get(n).deterministic] == ["random"]
