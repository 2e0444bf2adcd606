"""``cen predict``: run a checkpoint on one sample (segment an RGB-D image, or translate domains).

    cen predict --checkpoint runs/scenes/best.pt --rgb A.png --depth B.png --out pred.png
    cen predict --checkpoint runs/scenes3/best.pt --input rgb=A.png --input normal=N.png --out pred.png
    cen predict --checkpoint G.pt --input reshading=a.png --input edge_texture=b.png --out generated/

The task comes from the checkpoint's config. Translation decodes each ``--input`` as
its Taskonomy domain (``data.decode`` of the config), applies the evaluation transform,
runs the generator (``eval.generator_mode``) and writes ``OUT/<branch>.png`` for every
branch and the ensemble.

Segmentation: the model is rebuilt from the checkpoint by :func:`cen.load_model`; each input
(``--rgb``, ``--depth`` or ``--input NAME=PATH`` for any modality of the model) is read and
preprocessed as the data loaders do, by its kind (:mod:`cen.data.kinds`: images and HHA 8-bit
-> [0, 1] -> ImageNet mean/std; depth 16-bit x 1/5000 (or ``--depth-scale``), replicated to 3
channels; normals (n + 1) / 2 * 255 -> [-1, 1]), the model runs at the image's full size, the
chosen output (the ensemble by default) is upsampled bilinearly to that size, and its arg-max is
written as a colour PNG (:func:`cen.tasks.segmentation.visualize.colorize` palette) and, with
``--labels``, as a PNG of raw class ids. The model runs on the modalities given (missing-modality
inference when some of its modalities are not).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from cen.core.defaults import ENSEMBLE_KEY
from cen.tasks.errors import UserError
from cen.tasks.segmentation.evaluate import UPSAMPLE_MODES

INPUT_FLAGS = {"rgb": "--rgb", "depth": "--depth"}


class PredictError(UserError, ValueError):
    """Bad input to ``cen predict``: the message says which argument and what was expected."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="segment one multimodal image (or translate domains) with a trained checkpoint",
        description="Segment one image (any of the model's modalities: RGB, 16-bit depth, normals, HHA, ...) with a "
        "checkpoint written by `cen train` (or `cen convert-checkpoint`) and write the prediction as a colour PNG; "
        "translation checkpoints write one image per branch.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="PATH", help="best.pt / last.pt of a run, or a converted checkpoint")
    src.add_argument("--onnx", metavar="PATH", help="a segmentation model exported by cen export, run with onnxruntime")
    p.add_argument("--rgb", metavar="PATH", help="8-bit RGB image")
    p.add_argument(
        "--depth", metavar="PATH", help="16-bit depth PNG in units of 1/5000 m as NYUDv2 (0 = no measurement)"
    )
    p.add_argument(
        "--input",
        action="append",
        metavar="NAME=PATH",
        help="an input by modality or domain name (repeatable), e.g. --input hha=h.png, "
        "--input normal=n.png; decoded by its kind (docs/data.md)",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="PATH",
        help="segmentation: colour PNG of the predicted classes; translation: folder for <branch>.png",
    )
    p.add_argument(
        "--labels", metavar="PATH", help="also write the raw class ids as a PNG (8-bit; 16-bit above 256 classes)"
    )
    p.add_argument(
        "--grid", metavar="PATH", help="also write every input (by its kind) and the prediction side by side"
    )
    p.add_argument(
        "--modalities",
        nargs="+",
        metavar="NAME",
        help="which of the given inputs to feed the model (default: all given)",
    )
    p.add_argument(
        "--branch",
        metavar="NAME",
        help="output to write: 'ensemble' (default when the model has one) or a modality name",
    )
    p.add_argument(
        "--scales",
        nargs="+",
        type=float,
        default=[1.0],
        metavar="S",
        help="test-time scales; several sum the softmax probabilities (default: 1.0)",
    )
    p.add_argument("--flip", action="store_true", help="add horizontally flipped runs (test-time augmentation)")
    p.add_argument(
        "--upsample",
        choices=UPSAMPLE_MODES,
        default="bilinear",
        help="how the logits are resized to the image (default bilinear; bicubic as the reference)",
    )
    p.add_argument(
        "--depth-scale",
        type=float,
        default=None,
        metavar="F",
        help="multiplies the raw 16-bit depth (default: the loaders' 1/5000)",
    )
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    predict(args)
    return 0


