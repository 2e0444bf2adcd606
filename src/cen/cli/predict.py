"""``cen predict``: segment one RGB-D image with a trained checkpoint.

    cen predict --checkpoint runs/scenes/best.pt --rgb A.png --depth B.png --out pred.png

The images are read and preprocessed as the data loaders do (RGB 8-bit -> [0, 1]
-> ImageNet mean/std; depth 16-bit millimetres x 1/5000, replicated to 3
channels), the model runs at the image's full size, the chosen output (the
ensemble by default) is upsampled bilinearly to that size, and its arg-max is
written as a colour PNG (:func:`cen.train.visualize.colorize` palette) and, with
``--labels``, as a PNG of raw class ids. Without ``--depth`` (or ``--rgb``) the
model runs on the given modality alone (missing-modality inference).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

from cen.train.evaluate import UPSAMPLE_MODES

INPUT_FLAGS = {"rgb": "--rgb", "depth": "--depth"}


class PredictError(ValueError):
    """Bad input to ``cen predict``: the message says which argument and what was expected."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="segment one RGB-D image with a trained checkpoint",
        description="Segment one image (RGB and/or 16-bit depth PNG) with a checkpoint written by `cen train` "
        "(or `cen convert-checkpoint`) and write the prediction as a colour PNG.",
    )
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="best.pt / last.pt of a run, or a converted checkpoint")
    p.add_argument("--rgb", metavar="PATH", help="8-bit RGB image")
    p.add_argument("--depth", metavar="PATH", help="16-bit depth PNG in millimetres (0 = no measurement)")
    p.add_argument("--out", required=True, metavar="PATH", help="colour PNG of the predicted classes")
    p.add_argument("--labels", metavar="PATH", help="also write the raw class ids as a PNG (8-bit; 16-bit above 256 classes)")
    p.add_argument("--grid", metavar="PATH", help="also write input | depth | prediction side by side")
    p.add_argument("--modalities", nargs="+", metavar="NAME",
                   help="which of the given inputs to feed the model (default: all given)")
    p.add_argument("--branch", metavar="NAME",
                   help="output to write: 'ensemble' (default when the model has one) or a modality name")
    p.add_argument("--scales", nargs="+", type=float, default=[1.0], metavar="S",
                   help="test-time scales; several sum the softmax probabilities (default: 1.0)")
    p.add_argument("--flip", action="store_true", help="add horizontally flipped runs (test-time augmentation)")
    p.add_argument("--upsample", choices=UPSAMPLE_MODES, default="bilinear",
                   help="how the logits are resized to the image (default bilinear; bicubic as the reference)")
    p.add_argument("--depth-scale", type=float, default=None, metavar="F",
                   help="multiplies the raw 16-bit depth (default: the loaders' 1/5000)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cen.train.checkpoint import CheckpointError

    try:
        predict(args)
    except (PredictError, CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"cen predict: error: {err}", file=sys.stderr)
        return 2
    return 0


# -- the checkpoint ------------------------------------------------------------
def load_model(path: str | Path, map_location="cpu") -> nn.Module:
    """The model of a ``cen train`` checkpoint (or a ``cen convert-checkpoint`` output), weights loaded.

    Uses ``cen.train.checkpoint.load_model_from_checkpoint`` when that exists;
    otherwise rebuilds the model from the checkpoint's resolved config (with
    ``model.pretrained`` cleared: the weights come from the checkpoint) and
    loads its state dict strictly.
    """
    from cen.train import checkpoint as ckpt_mod

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--checkpoint {path}: no such file")
    loader = getattr(ckpt_mod, "load_model_from_checkpoint", None)
    if loader is not None:
        model = loader(path, map_location=map_location)
        return model[0] if isinstance(model, tuple) else model
    try:
        ckpt = ckpt_mod.load_checkpoint(path, map_location)
    except ckpt_mod.CheckpointError:
        # Not a training checkpoint: perhaps a converted reference one.
        state, meta = ckpt_mod.load_model_weights(path, map_location)
        if not all(k in meta for k in ("backbone", "modalities", "num_classes")):
            raise
        from cen.models import RefineNetCEN

        model = RefineNetCEN(backbone=meta["backbone"], num_classes=int(meta["num_classes"]),
                             modalities=list(meta["modalities"]))
        ckpt_mod.load_model_state(model, state, str(path))
        return model
    if not isinstance(ckpt.get("config"), dict):
        raise ckpt_mod.CheckpointError(f"{path} holds no config; cannot tell which model to build")
    from cen.train import builders
    from cen.train.config import from_container

    cfg = from_container(ckpt["config"])
    cfg.model.pretrained = None
    model = builders.build_model(cfg)
    ckpt_mod.load_model_state(model, ckpt["model"], str(path))
    return model


# -- the images ----------------------------------------------------------------
def read_inputs(paths: dict[str, str], depth_scale: float | None = None) -> dict[str, torch.Tensor]:
    """``{modality: path}`` -> ``{modality: Tensor(1, 3, H, W)}`` preprocessed as the loaders do."""
    from cen.data.constants import REFERENCE_DEPTH_SCALE
    from cen.data.decode import DepthDecoder, ImageDecoder
    from cen.data.images import read_image
    from cen.data.transforms import segmentation_eval

    arrays = {}
    for name, path in paths.items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"{INPUT_FLAGS[name]} {path}: no such file")
        arrays[name] = read_image(path)
    sizes = {name: arr.shape[:2] for name, arr in arrays.items()}
    if len(set(sizes.values())) > 1:
        desc = " but ".join(f"{INPUT_FLAGS[n]} {paths[n]} is {w}x{h}" for n, (h, w) in sizes.items())
        raise PredictError(f"{desc} (width x height); the modalities must be pixel-aligned images of one size")
    decoders = {"rgb": ImageDecoder(channels=3),
                "depth": DepthDecoder(scale=REFERENCE_DEPTH_SCALE if depth_scale is None else depth_scale)}
    sample = {name: decoders[name](arr, Path(paths[name])) for name, arr in arrays.items()}
    sample = segmentation_eval()(sample)  # the loaders' evaluation normalisation
    return {name: torch.as_tensor(sample[name]).float().unsqueeze(0) for name in arrays}


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


