"""``cen export CONFIG --checkpoint PATH --out model.onnx [key=value ...]``: a checkpoint as an ONNX file.

The model is rebuilt from the checkpoint (:func:`cen.load_model`), checked against
CONFIG's modalities, frozen for inference (norms in eval mode, exchange masks as
constant channel gathers) and exported with :func:`cen.export.export_onnx`: one
input per modality, one output per modality (``<name>_out``) and ``ensemble``,
dynamic batch and image size. By default onnxruntime then runs the file once on the
tracing example and the largest difference from PyTorch is printed.
"""

from __future__ import annotations

import argparse

from cen.cli.options import TRAINED_WITH, add_command, config_arguments, option
from cen.cli.train import EPILOG, _intermixed, resolve_config_path
from cen.errors import UserError

#: Largest |onnxruntime - PyTorch| accepted by the check after export (fp32).
VERIFY_TOLERANCE = 1e-4


class ExportCommandError(UserError, ValueError):
    """Bad input to ``cen export``: the message names the file, modality or argument."""


OPTIONS = (
    *config_arguments(TRAINED_WITH),
    option("--checkpoint", required=True, metavar="PATH", help="a cen checkpoint (best.pt / last.pt / converted)"),
    option("--out", required=True, metavar="PATH", help="the .onnx file to write"),
    option("--modalities", nargs="+", metavar="NAME", default=None,
           help="export for this subset of the modalities (missing-modality inference; default all)"),
    option("--size", nargs=2, type=int, metavar=("H", "W"), default=None,
           help="image size of the tracing example (default 64x64, or the model's multiple); "
           "the file accepts any size"),
    option("--opset", type=int, default=None, metavar="N", help="ONNX opset (default: the exporter's)"),
    option("--no-verify", dest="verify", action="store_false",
           help="skip running the file with onnxruntime against PyTorch after export"),
)  # fmt: skip


def register(subparsers) -> None:
    _intermixed(add_command(
        subparsers, "export", run, OPTIONS,
        help="export a checkpoint to ONNX for inference",
        description="Rebuild the model of a checkpoint, freeze its fusion for inference and write it as ONNX "
        "(one input per modality, outputs <modality>_out and ensemble, dynamic batch and image size).",
        epilog=EPILOG,
    ))  # fmt: skip


def _trained_in(checkpoint) -> str:
    """``"bf16, channels-last"``: the precision and layout the checkpoint records (empty if none)."""
    from cen.train.checkpoint import read_weights

    train = read_weights(checkpoint)[1].train
    if not train.get("precision"):
        return ""
    return f"{train['precision']}, {'channels-last' if train.get('channels_last') is True else 'contiguous'}"


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import cen
    from cen.export import ExportError, FreezeError
    from cen.export.onnx import example_inputs, export_onnx, verify_onnx
    from cen.train.config import load_config

    cfg = load_config(resolve_config_path(args.config), args.overrides)
    if not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"--checkpoint {args.checkpoint}: no such file")
    model = cen.load_model(args.checkpoint).eval()
    names = list(getattr(model, "names", ()))
    if names != list(cfg.modalities):
        raise ExportCommandError(
            f"{args.checkpoint} holds a model for the modalities {names}, but {args.config} gives {list(cfg.modalities)}"
        )
    if args.size is not None and min(args.size) < 2:
        raise ExportCommandError(f"--size must be two sides >= 2, got {args.size}")
    try:
        example = None if args.size is None else example_inputs(model, args.modalities, tuple(args.size))
        path = export_onnx(model, args.out, example=example, opset=args.opset, present=args.modalities)
        if args.verify:
            diffs = verify_onnx(model, path, example=example, present=args.modalities)
    except (ExportError, FreezeError) as err:
        raise ExportCommandError(str(err)) from None
    trained = _trained_in(args.checkpoint)
    print(f"cen export: wrote {path} (computes in fp32{'; the model was trained in ' + trained if trained else ''})")
    if args.verify:
        worst = max(diffs.values())
        print("  max |onnxruntime - pytorch|: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
        if worst > VERIFY_TOLERANCE:
            raise ExportCommandError(
                f"{path}: onnxruntime differs from PyTorch by {worst:.2e} (> {VERIFY_TOLERANCE:g}); the export is wrong"
            )
    return 0
