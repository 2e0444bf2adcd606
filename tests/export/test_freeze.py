"""The frozen copy computes what the eval-mode model computes, with constants (no onnx needed)."""

import pytest
import torch

import cen
from cen.export import FreezeError, freeze
from cen.export.freeze import ChannelGather, ChannelMix, FrozenNorm, Identity, LiveFusion
from cen.models import RefineNetCEN

from .helpers import inputs, randomise_norms, small_cnn

FUSIONS = ["exchange", "sum", "gated_sum", "conditional_norm", "fixed", "discard", "none", "token"]
EXPECTED_FUSE = {  # how each strategy is lowered, for 2 and 3 modalities
    ("exchange", 2): ChannelGather, ("exchange", 3): ChannelMix, ("fixed", 2): ChannelGather,
    ("fixed", 3): ChannelMix, ("discard", 2): ChannelGather, ("discard", 3): ChannelGather,
    ("sum", 2): ChannelMix, ("sum", 3): ChannelMix, ("none", 2): Identity, ("none", 3): Identity,
    ("gated_sum", 2): LiveFusion, ("gated_sum", 3): LiveFusion,
    ("conditional_norm", 2): LiveFusion, ("conditional_norm", 3): LiveFusion,
    ("token", 2): LiveFusion, ("token", 3): LiveFusion,
}  # fmt: skip


def _run(frozen, x):
    with torch.no_grad():
        return dict(zip(frozen.outputs, frozen(*[x[n] for n in frozen.inputs])))


@pytest.mark.parametrize("num", [2, 3])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_frozen_equals_eval_model(fusion, num):
    names = ["rgb", "depth", "normal"][:num]
    options = {"aggregate": "weighted"} if fusion == "exchange" and num == 3 else None
    model = small_cnn(names, fusion, options)
    frozen = freeze(model)
    norms = [m for m in frozen.modules() if isinstance(m, FrozenNorm)]
    assert len(norms) == 2 and all(isinstance(m.fuse, EXPECTED_FUSE[fusion, num]) for m in norms)
    assert not any(isinstance(m, cen.nn.ModalityBatchNorm2d) for m in frozen.modules())
    x = inputs(names, 3, (9, 7))
    with torch.no_grad():
        expected = model(x)
    got = _run(frozen, x)
    assert list(got) == [*names, "ensemble"]
    for key, value in got.items():
        torch.testing.assert_close(value, expected[key], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fusion", ["exchange", "sum", "conditional_norm", "fixed", "discard", "none", "token"])
def test_frozen_subset_equals_missing_modality_inference(fusion):
    names = ["rgb", "depth", "normal"]
    model = small_cnn(names, fusion)
    frozen = freeze(model, present=["normal", "rgb"])
    assert frozen.inputs == ("rgb", "normal") and frozen.outputs == ("rgb", "normal", "ensemble")
    x = inputs(["rgb", "normal"], 2, (6, 6))
    with torch.no_grad():
        expected = model(x)
    for key, value in _run(frozen, x).items():
        torch.testing.assert_close(value, expected[key], atol=1e-5, rtol=1e-5)


def test_freeze_leaves_the_model_unchanged_and_exchange_is_frozen():
    model = small_cnn(["rgb", "depth"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = freeze(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and not model.training
    x = inputs(["rgb", "depth"], 2, (8, 8))
    expected = _run(frozen, x)
    with torch.no_grad():  # changing gamma afterwards changes the model, not the frozen copy
        for m in model.modules():
            if isinstance(m, cen.nn.ModalityBatchNorm2d):
                m.gamma.abs_().clamp_(min=1.0)
    assert all(torch.equal(v, expected[k]) for k, v in _run(frozen, x).items())


def test_refinenet_frozen_equals_eval_model():
    model = randomise_norms(RefineNetCEN("resnet18", 5, ("rgb", "depth"), decoder_widths=(32, 16, 16, 16))).eval()
    x = inputs(["rgb", "depth"], 2, (48, 40))
    with torch.no_grad():
        expected = model(x)
    for key, value in _run(freeze(model), x).items():
        torch.testing.assert_close(value, expected[key], atol=1e-5, rtol=1e-5)


def test_random_fusion_is_refused():
    model = small_cnn(["rgb", "depth"], "random")
    with pytest.raises(FreezeError, match=r"norm 'model\.1' uses fusion 'random'") as err:
        freeze(model)
    assert "\n" not in str(err.value)


def test_gated_sum_needs_every_modality():
    with pytest.raises(FreezeError, match="gated_sum.*reads every modality"):
        freeze(small_cnn(["rgb", "depth"], "gated_sum"), present=["rgb"])


def test_unknown_present_modality_and_non_multimodal_are_refused():
    with pytest.raises(FreezeError, match=r"\['hha'\] are not the model's; it takes \['rgb', 'depth'\]"):
        freeze(small_cnn(["rgb", "depth"]), present=["hha"])
    with pytest.raises(FreezeError, match="expected a cen.MultiModal"):
        freeze(torch.nn.Conv2d(3, 3, 1))
