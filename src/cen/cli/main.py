"""Entry point of the ``cen`` command.

Each subcommand lives in its own module of :mod:`cen.cli` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable
taking the parsed namespace and returning an exit code.

Errors: a mistake in the user's input (a :class:`cen.errors.UserError`: config,
data, checkpoint, device, arguments; or a file that is not there) is printed as one
line ``cen COMMAND: error: ...`` with exit status 2. Anything else is a bug and keeps
its full traceback. ``--debug`` (anywhere on the line) or ``CEN_DEBUG=1`` prints the
traceback of user errors too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

import cen

# Modules that contribute subcommands, in the order they appear in ``cen --help``.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "cen.cli.data",
    "cen.cli.train",
    "cen.cli.predict",
    "cen.cli.convert_checkpoint",
    "cen.cli.sweep",
    "cen.cli.table",
    "cen.cli.report",
    "cen.cli.export",
    "cen.cli.env",
)
DEBUG_FLAG = "--debug"
DEBUG_ENV = "CEN_DEBUG"
EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cen",
        description="Multimodal fusion by channel exchanging: data, training, evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"cen {cen.__version__}")
    parser.add_argument(
        DEBUG_FLAG,
        action="store_true",
        help=f"show the full traceback of every error (also {DEBUG_ENV}=1); may follow the command",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that are the user's mistake: printed as one line."""
    from cen.errors import UserError

    return (UserError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, FloatingPointError)


def debug_enabled(flag: bool = False) -> bool:
    return flag or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def report(command: str, err: BaseException, *, debug: bool = False) -> int:
    """Print ``err`` as ``cen COMMAND: error: message`` (after its traceback with ``debug``); the exit status."""
    if debug:
        traceback.print_exception(err, file=sys.stderr)
    rank = os.environ.get("RANK")
    prefix = f"cen {command}: error" + (f" (process {rank})" if rank not in (None, "0") else "")
    print(f"{prefix}: {err}", file=sys.stderr)
    return EXIT_USER_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    flag = DEBUG_FLAG in argv
    argv = [a for a in argv if a != DEBUG_FLAG]  # accepted after the subcommand too
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = debug_enabled(flag or args.debug)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except user_errors() as err:
        command = " ".join(c for c in (args.command, getattr(args, "data_command", None)) if c)
        return report(command, err, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
