"""``cen convert-checkpoint IN OUT``: a reference CEN checkpoint (segmentation or translation) to a cen checkpoint.

The written file is a weights-only cen checkpoint, read by ``cen.load_model``::

    {"format": "cen-checkpoint", "version": 2, "kind": "weights", "model": state_dict, "config": {...}}

where ``config`` is the partial cen config that rebuilds the model
(``task``, ``modalities``, ``data``, ``model``; see :func:`segmentation_config`
and :func:`cen.models.reference_translation.checkpoint_config`).
"""

from __future__ import annotations

import argparse
import os
import sys

from cen.cli.options import add_command, option
from cen.core.defaults import THRESHOLD, TRANSLATION_THRESHOLD

MODEL_KINDS = ("auto", "refinenet", "unet")  # "auto" and the keys of CONVERTERS


OPTIONS = (
    option("input", metavar="IN", help="reference checkpoint (.pth / .pth.tar)"),
    option("output", metavar="OUT", help="where to write the converted checkpoint (written atomically)"),
    option("--model", choices=MODEL_KINDS, default="auto",
           help="which reference model IN holds: refinenet (segmentation), unet (translation generator), "
           "or auto: detect it from the keys (default)"),
    option("--modalities", nargs="+", default=None, metavar="NAME",
           help="input names in the reference's input order (segmentation default: rgb depth for two modalities; "
           "translation: required, Taskonomy domains, e.g. reshading edge_texture)"),
    option("--threshold", type=float, default=None,
           help=f"exchange threshold theta (default: {THRESHOLD} for segmentation, {TRANSLATION_THRESHOLD} for "
           "translation)"),
    option("--target", default="rgb", help="translation only: the target domain recorded in the config (default: rgb)"),
    option("--trust", action="store_true",
           help="allow arbitrary pickled objects in IN (torch.load weights_only=False); only for trusted files"),
)  # fmt: skip


def register(subparsers) -> None:
    add_command(
        subparsers, "convert-checkpoint", run, OPTIONS,
        help="convert a checkpoint of the reference CEN code (yikaiw/CEN) to a cen checkpoint",
        description=(
            "Convert a state dict saved by the reference CEN code into a cen checkpoint that cen.load_model, "
            "cen eval and cen predict read. Segmentation: the RefineNet of semantic_segmentation (DataParallel "
            "'module.' prefix, ModuleParallel '.module.' convs, per-modality 'bn_0'/'bn_1' norms, 'alpha'; "
            "directly or under 'segmenter'/'state_dict'); the backbone, classes and modalities are read from the "
            "file. Translation: the U-Net generator of image2image_translation ('convN'/'deconvN', "
            "'insnorm_conv.insnorm_<m>', 'alpha'); its never-applied conv1/conv8/deconv8 norms are dropped and "
            "listed. Strict: every other key is used once and shapes are checked; anything that does not match "
            "is listed."
        ),
    )  # fmt: skip


def save_weights_checkpoint(path: str | os.PathLike, state_dict: dict, config: dict) -> None:
    """Write a weights checkpoint (:func:`cen.train.checkpoint.weights_checkpoint`) to ``path`` atomically."""
    from cen.atomic import atomic_torch_save
    from cen.train.checkpoint import weights_checkpoint

    atomic_torch_save(weights_checkpoint(state_dict, config), path)


def segmentation_config(model_config: dict) -> dict:
    """The partial cen config of a converted RefineNet, from ``RefineNetCEN.config``."""
    return {
        "task": "segmentation",
        "modalities": list(model_config["modalities"]),
        "data": {"num_classes": model_config["num_classes"]},
        "model": {
            "name": "refinenet",
            "backbone": model_config["backbone"],
            "ensemble": model_config["ensemble"],
            "decoder_widths": list(model_config["decoder_widths"]),
        },
        "fusion": _fusion_group(model_config["spec"]),
    }


