"""``cen predict``: run a checkpoint on one sample (segment an RGB-D image, or translate domains).

    cen predict --checkpoint runs/scenes/best.pt --rgb A.png --depth B.png --out pred.png
    cen predict --checkpoint runs/scenes3/best.pt --input rgb=A.png --input normal=N.png --out pred.png
    cen predict --checkpoint G.pt --input reshading=a.png --input edge_texture=b.png --out generated/

The task comes from the checkpoint's config, and the task does the work
(:meth:`~cen.tasks.base.Task.read_inputs`, :meth:`~cen.tasks.base.Task.predict`,
:meth:`~cen.tasks.base.Task.write_prediction`); this module only reads the command line,
rebuilds the model in the precision and layout it was trained in, and runs the three.
The model runs on the modalities given (missing-modality inference when some of its
modalities are not).

Segmentation reads each input by its kind as the loaders do (images and HHA 8-bit -> [0, 1]
-> ImageNet mean/std; depth 16-bit x 1/5000 or ``--depth-scale``; normals -> [-1, 1]), runs at
the image's full size and writes the chosen output's arg-max (the ensemble by default) as a
colour PNG and, with ``--labels``, as raw class ids. Translation decodes each ``--input`` as its
Taskonomy domain and writes ``OUT/<branch>.png`` for every branch and the ensemble.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from cen.cli.options import add_command, add_options, option
from cen.tasks.base import PredictError
from cen.tasks.segmentation.evaluate import UPSAMPLE_MODES

INPUT_FLAGS = {"rgb": "--rgb", "depth": "--depth"}


#: The options after the model and the inputs, in the order of ``--help``.
OPTIONS = (
    option("--rgb", metavar="PATH", help="8-bit RGB image"),
    option("--depth", metavar="PATH", help="16-bit depth PNG in units of 1/5000 m as NYUDv2 (0 = no measurement)"),
    option("--input", action="append", metavar="NAME=PATH",
           help="an input by modality or domain name (repeatable), e.g. --input hha=h.png, --input normal=n.png; "
           "decoded by its kind (docs/data.md)"),
    option("--out", required=True, metavar="PATH",
           help="segmentation: colour PNG of the predicted classes; translation: folder for <branch>.png"),
    option("--labels", metavar="PATH", help="also write the raw class ids as a PNG (8-bit; 16-bit above 256 classes)"),
    option("--grid", metavar="PATH", help="also write every input (by its kind) and the prediction side by side"),
    option("--modalities", nargs="+", metavar="NAME",
           help="which of the given inputs to feed the model (default: all given)"),
    option("--branch", metavar="NAME",
           help="output to write: 'ensemble' (default when the model has one) or a modality name"),
    option("--scales", nargs="+", type=float, default=[1.0], metavar="S",
           help="test-time scales; several sum the softmax probabilities (default: 1.0)"),
    option("--flip", action="store_true", help="add horizontally flipped runs (test-time augmentation)"),
    option("--upsample", choices=UPSAMPLE_MODES, default="bilinear",
           help="how the logits are resized to the image (default bilinear; bicubic as the reference)"),
    option("--depth-scale", type=float, default=None, metavar="F",
           help="multiplies the raw 16-bit depth (default: the loaders' 1/5000)"),
    option("--device", default="cpu", help="cpu (default), cuda or cuda:N"),
)  # fmt: skip
#: The options the task reads (:attr:`~cen.tasks.base.Task.predict_options`), in the order they are checked.
TASK_OPTIONS = ("scales", "flip", "upsample", "depth_scale", "branch", "labels", "grid")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers, "predict", run,
        help="segment one multimodal image (or translate domains) with a trained checkpoint",
        description="Segment one image (any of the model's modalities: RGB, 16-bit depth, normals, HHA, ...) with a "
        "checkpoint written by `cen train` (or `cen convert-checkpoint`) and write the prediction as a colour PNG; "
        "translation checkpoints write one image per branch.",
    )  # fmt: skip
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="PATH", help="best.pt / last.pt of a run, or a converted checkpoint")
    src.add_argument("--onnx", metavar="PATH", help="a segmentation model exported by cen export, run with onnxruntime")
    add_options(p, OPTIONS)


def run(args: argparse.Namespace) -> int:
    predict(args)
    return 0


def _flag(name: str, path: str) -> str:
    """How the user gave input ``name``: ``--rgb PATH`` or ``--input NAME=PATH``."""
    return f"{INPUT_FLAGS[name]} {path}" if name in INPUT_FLAGS else f"--input {name}={path}"


def _device(spec: str) -> torch.device:
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise PredictError(f"--device {spec!r} is not a device; expected cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PredictError(f"--device {spec}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PredictError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
    return device


def _given_inputs(args: argparse.Namespace) -> dict[str, str]:
    """``{name: path}`` from ``--rgb``, ``--depth`` and ``--input NAME=PATH``."""
    given = {name: getattr(args, name) for name in INPUT_FLAGS if getattr(args, name)}
    for item in args.input or ():
        name, eq, path = item.partition("=")
        if not eq or not name or not path:
            raise PredictError(f"--input {item!r}: expected NAME=PATH, e.g. --input reshading=a.png")
        if name in given:
            raise PredictError(f"input {name!r} is given twice")
        given[name] = path
    if not given:
        raise PredictError(
            "give at least one input image: --rgb PATH, --depth PATH or --input NAME=PATH (e.g. --input normal=n.png)"
        )
    if args.modalities:
        extra = [m for m in args.modalities if m not in given]
        if extra:
            raise PredictError(f"--modalities {extra} have no image; given: {sorted(given)}")
        given = {m: given[m] for m in args.modalities}
    return given


#: argparse defaults of the task options: an option left at its default was not given.
_DEFAULTS = {name: next(o.default for o in OPTIONS if o.dest == name) for name in TASK_OPTIONS}


def _options(args: argparse.Namespace, task) -> dict:
    """The task options given on the command line (an option the task does not take is an error)."""
    options = {}
    for name, default in _DEFAULTS.items():
        value = getattr(args, name)
        if value == default:
            continue
        if name not in task.predict_options:
            flag = "--" + name.replace("_", "-")
            raise PredictError(f"{flag} does not apply to task {task.name!r} (it takes {list(task.predict_options)})")
        options[name] = tuple(value) if name == "scales" else value
    return options


def predict(args: argparse.Namespace):
    """Do what ``cen predict`` does; returns the task's outputs (segmentation: the (H, W) label map)."""
    from cen.tasks import build_task
    from cen.train.checkpoint import load_model_with_config

    given = _given_inputs(args)
    if not args.scales or any(not (s > 0 and math.isfinite(s)) for s in args.scales):
        raise PredictError(f"--scales must be positive numbers, got {args.scales}")
    device = _device(args.device)
    for name, path in given.items():  # cheap errors before the model
        if not Path(path).is_file():
            raise FileNotFoundError(f"{_flag(name, path)}: no such file")
    if args.onnx is not None:
        model, cfg = _onnx_model(args, given)
    else:
        if not Path(args.checkpoint).is_file():
            raise FileNotFoundError(f"--checkpoint {args.checkpoint}: no such file")
        model, cfg = load_model_with_config(args.checkpoint)
    names = getattr(model, "names", None)
    if names is not None:
        unknown = [m for m in given if m not in names]
        if unknown:
            raise PredictError(
                f"{args.checkpoint}: the model takes the modalities {list(names)}; {unknown} is not one of them"
            )
    task = build_task(cfg)
    options = _options(args, task)
    precision = _precision(cfg, device)
    model = precision.prepare_model(model.to(device))
    batch = {k: v.to(device) for k, v in task.read_inputs(given, **options).items()}
    with precision.autocast():
        outputs = task.predict({task.primary: model}, batch, device=device, **options)
    print(task.write_prediction(outputs, Path(args.out), **options), file=sys.stderr)
    return getattr(task, "last_prediction", outputs)


