"""The converted model is one graph: no graph breaks, no data-dependent ops."""

import copy

import pytest
import torch
import torchvision
from torch.utils._python_dispatch import TorchDispatchMode

import cen

# Ops that need the data on the host (a sync on a GPU) or give data-dependent shapes.
FORBIDDEN = ("nonzero", "masked_select", "_local_scalar_dense", "item", "masked_scatter")


class OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.__name__)
        return func(*args, **(kwargs or {}))


def _converted(num=2, arch="resnet50"):
    model = cen.convert(getattr(torchvision.models, arch)(num_classes=10), num)
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "exchange", False):
                m.gamma[:, ::3] = 0.001  # exchange really happens
    return model


def test_forward_and_backward_have_no_nonzero_or_host_sync():
    model = _converted().train()
    x = torch.randn(4, 3, 64, 64)
    with OpLog() as log:
        out = model(x)
        out.sum().backward()
    assert any(op.startswith("where") for op in log.ops)  # the exchange ran
    bad = sorted({op for op in log.ops if op.split(".")[0] in FORBIDDEN})
    assert not bad, f"data-dependent ops in the converted model: {bad}"


@pytest.mark.parametrize("num, arch", [(2, "resnet50"), (3, "resnet18")])
def test_compiles_with_zero_graph_breaks(num, arch):
    # M = 2 exchanges by a channel gather, M > 2 by torch.where: both must stay one graph
    model = _converted(num, arch).train()
    x = torch.randn(2 * num, 3, 64, 64)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    torch._dynamo.reset()
    # Compiled, the norms take the (B, M, C, ...) route; eager, the one-call route: the same
    # step. In float64, because batch statistics over 2x2 maps of 2 samples in layer4 make a
    # deep float32 network's gradients too noisy to compare tightly.
    model, x = model.double(), x.double()
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out, expected = compiled(x), eager(x)
    torch.testing.assert_close(out, expected)
    out.square().mean().backward()
    expected.square().mean().backward()
    for (name, p), q in zip(model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    for (name, b), c in zip(model.named_buffers(), eager.buffers()):
        torch.testing.assert_close(b, c, msg=name)
