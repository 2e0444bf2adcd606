"""cen.MultiModal: names at the edge, one stacked run, missing modalities at inference."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cen
from tests.core.reference_impl import reference_exchange

NAMES = ("rgb", "depth", "normal")


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.bn(self.conv1(x)))).mean(dim=(2, 3))


def _model(threshold=0.1):
    net = cen.convert(TinyNet(), 3, threshold=threshold, exchange=["bn"])
    with torch.no_grad():
        net.bn.weight.uniform_(-1, 1)
        net.bn.gamma[:, :3] = 0.01  # every modality replaces channels 0..2
        net.bn.gamma[1, 5] = -0.05
        net.bn.running_mean.normal_()
        net.bn.running_var.uniform_(0.5, 2)
    return cen.MultiModal(net, NAMES, ensemble=True)


def _reference(mm, inputs, present):
    net, idx = mm.model, [NAMES.index(n) for n in present]
    bn, channels = net.bn, 8
    ys = []
    for p, name in zip(idx, present):
        sl = slice(p * channels, (p + 1) * channels)
        h = net.conv1(inputs[name])
        ys.append(
            F.batch_norm(h, bn.running_mean[sl], bn.running_var[sl], bn.weight[sl], bn.bias[sl], False, 0.0, bn.eps)
        )
    ys = reference_exchange(ys, bn.gamma[idx], bn.threshold)
    outs = {name: net.conv2(torch.relu(y)).mean(dim=(2, 3)) for name, y in zip(present, ys)}
    alpha = torch.softmax(mm.ensemble.alpha[idx], 0)
    outs["ensemble"] = sum(a * outs[name] for a, name in zip(alpha, present))
    return outs


SUBSETS = [s for r in range(1, 4) for s in itertools.combinations(NAMES, r)]


@pytest.mark.parametrize("present", SUBSETS, ids=["+".join(s) for s in SUBSETS])
def test_missing_modality_inference_matches_reference(present):
    mm = _model().eval()
    with torch.no_grad():
        mm.ensemble.alpha.copy_(torch.tensor([0.3, -0.2, 1.0]))
    inputs = {name: torch.randn(2, 3, 5, 5) for name in present}
    with torch.no_grad():
        out = mm(inputs)
        ref = _reference(mm, inputs, present)
    assert set(out) == set(present) | {"ensemble"}
    for key in ref:
        torch.testing.assert_close(out[key], ref[key], rtol=1e-5, atol=1e-5)
    # no state is left behind: afterwards a stacked batch means "all modalities" again
    assert cen.core.context.current_present() is None
    assert mm.model(torch.randn(2 * len(NAMES), 3, 5, 5)).shape == (2 * len(NAMES), 4)


def test_single_modality_does_not_exchange():
    mm = _model().eval()
    x = torch.randn(2, 3, 5, 5)
    net = mm.model
    with torch.no_grad():
        out = mm({"depth": x})["depth"]
        bn = net.bn
        sl = slice(8, 16)
        h = F.batch_norm(
            net.conv1(x), bn.running_mean[sl], bn.running_var[sl], bn.weight[sl], bn.bias[sl], False, 0.0, bn.eps
        )
        torch.testing.assert_close(out, net.conv2(torch.relu(h)).mean(dim=(2, 3)))


def test_order_of_the_mapping_does_not_matter():
    mm = _model().eval()
    inputs = {name: torch.randn(2, 3, 5, 5) for name in NAMES}
    with torch.no_grad():
        a = mm(inputs)
        b = mm(dict(reversed(list(inputs.items()))))
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_missing_modality_in_training_is_an_error():
    mm = _model().train()
    with pytest.raises(ValueError, match=r"modalities \['normal'\] are missing; in training"):
        mm({"rgb": torch.randn(2, 3, 5, 5), "depth": torch.randn(2, 3, 5, 5)})


def test_unknown_modality_is_an_error():
    mm = _model().eval()
    with pytest.raises(ValueError, match=r"unknown modalities \['ir'\]"):
        mm({"rgb": torch.randn(2, 3, 5, 5), "ir": torch.randn(2, 3, 5, 5)})


def test_shape_mismatch_names_both_modalities():
    mm = _model().eval()
    with pytest.raises(ValueError, match="modality depth has shape"):
        mm({"rgb": torch.randn(2, 3, 5, 5), "depth": torch.randn(2, 3, 6, 5)})


def test_names_must_match_the_converted_modalities():
    net = cen.convert(TinyNet(), 2, exchange=["bn"])
    with pytest.raises(ValueError, match="converted for another number of modalities"):
        cen.MultiModal(net, NAMES)
