"""Unshared convolutions: one grouped conv on the stacked batch equals a loop of separate per-modality convs."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import cen
from cen.nn import ModalityConv2d, ModalityLinear


def _perturbed(layer):
    """Give every modality's slot different weights, so a wrong slot or batch row shows."""
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p))
    return layer


@pytest.mark.parametrize("num", [2, 3])
@pytest.mark.parametrize("groups, stride, bias", [(1, 1, True), (2, 2, False)])
def test_grouped_conv_equals_a_loop_of_separate_convs(num, groups, stride, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=stride, padding=1, groups=groups, bias=bias)
    twin = _perturbed(ModalityConv2d(conv, num)).double()
    parts = [torch.randn(3, 4, 7, 5, dtype=torch.float64, requires_grad=True) for _ in range(num)]
    out = cen.unstack(twin(cen.stack(parts)), [str(m) for m in range(num)])  # row b*M + m is sample b, modality m
    weight = twin.weight.detach().clone().requires_grad_(True)
    bias_ref = None if twin.bias is None else twin.bias.detach().clone().requires_grad_(True)
    grads = []
    for m, xm in enumerate(parts):
        rows = slice(m * 6, (m + 1) * 6)
        ref = F.conv2d(xm, weight[rows], None if bias_ref is None else bias_ref[rows], stride, 1, 1, groups)
        torch.testing.assert_close(out[str(m)], ref)
        g = torch.randn_like(ref)
        grads.append(g)
        ref.backward(g, inputs=[weight] + ([bias_ref] if bias_ref is not None else []))
    expected_x = [torch.autograd.grad(F.conv2d(xm, weight[m * 6 : (m + 1) * 6].detach(), None, stride, 1, 1, groups), xm, g)[0]
                  for m, (xm, g) in enumerate(zip(parts, grads))]  # fmt: skip
    torch.autograd.backward(list(out.values()), grads)
    torch.testing.assert_close(twin.weight.grad, weight.grad)
    if bias_ref is not None:
        torch.testing.assert_close(twin.bias.grad, bias_ref.grad)
    for xm, expected in zip(parts, expected_x):
        torch.testing.assert_close(xm.grad, expected)


@pytest.mark.parametrize("shape", [(3, 5), (3, 4, 5)])
def test_private_linear_equals_a_loop(shape):
    torch.manual_seed(0)
    twin = _perturbed(ModalityLinear(nn.Linear(5, 2), 3))
    parts = [torch.randn(*shape) for _ in range(3)]
    out = cen.unstack(twin(cen.stack(parts)), ["a", "b", "c"])
    for m, (name, xm) in enumerate(zip("abc", parts)):
        torch.testing.assert_close(out[name], F.linear(xm, twin.weight[m], twin.bias[m]))


def test_convert_unshares_and_starts_from_the_shared_weights():
    torch.manual_seed(0)
    plain = torchvision.models.resnet18(num_classes=4)
    n_conv = sum(p.numel() for m in plain.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) for p in m.parameters())
    other = torchvision.models.resnet18(num_classes=4)
    other.load_state_dict(plain.state_dict())
    shared = cen.convert(plain, 2, exchange=False).eval()
    unshared = cen.convert(other, 2, shared_convs=False, exchange=False).eval()
    assert isinstance(unshared.conv1, ModalityConv2d) and isinstance(unshared.fc, ModalityLinear)
    assert isinstance(unshared.layer2[0].downsample[0], ModalityConv2d)
    assert sum(p.numel() for p in unshared.parameters()) == sum(p.numel() for p in shared.parameters()) + n_conv
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(unshared(x), shared(x), rtol=1e-4, atol=1e-4)
        _perturbed(unshared.fc)  # now modality 1 has its own classifier: its outputs change, and only its
        out, base = unshared(x).view(2, 2, 4), shared(x).view(2, 2, 4)
    assert not torch.allclose(out, base)


def test_unshared_network_compiles_without_graph_breaks():
    net = cen.convert(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)),
        2, shared_convs=False, exchange=True,
    )  # fmt: skip
    x = torch.randn(4, 3, 6, 6)
    explanation = torch._dynamo.explain(net)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_unshared_errors():
    twin = ModalityConv2d(nn.Conv2d(3, 4, 1), 3)
    with pytest.raises(ValueError, match="batch size 4 is not divisible by the number of modalities 3"):
        twin(torch.randn(4, 3, 2, 2))
    with pytest.raises(ValueError, match="padding_mode='zeros' only"):
        ModalityConv2d(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), 2)
    with pytest.raises(TypeError, match="shared_convs must be a bool"):
        cen.convert(torchvision.models.resnet18(), 2, shared_convs="no")


def test_unshared_layers_refuse_a_subset_of_modalities():
    # With 2 of 3 modalities a batch of 6 rows is still divisible by 3: without the check the rows would be
    # silently sent through the wrong modality's weights.
    from cen.core.context import present_modalities
    from cen.nn import ModalityConv2d, ModalityLinear

    conv = ModalityConv2d(torch.nn.Conv2d(2, 3, 1), 3)
    linear = ModalityLinear(torch.nn.Linear(2, 3), 3)
    with present_modalities((0, 2)):
        with pytest.raises(ValueError, match="need every modality"):
            conv(torch.randn(6, 2, 4, 4))
        with pytest.raises(ValueError, match="need every modality"):
            linear(torch.randn(6, 2))
    assert conv(torch.randn(6, 2, 4, 4)).shape == (6, 3, 4, 4)


def test_unsharing_leaves_the_layers_of_a_fusion_strategy_alone():
    net = cen.convert(torchvision.models.resnet18(), 2, fusion="gated_sum", shared_convs=False)
    gate = net.layer1[0].bn1.fusion
    assert not any(isinstance(m, (ModalityConv2d, ModalityLinear)) for m in gate.modules())
    assert isinstance(net.layer1[0].conv1, ModalityConv2d)
    x = {"rgb": torch.randn(3, 3, 32, 32), "depth": torch.randn(3, 3, 32, 32)}
    out = cen.MultiModal(net, ["rgb", "depth"])(x)
    assert out["rgb"].shape == (3, 1000)
