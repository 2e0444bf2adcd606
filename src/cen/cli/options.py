"""Building blocks of the subcommands' parsers: a command with its handler, options as tables, shared arguments."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Option:
    """One ``parser.add_argument(*flags, **settings)`` call, kept as data so that a table of them can also
    say what each option's default is."""

    flags: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def dest(self) -> str:
        """The attribute of the parsed namespace (``--depth-scale`` -> ``depth_scale``)."""
        return self.settings.get("dest") or self.flags[0].lstrip("-").replace("-", "_")

    @property
    def default(self) -> Any:
        """The value argparse gives when the option is not on the command line."""
        if "default" in self.settings:
            return self.settings["default"]
        return {"store_true": False, "store_false": True}.get(self.settings.get("action"))


def option(*flags: str, **settings: Any) -> Option:
    """An :class:`Option`: the arguments of ``add_argument``."""
    return Option(flags, settings)


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, options: Iterable[Option]) -> None:
    """Add every option of ``options`` to ``parser``, in order."""
    for opt in options:
        parser.add_argument(*opt.flags, **opt.settings)


def add_command(
    subparsers: argparse._SubParsersAction,
    name: str,
    run: Callable[[argparse.Namespace], int],
    options: Iterable[Option] = (),
    **settings: Any,
) -> argparse.ArgumentParser:
    """``subparsers.add_parser(name, **settings)`` (``help``, ``description``, ``epilog``) with ``options``,
    whose parsed namespace is handled by ``run(args) -> exit status``."""
    parser = subparsers.add_parser(name, **settings)
    add_options(parser, options)
    parser.set_defaults(func=run)
    return parser


#: ``--quiet`` of the commands that show a progress bar.
QUIET = option("--quiet", action="store_true", help="no progress bar")


#: The help of ``CONFIG`` of the commands that read a checkpoint (``cen eval``, ``cen export``).
TRAINED_WITH = "the config the checkpoint was trained with (file or name)"


def config_arguments(config_help: str) -> tuple[Option, Option]:
    """``CONFIG`` (``config_help`` says which) and the ``key=value`` overrides of the config-driven commands."""
    return (
        option("config", metavar="CONFIG", help=config_help),
        option("overrides", nargs="*", metavar="key=value", help="config overrides"),
    )


__all__ = ["QUIET", "TRAINED_WITH", "Option", "add_command", "add_options", "config_arguments", "option"]
