"""``cen convert-checkpoint IN OUT``: a reference CEN RefineNet checkpoint to ours."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert-checkpoint",
        help="convert a checkpoint of the reference CEN code (yikaiw/CEN) to a cen RefineNetCEN checkpoint",
        description=(
            "Convert a state dict saved by the reference CEN segmentation script (DataParallel 'module.' "
            "prefix, ModuleParallel '.module.' convs, per-modality 'bn_0'/'bn_1' norms, 'alpha'; directly "
            "or under 'segmenter'/'state_dict') into a cen.models.RefineNetCEN checkpoint. The backbone, "
            "number of classes and of modalities are read from the file. Strict: every key is used once "
            "and shapes are checked; anything that does not match is listed."
        ),
    )
    parser.add_argument("input", metavar="IN", help="reference checkpoint (.pth / .pth.tar)")
    parser.add_argument("output", metavar="OUT", help="where to write the converted checkpoint (written atomically)")
    parser.add_argument(
        "--modalities",
        nargs="+",
        default=None,
        metavar="NAME",
        help="modality names in the reference's input order (default: rgb depth for two modalities)",
    )
    parser.add_argument("--threshold", type=float, default=2e-2, help="exchange threshold theta (default: 2e-2)")
    parser.add_argument(
        "--trust",
        action="store_true",
        help="allow arbitrary pickled objects in IN (torch.load weights_only=False); only for trusted files",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cen.models.reference import ReferenceCheckpointError, convert_reference_checkpoint

    try:
        config = convert_reference_checkpoint(
            args.input, args.output, modalities=args.modalities, threshold=args.threshold, trust=args.trust
        )
    except (ReferenceCheckpointError, FileNotFoundError, ValueError) as err:
        print(f"cen convert-checkpoint: error: {err}", file=sys.stderr)
        return 1
    print(
        f"wrote {args.output}: RefineNetCEN({config['backbone']!r}, num_classes={config['num_classes']}, "
        f"modalities={config['modalities']}, threshold={config['threshold']})"
    )
    return 0