# -- the images ----------------------------------------------------------------
def _flag(name: str, path: str) -> str:
    """How the user gave input ``name``: ``--rgb PATH`` or ``--input NAME=PATH``."""
    return f"{INPUT_FLAGS[name]} {path}" if name in INPUT_FLAGS else f"--input {name}={path}"


def read_inputs(
    paths: dict[str, str], depth_scale: float | None = None, kinds: dict[str, str] | None = None
) -> dict[str, torch.Tensor]:
    """``{modality: path}`` -> ``{modality: Tensor(1, 3, H, W)}`` preprocessed as the loaders do,
    each by its kind (``kinds``, else inferred from the name: :func:`cen.data.kinds.infer_kind`)."""
    from cen.data.constants import REFERENCE_DEPTH_SCALE
    from cen.data.decode import decoder_for_kind
    from cen.data.images import read_image
    from cen.data.kinds import infer_kind
    from cen.data.transforms import segmentation_eval
    from cen.data.tvtensors import unwrap_sample, wrap

    arrays = {}
    for name, path in paths.items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"{_flag(name, path)}: no such file")
        arrays[name] = read_image(path)
    sizes = {name: arr.shape[:2] for name, arr in arrays.items()}
    if len(set(sizes.values())) > 1:
        desc = " but ".join(f"{_flag(n, paths[n])} is {w}x{h}" for n, (h, w) in sizes.items())
        raise PredictError(f"{desc} (width x height); the modalities must be pixel-aligned images of one size")
    scale = REFERENCE_DEPTH_SCALE if depth_scale is None else depth_scale
    sample = {}
    for name, arr in arrays.items():
        decoder = decoder_for_kind((kinds or {}).get(name) or infer_kind(name), depth_scale=scale)
        try:
            sample[name] = wrap(decoder(arr, Path(paths[name])), decoder.kind)
        except ValueError as err:  # an image of the wrong kind (e.g. 8-bit depth): the user's file
            raise PredictError(f"{_flag(name, paths[name])}: {err}") from None
    sample = unwrap_sample(segmentation_eval()(sample))  # the loaders' evaluation normalisation
    return {name: sample[name].float().unsqueeze(0) for name in arrays}


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


def predict(args: argparse.Namespace):
    """Do what ``cen predict`` does; returns the task's prediction (segmentation: the (H, W) label map)."""
    from cen.train.checkpoint import load_model_with_config

    given = _given_inputs(args)
    if not args.scales or any(not (s > 0 and math.isfinite(s)) for s in args.scales):
        raise PredictError(f"--scales must be positive numbers, got {args.scales}")
    device = _device(args.device)
    for name, path in given.items():  # cheap errors before the model
        if not Path(path).is_file():
            raise FileNotFoundError(f"{_flag(name, path)}: no such file")
    if args.onnx is not None:
        return _predict_onnx(args, given, device)
    if not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"--checkpoint {args.checkpoint}: no such file")
    model, cfg = load_model_with_config(args.checkpoint)
    from cen.tasks.segmentation.evaluate import model_modalities

    names = model_modalities(model)
    if names is not None:
        unknown = [m for m in given if m not in names]
        if unknown:
            raise PredictError(
                f"{args.checkpoint}: the model takes the modalities {list(names)}; {unknown} is not one of them"
            )
    if cfg.task not in PREDICTORS:
        raise PredictError(f"{args.checkpoint}: cen predict knows the tasks {sorted(PREDICTORS)}, not {cfg.task!r}")
    precision = _precision(cfg, device)
    model = precision.prepare_model(model)
    with precision.autocast():
        return PREDICTORS[cfg.task](args, model, cfg, given, device)


def _precision(cfg, device: torch.device):
    """The checkpoint's ``train.precision`` and layout, as it was trained and evaluated (fp16, which
    needs CUDA, runs in fp32 on another device; ``auto`` in an older checkpoint is resolved here)."""
    from cen.train.hardware import settle
    from cen.train.precision import Precision

    chosen = settle(cfg.train.precision, cfg.train.channels_last, device, inference=True)
    return Precision(chosen.precision, device, channels_last=chosen.channels_last)


