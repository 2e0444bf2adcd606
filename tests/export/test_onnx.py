"""ONNX export: onnxruntime equals PyTorch (eval mode) within 1e-4, dynamic batch and size, named in- and outputs."""

import copy

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="ONNX export needs onnx: pip install -e '.[export]'")
pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript: pip install -e '.[export]'")
pytest.importorskip("onnxruntime", reason="running ONNX needs onnxruntime: pip install -e '.[export]'")

import onnx  # noqa: E402

from cen.core.norms import _ModalityNorm  # noqa: E402
from cen.export import ExportError, FreezeError, OnnxRunner, export_onnx  # noqa: E402
from cen.models import RefineNetCEN, UNetCEN  # noqa: E402

from .helpers import inputs, randomise_norms, small_cnn  # noqa: E402

TOL = 1e-4
NAMES = ("rgb", "depth")


def _max_diff(model, runner, x) -> dict[str, float]:
    with torch.no_grad():
        expected = model(x)
    got = runner(x)
    assert set(got) == set(expected)
    return {k: float(np.abs(expected[k].numpy() - v).max()) for k, v in got.items()}


@pytest.fixture(scope="module")
def refinenet():
    torch.manual_seed(0)
    model = RefineNetCEN("resnet18", 5, NAMES, decoder_widths=(32, 16, 16, 16))
    return randomise_norms(model).eval()


@pytest.fixture(scope="module")
def refinenet_file(refinenet, tmp_path_factory):
    return export_onnx(refinenet, tmp_path_factory.mktemp("onnx") / "refinenet.onnx")


