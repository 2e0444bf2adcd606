"""Freezing and ONNX export of models with modality LayerNorms (ConvNeXt-like, ViT-like) and GroupNorms."""

import numpy as np
import pytest
import torch
from torch import nn

import cen
from cen.core.norms import _ModalityNorm
from cen.core.sparsity import fusion_points
from cen.export import freeze
from cen.export.freeze import FrozenNorm, FrozenTokenNorm, GroupNormalize, LayerNormalize2d, LiveFusion
from tests.core.tiny_models import TinyViT, tiny_convnext

from .helpers import inputs, randomise_norms

BUILDERS = {"convnext": tiny_convnext, "vit": TinyViT}
NAMES = ("rgb", "depth", "normal")


def _model(arch, num, fusion="exchange"):
    torch.manual_seed(0)
    names = NAMES[:num]
    model = cen.MultiModal(cen.convert(BUILDERS[arch](), num, fusion=fusion), names, ensemble=True)
    randomise_norms(model)
    with torch.no_grad():
        for _, norm in fusion_points(model):
            if fusion == "token":  # scores around 0.5: about half the tokens replaced
                norm.threshold = 0.5
            for p in norm.fusion.parameters():
                p.add_(0.1 * torch.randn(p.shape))
    return model.eval()


def _frozen_outputs(frozen, x):
    with torch.no_grad():
        return dict(zip(frozen.outputs, frozen(*[x[n] for n in frozen.inputs])))


@pytest.mark.parametrize("arch", list(BUILDERS))
@pytest.mark.parametrize("fusion", ["exchange", "token", "conditional_norm", "none"])
@pytest.mark.parametrize("num", [2, 3])
def test_frozen_equals_eval_model(arch, fusion, num):
    model = _model(arch, num, fusion)
    frozen = freeze(model)
    assert not any(isinstance(m, _ModalityNorm) for m in frozen.modules())
    kinds = {type(m) for m in frozen.modules() if isinstance(m, (FrozenNorm, FrozenTokenNorm))}
    assert FrozenTokenNorm in kinds  # the channels-last LayerNorms keep their layout
    if arch == "convnext":
        assert any(isinstance(m, LayerNormalize2d) for m in frozen.modules())  # LayerNorm2d keeps its normalisation
    if fusion == "token":
        assert any(isinstance(m, LiveFusion) for m in frozen.modules())
    x = inputs(NAMES[:num], 2, (32, 32))
    with torch.no_grad():
        expected = model(x)
    if fusion == "token":
        shares = [s for v in cen.exchange_stats(model).values() for s in v]
        assert any(0 < s < 1 for s in shares)  # the comparison covers replaced and kept tokens
    got = _frozen_outputs(frozen, x)
    for key, value in got.items():
        torch.testing.assert_close(value, expected[key], atol=1e-5, rtol=1e-5)


def test_frozen_group_norm_and_subset():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(4, 8),
        nn.GELU(), nn.Conv2d(8, 4, 1),
    )  # fmt: skip
    model = cen.MultiModal(cen.convert(net, 3, exchange=True), NAMES, ensemble=True)
    randomise_norms(model).eval()
    for present in (None, ["rgb", "normal"]):
        frozen = freeze(model, present)
        assert sum(isinstance(m, GroupNormalize) for m in frozen.modules()) == 2
        x = inputs(list(frozen.inputs), 2, (6, 5))
        with torch.no_grad():
            expected = model(x)
        for key, value in _frozen_outputs(frozen, x).items():
            torch.testing.assert_close(value, expected[key], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch, num, fusion", [("convnext", 2, "exchange"), ("vit", 3, "token")])
def test_onnxruntime_equals_eager(arch, num, fusion, tmp_path):
    onnx = pytest.importorskip("onnx", reason="ONNX export needs onnx: pip install -e '.[export]'")
    pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript: pip install -e '.[export]'")
    pytest.importorskip("onnxruntime", reason="running ONNX needs onnxruntime: pip install -e '.[export]'")
    from cen.export import OnnxRunner, export_onnx

    model = _model(arch, num, fusion)
    names = NAMES[:num]
    path = export_onnx(model, tmp_path / f"{arch}.onnx", example=inputs(names, 2, (32, 32)))
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "LayerNormalization" in ops and "BatchNormalization" not in ops
    runner = OnnxRunner(path)
    for batch, size in ((1, (32, 32)), (3, (48, 64))):  # batch and image size stay dynamic
        x = inputs(names, batch, size)
        with torch.no_grad():
            expected = model(x)
        got = runner(x)
        assert list(got) == [*names, "ensemble"]
        diffs = {k: float(np.abs(expected[k].numpy() - v).max()) for k, v in got.items()}
        assert max(diffs.values()) < 1e-4, diffs