def _predict_onnx(args, given, device) -> torch.Tensor:
    """``cen predict --onnx``: the exported file stands in for the model (segmentation files only)."""
    from cen.export.onnx import OnnxRunner

    runner = OnnxRunner(args.onnx)
    config = runner.model_config or {}
    if "num_classes" not in config:
        raise PredictError(
            f"--onnx {args.onnx}: cen predict --onnx runs segmentation models (class scores per "
            f"pixel); this file's model has no num_classes ({sorted(config)[:6]})"
        )
    runner.check_modalities(list(given), source="the given images")
    args.checkpoint = args.onnx  # named in messages
    return _predict_segmentation(args, _OnnxModel(runner), None, given, device)


class _OnnxModel:
    """An :class:`~cen.export.onnx.OnnxRunner` behind the call a PyTorch model answers (``model(inputs)``)."""

    def __init__(self, runner) -> None:
        self.runner, self.names = runner, runner.names

    def __call__(self, inputs):
        return self.runner.run_torch(inputs)

    def to(self, device):
        return self

    def eval(self):
        return self


def _predict_segmentation(args, model, cfg, given, device) -> torch.Tensor:
    from PIL import Image

    from cen.tasks.segmentation.evaluate import predict_scores
    from cen.tasks.segmentation.visualize import colorize, save_prediction_grid

    inputs = read_inputs(given, args.depth_scale)
    model.to(device).eval()
    inputs = {k: v.to(device) for k, v in inputs.items()}
    scores = predict_scores(model, inputs, scales=tuple(args.scales), flip=args.flip, upsample=args.upsample)
    branch = args.branch
    if branch is None:
        branch = ENSEMBLE_KEY if ENSEMBLE_KEY in scores else (next(iter(scores)) if len(scores) == 1 else None)
        if branch is None:
            raise PredictError(f"the model has no ensemble; choose an output with --branch: {list(scores)}")
    if branch not in scores:
        raise PredictError(f"--branch {branch!r} is not an output here; outputs: {list(scores)}")
    labels = scores[branch][0].argmax(0).cpu()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(colorize(labels, ignore_index=None)).save(out)
    if args.labels:
        k = scores[branch].shape[1]
        arr = labels.numpy().astype("uint8" if k <= 256 else "uint16")
        Path(args.labels).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(args.labels)
    if args.grid:
        cpu = {k: v[0].cpu() for k, v in inputs.items()}
        save_prediction_grid(args.grid, inputs=cpu, pred=labels)
    print(f"{branch} prediction of {labels.shape[1]}x{labels.shape[0]} pixels written to {out}", file=sys.stderr)
    return labels


def _predict_translation(args, model, cfg, given, device) -> dict[str, torch.Tensor]:
    """Every branch's generated image as ``OUT/<branch>.png`` (OUT a folder)."""
    from PIL import Image

    from cen.data.images import read_image
    from cen.data.taskonomy import domain_decoder
    from cen.data.tvtensors import unwrap_sample, wrap
    from cen.tasks import build_task
    from cen.tasks.translation.task import image_array

    sample, sizes = {}, {}
    for name, path in given.items():
        try:
            decoder = domain_decoder(name, 3, decode=cfg.data.decode)
            arr = read_image(path)
            sample[name] = wrap(decoder(arr, Path(path)), decoder.kind)
        except ValueError as err:
            raise PredictError(f"--input {name}={path}: {err}") from None
        sizes[name] = tuple(arr.shape[:2])
    if len(set(sizes.values())) > 1:
        raise PredictError(f"the inputs differ in size (height, width): {sizes}; they must be pixel-aligned")
    sample = unwrap_sample(build_task(cfg).eval_transform()(sample))
    inputs = {k: v.float().unsqueeze(0).to(device) for k, v in sample.items()}
    model.to(device).train(cfg.eval.generator_mode == "train")
    with torch.no_grad():
        outputs = {k: v for k, v in model(inputs).items() if isinstance(v, torch.Tensor) and v.ndim == 4}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for branch, image in outputs.items():
        Image.fromarray(image_array(image[0])).save(out / f"{branch}.png")
    print(f"{', '.join(outputs)} images written to {out}/", file=sys.stderr)
    return outputs


#: ``task`` of the checkpoint's config -> what cen predict does with its model.
PREDICTORS = {"segmentation": _predict_segmentation, "translation": _predict_translation}
