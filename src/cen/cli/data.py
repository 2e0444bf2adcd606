"""``cen data``: generate synthetic scenes, validate data sets on disk, compute HHA."""

from __future__ import annotations

import argparse
import json
import os
import sys

from cen.cli.options import QUIET, add_command, option
from cen.errors import UserError


class DataArgumentError(UserError, ValueError):
    """An argument of ``cen data`` that cannot be used."""


def _synth(args: argparse.Namespace) -> int:
    from cen.data.synth import generate

    try:
        splits = tuple(float(x) for x in args.splits.split(","))
    except ValueError:
        raise DataArgumentError(
            f"--splits {args.splits!r}: expected three comma-separated fractions, e.g. 0.8,0.1,0.1"
        ) from None
    try:
        info = generate(
            args.out,
            args.num,
            height=args.height,
            width=args.width,
            seed=args.seed,
            splits=splits,
            progress=not args.quiet,
            workers=args.workers,
        )
    except ValueError as err:  # generate() checks the arguments (num, sizes, splits) before any work
        raise DataArgumentError(str(err)) from err
    counts = ", ".join(f"{k} {v}" for k, v in info["splits"].items())
    print(
        f"wrote {args.num} scenes ({counts}) to {info['root']}; "
        f"{info['num_classes']} classes: {', '.join(c['name'] for c in info['classes'])}"
    )
    return 0


def _check(args: argparse.Namespace) -> int:
    from cen.data.check import check_dataset

    image_size = None
    if args.image_size:
        h, x, w = args.image_size.lower().partition("x")
        if not (x and h.isdigit() and w.isdigit() and int(h) > 0 and int(w) > 0):
            raise DataArgumentError(f"--image-size {args.image_size!r}: expected HxW in pixels, e.g. 480x640")
        image_size = (int(h), int(w))
    problems = check_dataset(
        args.root,
        args.layout,
        list_files=args.list,
        num_classes=args.num_classes,
        domains=args.domains.split(",") if args.domains else None,
        modalities=args.modalities.split(",") if args.modalities else None,
        mask=None if args.mask == "none" else args.mask,
        progress=not args.quiet,
        image_size=image_size,
    )
    for line in problems:
        print(line)
    if args.json:
        print(json.dumps({"root": args.root, "layout": args.layout, "problems": len(problems)}))
    if problems:
        print(f"{len(problems)} problem(s) found in {args.root}", file=sys.stderr)
        return 1
    print(f"{args.root}: no problems found", file=sys.stderr)
    return 0


def _hha(args: argparse.Namespace) -> int:
    from cen.data.hha import HHAError, write_hha

    try:
        counts = write_hha(
            args.root,
            intrinsics=args.intrinsics,
            depth_scale=args.depth_scale,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except HHAError as err:
        raise DataArgumentError(str(err)) from None
    print(
        f"{args.root}/hha: {counts['written']} written, {counts['kept']} already there"
        f"{' (--overwrite recomputes them)' if counts['kept'] else ''}"
    )
    return 0


SYNTH_OPTIONS = (
    option("out", metavar="OUT", help="output directory"),
    option("--num", type=int, default=1000, help="number of scenes (default 1000)"),
    option("--height", type=int, default=120, help="image height in pixels (default 120)"),
    option("--width", type=int, default=160, help="image width in pixels (default 160)"),
    option("--seed", type=int, default=0, help="random seed (default 0)"),
    option("--splits", default="0.8,0.1,0.1", help="train,val,test fractions (default 0.8,0.1,0.1)"),
    option("--workers", type=int, default=min(4, os.cpu_count() or 1),
           help="rendering processes (default: CPU count, at most 4); the bytes do not depend on it"),
    QUIET,
)  # fmt: skip
CHECK_OPTIONS = (
    option("root", metavar="ROOT", help="data set root"),
    option("--layout", required=True, choices=("nyudv2", "taskonomy", "folder", "rgbx", "mfnet", "deliver"),
           help="on-disk layout: nyudv2 (the reference's, also SUN RGB-D), taskonomy, folder, or the RGB-X "
           "methods' rgbx (NYUDv2 / SUN RGB-D packs), mfnet, deliver (docs/data.md)"),
    option("--list", action="append", metavar="FILE",
           help="list/split file (repeatable); default train.txt, val.txt, test.txt in ROOT; "
           "deliver: split names (default every split folder found)"),
    option("--num-classes", type=int, default=None,
           help="label values must be below this or 255 (default: ROOT/classes.json, else the layout's: 40; "
           "rgbx 37 with a labels/ folder; mfnet 9; deliver 25)"),
    option("--image-size", default=None, metavar="HxW",
           help="rgbx, mfnet, deliver: the size every file must have, e.g. 480x640 (default: not checked)"),
    option("--domains", default=None, help="taskonomy: comma-separated domains (default: all found)"),
    option("--modalities", default=None,
           help="folder: comma-separated modality folders; nyudv2: the modalities to check besides the "
           "list columns' rgb and depth (default: every modality folder found, e.g. hha); rgbx, mfnet, "
           "deliver: the modalities to read (default: every one the layout has on disk)"),
    option("--mask", default="masks", help="folder: label folder, or 'none' (default masks)"),
    option("--json", action="store_true", help="also print a JSON summary line"),
    QUIET,
)  # fmt: skip
HHA_OPTIONS = (
    option("root", metavar="ROOT", help="data set root in the NYUDv2 layout"),
    option("--intrinsics", default=None, metavar="FX,FY,CX,CY",
           help="camera intrinsics in pixels (default: ROOT/camera.json, else NYUDv2's Kinect "
           "518.857901,519.469611,325.582449,253.736166 for 640x480 images)"),
    option("--depth-scale", type=float, default=None, metavar="S",
           help="raw 16-bit depth x S = metres (default: ROOT/camera.json, else NYUDv2's 1/5000)"),
    option("--overwrite", action="store_true", help="recompute images already in ROOT/hha"),
    QUIET,
)  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``cen data synth``, ``cen data check`` and ``cen data hha``."""
    parser = subparsers.add_parser(
        "data",
        help="generate synthetic scenes, validate data sets",
        description="Generate synthetic scenes and validate data sets.",
    )
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
    commands = (
        ("synth", _synth, SYNTH_OPTIONS, "render procedural indoor scenes in the NYUDv2 and Taskonomy layouts",
         "Render procedural indoor scenes (RGB, depth, normals, shading, texture edges, labels) into OUT (NYUDv2 "
         "layout) and OUT/taskonomy (Taskonomy layout). Same seed, same bytes."),
        ("check", _check, CHECK_OPTIONS, "validate a data set: files, sizes, label values, lists",
         "Validate a data set on disk. Prints one line per problem naming the file; exit status 1 if there is any."),
        ("hha", _hha, HHA_OPTIONS, "compute the HHA encoding of every depth image into ROOT/hha/",
         "Compute HHA (horizontal disparity, height above the floor, angle with gravity; Gupta et al. 2014) from "
         "ROOT/depth/*.png into ROOT/hha/*.png (8-bit RGB). Intrinsics and depth scale: the options, else "
         "ROOT/camera.json (generated scenes), else NYUDv2's Kinect at 640x480 and 1/5000 m. See docs/data.md#hha."),
    )  # fmt: skip
    for name, run, options, help_text, description in commands:
        add_command(actions, name, run, options, help=help_text, description=description)