def _precision(cfg, device: torch.device):
    """The checkpoint's ``train.precision`` and layout, as it was trained and evaluated (fp16, which
    needs CUDA, runs in fp32 on another device; ``auto`` in an older checkpoint is resolved here)."""
    from cen.train.hardware import settle
    from cen.train.precision import Precision

    chosen = settle(cfg.train.precision, cfg.train.channels_last, device, inference=True)
    return Precision(chosen.precision, device, channels_last=chosen.channels_last)


class _OnnxModel(torch.nn.Module):
    """An :class:`~cen.export.onnx.OnnxRunner` behind the call a PyTorch model answers (``model(inputs)``)."""

    def __init__(self, runner) -> None:
        super().__init__()
        self.runner, self.names = runner, runner.names

    def forward(self, inputs):
        return self.runner.run_torch(inputs)


def _onnx_model(args, given):
    """``cen predict --onnx``: the exported file stands in for the model (segmentation files only)."""
    from cen.export.onnx import OnnxRunner
    from cen.train.config import load_config

    runner = OnnxRunner(args.onnx)
    config = runner.model_config or {}
    if "num_classes" not in config:
        raise PredictError(
            f"--onnx {args.onnx}: cen predict --onnx runs segmentation models (class scores per "
            f"pixel); this file's model has no num_classes ({sorted(config)[:6]})"
        )
    runner.check_modalities(list(given), source="the given images")
    args.checkpoint = args.onnx  # named in messages
    cfg = load_config(None, [f"modalities=[{','.join(runner.names)}]", f"data.num_classes={config['num_classes']}"])
    return _OnnxModel(runner), cfg