def _fusion_group(spec: dict) -> dict:
    """The config's ``fusion`` group of a model's :meth:`cen.FusionSpec.to_dict`."""
    return {
        "strategy": spec["strategy"],
        "options": dict(spec["options"]),
        "threshold": spec["threshold"],
        "points": spec["points"],
        "shared_convs": spec["shared_convs"],
    }


def detect_model(state_dict) -> str:
    """``"unet"`` for a reference translation generator, ``"refinenet"`` otherwise (its converter then checks it)."""
    from cen.models.reference_translation import is_reference_generator

    return "unet" if is_reference_generator(state_dict) else "refinenet"


def _convert_refinenet(args, sd) -> str:
    from cen.models.reference import build_model_for, convert_reference_state_dict

    threshold = THRESHOLD if args.threshold is None else args.threshold
    model = build_model_for(sd, modalities=args.modalities, threshold=threshold, device="meta", source=args.input)
    state = convert_reference_state_dict(sd, model, source=args.input)
    save_weights_checkpoint(args.output, state, segmentation_config(model.config))
    cfg = model.config
    return (
        f"wrote {args.output}: RefineNetCEN({cfg['backbone']!r}, num_classes={cfg['num_classes']}, "
        f"modalities={cfg['modalities']}, threshold={cfg['spec']['threshold']}, decoder_widths={cfg['decoder_widths']})"
    )


def dropped_note(dropped: list[str], state_dict) -> str:
    """One line saying which reference entries a generator conversion dropped, and why."""
    if not dropped:
        return "the file has none of the norms the reference builds but never applies; nothing dropped"
    norms = sorted({k.removeprefix("module.").rsplit(".insnorm_", 1)[0] for k in dropped if ".insnorm_" in k})
    params = sum(state_dict[k].numel() for k in dropped if ".insnorm_" in k and k.endswith((".weight", ".bias")))
    parts = (
        [f"the norms the reference builds but never applies ({', '.join(norms)}; {params:,} parameters)"]
        if norms
        else []
    )
    parts += [f"{k} (a single input: its softmax weight is 1)" for k in dropped if ".insnorm_" not in k]
    return f"dropped {len(dropped)} entries the model does not use: " + " and ".join(parts)


def _convert_unet(args, sd) -> str:
    from cen.data.taskonomy import check_domain
    from cen.models.reference import ReferenceCheckpointError
    from cen.models.reference_translation import convert_reference_generator, infer_generator_config

    arch = infer_generator_config(sd, args.input)
    if args.modalities is None:
        raise ReferenceCheckpointError(
            f"{args.input} is a reference translation generator with {arch['num_modalities']} inputs; name them "
            "in the reference's input order with --modalities (e.g. --modalities reshading edge_texture)"
        )
    for name in [*args.modalities, args.target]:
        check_domain(name)
    threshold = TRANSLATION_THRESHOLD if args.threshold is None else args.threshold
    converted = convert_reference_generator(
        sd, args.modalities, threshold=threshold, target=args.target, source=args.input
    )
    save_weights_checkpoint(args.output, converted.state_dict, converted.config)
    model = converted.config["model"]
    note = dropped_note(converted.dropped, sd)
    return (
        f"{note}\nwrote {args.output}: UNetCEN(modalities={converted.config['modalities']}, ngf={model['ngf']}, "
        f"num_downs={model['num_downs']}, threshold={converted.config['fusion']['threshold']}), target {args.target!r}"
    )


#: reference model kind -> its converter ``(args, state_dict) -> message``; ``--model`` offers these and ``auto``.
CONVERTERS = {"refinenet": _convert_refinenet, "unet": _convert_unet}


def run(args: argparse.Namespace) -> int:
    from cen.models.reference import ReferenceCheckpointError, load_reference_checkpoint

    try:
        sd = load_reference_checkpoint(args.input, trust=args.trust)
        kind = detect_model(sd) if args.model == "auto" else args.model
        message = CONVERTERS[kind](args, sd)
    except (ReferenceCheckpointError, FileNotFoundError, ValueError) as err:
        print(f"cen convert-checkpoint: error: {err}", file=sys.stderr)
        return 1
    print(message)
    return 0