def test_refinenet_file_names_and_dynamic_axes(refinenet_file):
    proto = onnx.load(str(refinenet_file))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*proto.graph.input, *proto.graph.output]}  # fmt: skip
    assert [v.name for v in proto.graph.input] == ["rgb", "depth"]
    assert [v.name for v in proto.graph.output] == ["rgb_out", "depth_out", "ensemble"]
    assert dims["rgb"] == ["batch", 3, "height", "width"] and dims["ensemble"][:2] == ["batch", 5]
    # frozen: no |gamma| test, no norm statistics left in the graph
    ops = {n.op_type for n in proto.graph.node}
    assert not ops & {"Abs", "Less", "GreaterOrEqual", "Sqrt", "BatchNormalization"}, ops
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["cen.inputs"] == '["rgb", "depth"]' and '"backbone": "resnet18"' in meta["cen.model"]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("size", [(64, 64), (80, 112)])
def test_refinenet_onnxruntime_equals_pytorch(refinenet, refinenet_file, batch, size):
    runner = OnnxRunner(refinenet_file)
    x = inputs(NAMES, batch, size)
    out = runner(x)
    assert list(out) == ["rgb", "depth", "ensemble"]
    assert out["ensemble"].shape == (batch, 5, size[0] // 4, size[1] // 4)
    diffs = _max_diff(refinenet, runner, x)
    assert max(diffs.values()) < TOL, diffs


def test_refinenet_exchange_matters(refinenet, refinenet_file):
    """The file exchanges: it differs from the same weights with the exchange off (theta = 0)."""
    no_exchange = copy.deepcopy(refinenet)
    exchanging = [m for m in no_exchange.modules() if isinstance(m, _ModalityNorm) and m.exchange]
    assert exchanging and any(bool(m.exchange_mask().any()) for m in exchanging)
    for m in exchanging:
        m.threshold = 0.0
    x = inputs(NAMES, 2, (64, 64))
    got = OnnxRunner(refinenet_file)(x)
    with torch.no_grad():
        plain = no_exchange(x)
    for key in got:
        assert np.abs(got[key] - plain[key].numpy()).max() > 1e-2, key


def test_unet_onnxruntime_equals_pytorch(tmp_path):
    torch.manual_seed(0)
    model = randomise_norms(UNetCEN(["reshading", "edge_texture"], ngf=8, num_downs=5)).eval()
    assert model.generator.multiple == 32  # sides must be multiples of 2**num_downs: 64 and 96 are
    runner = OnnxRunner(export_onnx(model, tmp_path / "unet.onnx"))
    assert runner.inputs == ("reshading", "edge_texture")
    for batch in (1, 2):
        for side in (64, 96):
            diffs = _max_diff(model, runner, inputs(runner.inputs, batch, (side, side)))
            assert set(diffs) == {"reshading", "edge_texture", "ensemble"}
            assert max(diffs.values()) < TOL, (batch, side, diffs)
    with pytest.raises(ExportError, match="image sides must be multiples of 32 for this model, got 80x96"):
        runner(inputs(runner.inputs, 1, (80, 96)))


@pytest.mark.parametrize("fusion", ["exchange", "sum", "gated_sum", "conditional_norm", "fixed", "discard", "none"])
def test_every_freezable_fusion_traces(fusion, tmp_path):
    names = ["rgb", "depth", "normal"]
    model = small_cnn(names, fusion)
    runner = OnnxRunner(export_onnx(model, tmp_path / "m.onnx"))
    for batch, size in ((1, (16, 16)), (4, (12, 20))):
        diffs = _max_diff(model, runner, inputs(names, batch, size))
        assert max(diffs.values()) < TOL, (fusion, batch, size, diffs)


def test_export_for_a_subset_of_modalities(tmp_path):
    model = small_cnn(["rgb", "depth", "normal"])
    runner = OnnxRunner(export_onnx(model, tmp_path / "m.onnx", present=["depth"]))
    assert runner.inputs == ("depth",) and runner.outputs == ("depth", "ensemble")
    diffs = _max_diff(model, runner, inputs(["depth"], 2, (10, 10)))
    assert max(diffs.values()) < TOL


def test_random_fusion_is_refused(tmp_path):
    with pytest.raises(FreezeError, match="fusion 'random'") as err:
        export_onnx(small_cnn(["rgb", "depth"], "random"), tmp_path / "m.onnx")
    assert "\n" not in str(err.value) and not (tmp_path / "m.onnx").exists()


def test_bad_example_is_refused(tmp_path):
    model = small_cnn(["rgb", "depth"])
    with pytest.raises(ExportError, match=r"modalities \['rgb'\]; the exported graph takes exactly"):
        export_onnx(model, tmp_path / "m.onnx", example={"rgb": torch.randn(2, 3, 8, 8)})
    with pytest.raises(ExportError, match="batch and spatial sizes must be >= 2"):
        export_onnx(model, tmp_path / "m.onnx", example={n: torch.randn(1, 3, 8, 8) for n in ("rgb", "depth")})


def test_runner_checks_the_modalities(tmp_path):
    path = export_onnx(small_cnn(["rgb", "depth"]), tmp_path / "m.onnx")
    runner = OnnxRunner(path)
    x = inputs(["rgb", "hha"], 1, (8, 8))
    with pytest.raises(ExportError) as err:
        runner(x)
    message = str(err.value)
    assert str(path) in message and "['rgb', 'depth']" in message and "['rgb', 'hha']" in message
    assert "\n" not in message
    with pytest.raises(ExportError, match=r"takes the modalities \['rgb', 'depth'\], but the config gives \['rgb'\]"):
        runner.check_modalities(["rgb"], source="the config")
    with pytest.raises(
        ExportError, match=r"input 'depth' must have shape \(batch, 3, height, width\), got \(1, 4, 8, 8\)"
    ):
        runner({"rgb": np.zeros((1, 3, 8, 8)), "depth": np.zeros((1, 4, 8, 8))})
    with pytest.raises(ExportError, match="floating-point"):
        runner({n: np.zeros((1, 3, 8, 8), dtype=np.int64) for n in ("rgb", "depth")})
    out = runner({n: np.zeros((1, 3, 8, 8)) for n in ("rgb", "depth")})  # float64 is cast
    assert out["ensemble"].dtype == np.float32
    tensors = runner.run_torch({n: torch.zeros(1, 3, 8, 8) for n in ("rgb", "depth")})
    assert runner.names == ("rgb", "depth") and torch.equal(tensors["ensemble"], torch.from_numpy(out["ensemble"]))


def test_runner_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such ONNX file"):
        OnnxRunner(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ExportError, match="junk.onnx: not a loadable ONNX model"):
        OnnxRunner(junk)


def test_cen_predict_runs_an_onnx_file(refinenet, refinenet_file, tmp_path):
    from PIL import Image

    from cen.cli.main import main
    from cen.tasks import build_task
    from cen.tasks.segmentation.evaluate import predict_scores
    from cen.train.config import load_config

    rng = np.random.default_rng(0)
    rgb, depth = tmp_path / "rgb.png", tmp_path / "depth.png"
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(rgb)
    Image.fromarray(rng.integers(2000, 30000, (48, 64), dtype=np.uint16)).save(depth)
    labels = tmp_path / "labels.png"
    assert (
        main(
            [
                "predict",
                "--onnx",
                str(refinenet_file),
                "--rgb",
                str(rgb),
                "--depth",
                str(depth),
                "--out",
                str(tmp_path / "pred.png"),
                "--labels",
                str(labels),
            ]
        )
        == 0
    )
    inputs = build_task(load_config(None, [])).read_inputs({"rgb": str(rgb), "depth": str(depth)})
    with torch.no_grad():
        expected = predict_scores(refinenet, inputs)["ensemble"][0].argmax(0).numpy()
    assert np.array_equal(np.asarray(Image.open(labels)), expected)
    # a file for other modalities is refused in one line
    assert (
        main(["predict", "--onnx", str(refinenet_file), "--input", f"normal={rgb}", "--out", str(tmp_path / "x.png")])
        == 2
    )
