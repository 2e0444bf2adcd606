"""ONNX inference export of a :class:`cen.MultiModal` model, and a runner for the exported file.

:func:`export_onnx` freezes the model (:func:`cen.export.freeze.freeze`: norms in
eval mode as constants, exchange as constant channel gathers) and exports the
frozen graph with PyTorch's ``torch.export``-based ONNX exporter
(``torch.onnx.export(..., dynamo=True)``). The TorchScript-based exporter
(``dynamo=False``, deprecated since PyTorch 2.9) is not used: its tracer records
the RefineNet decoder's ``F.interpolate(size=like.shape[-2:])`` as constant sizes,
so a file exported at one image size fails at another.

The file has one input per modality, named by the modality (``"rgb"``, ...),
``float32 (batch, C, height, width)``; one output per modality, named
``"<modality>_out"``, and ``"ensemble"`` when the model has an ensemble. Batch,
height and width are dynamic. Metadata (``metadata_props``): ``cen.inputs`` and
``cen.outputs`` (JSON: output name -> the key :class:`cen.MultiModal` returns),
``cen.modalities`` (all the model's modalities), ``cen.model`` (its ``config``
when it has one), ``cen.version``, and ``cen.size_multiple`` where image sides
must be multiples of a number (a U-Net's ``2**num_downs``), which the runner checks.

:class:`OnnxRunner` runs such a file with onnxruntime, with the modality names
checked, and returns the outputs under the keys the PyTorch model uses.

onnx, onnxscript and onnxruntime are optional (``pip install -e ".[export]"``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cen.core.defaults import ENSEMBLE_KEY
from cen.core.multimodal import MultiModal
from cen.errors import UserError
from cen.export.freeze import FreezeError, FrozenModel, freeze

#: Suffix of a modality's output name: the input ``"rgb"`` gives the output ``"rgb_out"`` (ONNX names must differ).
OUTPUT_SUFFIX = "_out"
#: Default example for tracing: batch 2 (torch.export specialises a dimension of size 1) at this side.
EXAMPLE_SIDE = 64
EXAMPLE_BATCH = 2
META_INPUTS, META_OUTPUTS, META_MODALITIES, META_MODEL, META_VERSION, META_MULTIPLE = (
    "cen.inputs", "cen.outputs", "cen.modalities", "cen.model", "cen.version", "cen.size_multiple",
)  # fmt: skip
INSTALL_HINT = 'pip install -e ".[export]" (onnx, onnxscript, onnxruntime)'


class ExportError(ValueError, UserError):
    """Bad input to the export or the runner; the message names the file, modality or argument."""


def _require(module: str, purpose: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{purpose} needs the package {module!r}: {INSTALL_HINT}") from None


def output_name(key: str) -> str:
    """The ONNX output name of the model output ``key`` (a modality name, or ``"ensemble"``)."""
    return key if key == ENSEMBLE_KEY else f"{key}{OUTPUT_SUFFIX}"


def example_inputs(
    model: MultiModal, names: Sequence[str] | None = None, size: tuple[int, int] | None = None, *, seed: int = 0
) -> dict[str, Tensor]:
    """Random ``{name: Tensor(2, C, H, W)}`` to trace ``model`` with.

    ``C`` is the first convolution's input channels; ``(H, W)`` is ``size`` or
    ``64 x 64`` rounded up to the model's ``multiple`` where it has one (e.g. a U-Net's
    ``2**num_downs``). ``names`` defaults to all the model's modalities.
    """
    conv = next((m for m in model.model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    channels = conv.in_channels if conv is not None else 3
    if size is None:
        multiple = int(getattr(model.model, "multiple", 1))
        side = -(-EXAMPLE_SIDE // multiple) * multiple
        size = (side, side)
    generator = torch.Generator().manual_seed(seed)
    return {n: torch.randn(EXAMPLE_BATCH, channels, *size, generator=generator) for n in (names or model.names)}


def _check_example(example: Mapping[str, Tensor], names: Sequence[str]) -> list[Tensor]:
    if not isinstance(example, Mapping):
        raise ExportError(
            f"example must be a mapping {{modality: Tensor}} for {list(names)}, got {type(example).__name__}"
        )
    if set(example) != set(names):
        raise ExportError(f"example has the modalities {list(example)}; the exported graph takes exactly {list(names)}")
    tensors = []
    for name in names:
        t = example[name]
        if not isinstance(t, Tensor) or t.dim() < 3 or not t.is_floating_point():
            raise ExportError(f"example[{name!r}] must be a float Tensor (B, C, ...), got {getattr(t, 'shape', t)!r}")
        if t.shape[0] < 2 or any(s < 2 for s in t.shape[2:]):
            raise ExportError(
                f"example[{name!r}] has shape {tuple(t.shape)}; batch and spatial sizes must be >= 2, since the "
                "exporter would fix a size of 1 in the graph"
            )
        tensors.append(t.detach().float().cpu())
    if len({tuple(t.shape) for t in tensors}) > 1:
        raise ExportError(f"example tensors differ in shape: { {n: tuple(t.shape) for n, t in zip(names, tensors)} }")
    return tensors


def export_program(frozen: FrozenModel, example: Sequence[Tensor], opset: int | None = None):
    """The :class:`torch.onnx.ONNXProgram` of ``frozen`` with dynamic batch and spatial sizes, axes renamed."""
    _require("onnxscript", "ONNX export")
    dynamic = torch.export.Dim.DYNAMIC
    shapes = tuple({i: dynamic for i in (0, *range(2, t.dim()))} for t in example)
    program = torch.onnx.export(
        frozen, tuple(example), None, input_names=list(frozen.inputs),
        output_names=[output_name(k) for k in frozen.outputs], opset_version=opset,
        dynamic_shapes={"inputs": shapes}, dynamo=True, external_data=False, verbose=False,
    )  # fmt: skip
    first = program.model.graph.inputs[0].shape
    axes = ["batch", None, *(("height", "width") if len(first) == 4 else (f"dim{i}" for i in range(2, len(first))))]
    program.rename_axes({dim: new for dim, new in zip(first, axes) if new is not None and not isinstance(dim, int)})
    return program


def export_onnx(
    model: MultiModal,
    path: str | os.PathLike,
    *,
    example: Mapping[str, Tensor] | None = None,
    opset: int | None = None,
    present: Sequence[str] | None = None,
) -> Path:
    """Export ``model`` for inference to the ONNX file ``path`` (written atomically); returns the path.

    Args:
        model: a :class:`cen.MultiModal` (``RefineNetCEN``, ``UNetCEN``, or any converted
            network wrapped in ``MultiModal``). It is not changed: a frozen copy is exported.
        path: the ``.onnx`` file to write (its folder is created).
        example: ``{modality: Tensor(B, C, H, W)}`` to trace with (any batch and size >= 2:
            both stay dynamic); default random ``(2, C, 64, 64)`` (sides rounded up to the
            model's ``multiple`` where it has one, e.g. 64 for a U-Net of 6 levels).
        opset: the ONNX opset (default: the exporter's).
        present: export for this subset of the modalities (missing-modality inference:
            exchange among the present ones only, ensemble renormalised); default all.

    Raises :class:`cen.export.freeze.FreezeError` for a model that cannot be frozen (the
    ``random`` fusion, ...), :class:`ExportError` for a bad ``example``.
    """
    from cen import __version__
    from cen.atomic import atomic_write

    _require("onnx", "ONNX export")
    frozen = freeze(model, present)
    example = example_inputs(model, frozen.inputs) if example is None else example
    tensors = _check_example(example, frozen.inputs)
    keys = list(frozen.outputs)
    clash = sorted(set(frozen.inputs) & {output_name(k) for k in keys})
    if clash:
        raise ExportError(
            f"modality names {clash} clash with the output names (modality + {OUTPUT_SUFFIX!r}); rename them"
        )
    proto = export_program(frozen, tensors, opset).model_proto
    meta = {
        META_INPUTS: json.dumps(list(frozen.inputs)),
        META_OUTPUTS: json.dumps({output_name(k): k for k in keys}),
        META_MODALITIES: json.dumps(list(model.names)),
        META_VERSION: __version__,
    }
    multiple = getattr(model.model, "multiple", None)  # e.g. a U-Net: sides multiples of 2**num_downs
    if isinstance(multiple, int) and multiple > 1:
        meta[META_MULTIPLE] = str(multiple)
    config = getattr(model, "config", None)
    if isinstance(config, Mapping):
        meta[META_MODEL] = json.dumps(config, default=str)
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    if proto.ByteSize() >= 2**31:
        raise ExportError(
            f"{path}: the model is {proto.ByteSize() / 2**30:.1f} GiB, over ONNX's 2 GiB single-file limit"
        )
    data = proto.SerializeToString()
    atomic_write(path, lambda fh: fh.write(data))
    return Path(path)


def verify_onnx(
    model: MultiModal,
    path: str | os.PathLike,
    *,
    example: Mapping[str, Tensor] | None = None,
    present: Sequence[str] | None = None,
) -> dict[str, float]:
    """``{output key: max |onnxruntime - PyTorch|}`` of the file ``path`` against ``model.eval()`` on ``example``.

    ``example`` defaults to :func:`example_inputs` for the file's inputs (``present``).
    """
    runner = OnnxRunner(path)
    names = list(runner.inputs)
    if present is not None and set(present) != set(names):
        raise ExportError(f"{path} takes the modalities {names}, not present={list(present)}")
    example = example_inputs(model, names) if example is None else example
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model({n: example[n] for n in names})
    finally:
        model.train(was_training)
    got = runner(example)
    return {k: float(np.abs(expected[k].detach().cpu().numpy() - v).max()) for k, v in got.items()}


class OnnxRunner:
    """Run an ONNX file written by :func:`export_onnx` with onnxruntime.

    ``runner({modality: array or Tensor (B, C, H, W)})`` returns
    ``{key: np.ndarray}`` with the keys :class:`cen.MultiModal` uses (the modality
    names and ``"ensemble"``); :attr:`onnx_outputs` maps the file's output names to
    them. The given modalities must be exactly the file's inputs (:attr:`inputs`);
    otherwise a one-line :class:`ExportError` names the file, the expected and the
    given names. Inputs are converted to ``float32``.

    Args:
        path: the ``.onnx`` file.
        providers: onnxruntime execution providers (default: the CPU).
        threads: onnxruntime's intra-op threads (default: onnxruntime's choice).
    """

    def __init__(
        self, path: str | os.PathLike, *, providers: Sequence[str] | None = None, threads: int | None = None
    ) -> None:
        ort = _require("onnxruntime", "running an ONNX model")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX file")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as err:  # onnxruntime raises its own types for unreadable files
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ExportError(f"{self.path}: not a loadable ONNX model ({first})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.inputs: tuple[str, ...] = tuple(i.name for i in self.session.get_inputs())
        self._shapes = {i.name: i.shape for i in self.session.get_inputs()}
        names = [o.name for o in self.session.get_outputs()]
        mapping = json.loads(meta[META_OUTPUTS]) if META_OUTPUTS in meta else {}
        self.onnx_outputs: dict[str, str] = {n: mapping.get(n, n) for n in names}
        self.modalities: tuple[str, ...] = (
            tuple(json.loads(meta[META_MODALITIES])) if META_MODALITIES in meta else self.inputs
        )
        self.model_config: dict | None = json.loads(meta[META_MODEL]) if META_MODEL in meta else None
        self.size_multiple: int = int(meta.get(META_MULTIPLE, 1))

    @property
    def outputs(self) -> tuple[str, ...]:
        """The keys of the returned dict, in the file's output order."""
        return tuple(self.onnx_outputs.values())

    @property
    def names(self) -> tuple[str, ...]:
        """The modalities the file takes (as :attr:`cen.MultiModal.names`, for code that asks a model)."""
        return self.inputs

    def check_modalities(self, names: Sequence[str], source: str = "the config") -> None:
        """One-line :class:`ExportError` unless ``names`` (e.g. a config's modalities) are the file's inputs."""
        if set(names) != set(self.inputs):
            raise ExportError(f"{self.path} takes the modalities {list(self.inputs)}, but {source} gives {list(names)}")

    def _array(self, name: str, value) -> np.ndarray:
        if isinstance(value, Tensor):
            value = value.detach().cpu().numpy()
        array = np.asarray(value)
        if not np.issubdtype(array.dtype, np.floating):
            raise ExportError(f"{self.path}: input {name!r} must hold floating-point values, got dtype {array.dtype}")
        shape = self._shapes[name]
        fixed = [(i, s) for i, s in enumerate(shape) if isinstance(s, int)]
        if array.ndim != len(shape) or any(array.shape[i] != s for i, s in fixed):
            want = "(" + ", ".join(str(s) if isinstance(s, int) else str(s) for s in shape) + ")"
            raise ExportError(f"{self.path}: input {name!r} must have shape {want}, got {tuple(array.shape)}")
        return np.ascontiguousarray(array, dtype=np.float32)

    def __call__(self, inputs: Mapping[str, np.ndarray | Tensor]) -> dict[str, np.ndarray]:
        """``{modality: (B, C, H, W)}`` -> ``{modality: output, ..., "ensemble": output}`` as float32 arrays."""
        if not isinstance(inputs, Mapping):
            raise ExportError(f"{self.path}: expected a mapping {{modality: array}} for {list(self.inputs)}, "
                              f"got {type(inputs).__name__}")  # fmt: skip
        self.check_modalities(list(inputs), source="the input")
        feed = {name: self._array(name, inputs[name]) for name in self.inputs}
        shapes = {tuple(a.shape) for a in feed.values()}
        if len(shapes) > 1:
            raise ExportError(
                f"{self.path}: the modalities must have one shape, got { {n: a.shape for n, a in feed.items()} }"
            )
        sides = next(iter(shapes))[2:]
        if any(s % self.size_multiple for s in sides):
            raise ExportError(f"{self.path}: image sides must be multiples of {self.size_multiple} for this model, "
                              f"got {'x'.join(map(str, sides))}")  # fmt: skip
        values = self.session.run(list(self.onnx_outputs), feed)
        return dict(zip(self.onnx_outputs.values(), values))

    def run_torch(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """:meth:`__call__` with tensors out, on the device of the first input: a stand-in for the PyTorch model."""
        device = next(iter(inputs.values())).device if inputs else torch.device("cpu")
        return {k: torch.from_numpy(v).to(device) for k, v in self(inputs).items()}

    def __repr__(self) -> str:
        return f"OnnxRunner({str(self.path)!r}, inputs={list(self.inputs)}, outputs={list(self.outputs)})"


__all__ = [
    "ExportError",
    "FreezeError",
    "OnnxRunner",
    "example_inputs",
    "export_onnx",
    "export_program",
    "output_name",
    "verify_onnx",
]