def predict(args: argparse.Namespace) -> torch.Tensor:
    """Do what ``cen predict`` does; returns the (H, W) int64 label map."""
    from PIL import Image

    from cen.train.evaluate import model_modalities, predict_scores
    from cen.train.visualize import colorize, save_prediction_grid

    given = {name: getattr(args, name) for name in INPUT_FLAGS if getattr(args, name)}
    if not given:
        raise PredictError("give at least one input image: --rgb PATH and/or --depth PATH")
    if args.modalities:
        extra = [m for m in args.modalities if m not in given]
        if extra:
            raise PredictError(f"--modalities {extra} have no image; given: {sorted(given)}")
        given = {m: given[m] for m in args.modalities}
    device = _device(args.device)
    inputs = read_inputs(given, args.depth_scale)  # before the model: cheap errors first
    model = load_model(args.checkpoint)
    names = model_modalities(model)
    if names is not None:
        unknown = [m for m in inputs if m not in names]
        if unknown:
            raise PredictError(f"{args.checkpoint}: the model takes the modalities {list(names)}; {unknown} is not one of them")
    model.to(device).eval()
    inputs = {k: v.to(device) for k, v in inputs.items()}
    scores = predict_scores(model, inputs, scales=tuple(args.scales), flip=args.flip, upsample=args.upsample)
    branch = args.branch
    if branch is None:
        branch = "ensemble" if "ensemble" in scores else (next(iter(scores)) if len(scores) == 1 else None)
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
        save_prediction_grid(args.grid, cpu.get("rgb"), cpu.get("depth"), None, labels)
    print(f"{branch} prediction of {labels.shape[1]}x{labels.shape[0]} pixels written to {out}", file=sys.stderr)
    return labels
