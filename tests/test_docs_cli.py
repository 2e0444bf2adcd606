"""The documentation names only command-line flags and config keys that exist, and documents every config key.

Flags: every ``cen <command> ...`` line in a code block of the README or a page of docs/ is
checked against that (sub)command's parser. Config keys: every key in the first column of
the key table of docs/training.md must be in the schema, and every key of the schema must be
in that table.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from pathlib import Path

import pytest

from cen.cli.main import build_parser
from cen.tasks import TASKS
from cen.tasks.schema import Config, schema_for

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.S)
COMMAND = re.compile(r"(?:^|[\s(`])cen ((?:[a-z][a-z-]*)(?: [a-z][a-z-]*)?)(.*)$")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse has no public accessor for its subcommands
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _resolve(words: list[str]) -> tuple[str, argparse.ArgumentParser] | None:
    """The deepest (sub)command parser named by the leading words of a ``cen ...`` line."""
    parser, name = build_parser(), "cen"
    for word in words:
        sub = _subparsers(parser)
        if word not in sub:
            break
        parser, name = sub[word], f"{name} {word}"
    return (name, parser) if name != "cen" else None


def _documented_commands():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for block in FENCE.findall(text):
            joined = re.sub(r"\\\n\s*", " ", block)  # continuation lines
            for line in joined.splitlines():
                match = COMMAND.search(line)
                if match:
                    yield page.name, line.strip(), match[1].split(), match[2]


CASES = list(_documented_commands())


def test_the_docs_show_commands():
    assert len(CASES) > 20


@pytest.mark.parametrize("page,line,words,rest", CASES, ids=[f"{c[0]}:{c[1][:60]}" for c in CASES])
def test_every_documented_flag_exists(page, line, words, rest):
    resolved = _resolve(words)
    assert resolved is not None, f"{page}: `{line}` names no cen command"
    name, parser = resolved
    known = {opt for action in parser._actions for opt in action.option_strings} | {"--help"}
    flags = FLAG.findall(rest + " " + " ".join(words[len(name.split()) - 1 :]))
    unknown = [f for f in flags if f not in known]
    assert not unknown, f"{page}: `{line}` uses {unknown}, which `{name}` does not take; it takes {sorted(known)}"


def _schema_keys(schema=Config, prefix: str = "") -> set[str]:
    keys = set()
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        tp = hints[f.name]
        inner = next((a for a in (tp, *getattr(tp, "__args__", ())) if dataclasses.is_dataclass(a)), None)
        path = f"{prefix}{f.name}"
        if inner is not None and typing.get_origin(tp) is not list:
            keys |= _schema_keys(inner, path + ".")
        else:
            keys.add(path)
    return keys


def _expand(token: str) -> list[str]:
    """``data.generate.{num,height}`` and ``data.scale_min/max`` -> the keys they stand for."""
    if "{" in token:
        head, alts = re.match(r"(.*)\{(.*)\}$", token).groups()
        return [head + a.strip() for a in alts.split(",")]
    if "/" in token:
        first, *rest = token.split("/")
        stem = first.rsplit("_", 1)[0] + "_"
        return [first, *(stem + r for r in rest)]
    return [token]


def _table_keys() -> set[str]:
    keys = set()
    for line in (ROOT / "docs" / "training.md").read_text(encoding="utf-8").splitlines():
        if not line.startswith("| `"):
            continue
        first = line.split("|")[1]
        for token in re.findall(r"`([a-z_][a-z0-9_]*(?:\.[a-z0-9_{},/]+)*)`", first):
            if token.endswith(".yaml"):
                continue
            keys.update(_expand(token))
    return keys


def test_every_config_key_in_the_table_exists_and_every_key_is_documented():
    # the shared keys and every built-in task's own keys
    schema = _schema_keys().union(
        *(_schema_keys(schema_for(TASKS.get(t))) for t in ("segmentation", "translation", "presence"))
    )
    table = _table_keys()
    assert not sorted(table - schema), f"docs/training.md documents keys the schema lacks: {sorted(table - schema)}"
    assert not sorted(schema - table), f"config keys missing from docs/training.md: {sorted(schema - table)}"


def test_the_key_expansion():
    assert _expand("data.generate.{num,height}") == ["data.generate.num", "data.generate.height"]
    assert _expand("data.scale_min/max") == ["data.scale_min", "data.scale_max"]
