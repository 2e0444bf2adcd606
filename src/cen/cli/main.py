"""Entry point of the ``cen`` command.

Each subcommand lives in its own module of :mod:`cen.cli` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable
taking the parsed namespace and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

import cen

# Modules that contribute subcommands, in the order they appear in ``cen --help``.
SUBCOMMAND_MODULES: tuple[str, ...] = ("cen.cli.data", "cen.cli.train", "cen.cli.predict", "cen.cli.convert_checkpoint",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cen",
        description="Multimodal fusion by channel exchanging: data, training, evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"cen {cen.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0 if args.command is None else 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
