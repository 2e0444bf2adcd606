"""The Python examples of the README and of every page in docs/ run as written and print what the page says.

A page's ``python`` blocks run in order in one namespace (a later block may use an earlier
one's names), in a temporary working folder. A block that prints must be followed by a
``text`` block holding what it prints; the two are compared as doctest compares outputs
(``...`` matches anything, runs of whitespace are equal). A page with no Python example is
not collected.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: a python block, then (optionally, after blank lines) the text block of its output
BLOCK = re.compile(r"```python\n(?P<code>.*?)```[ \t]*\n(?:\s*\n)*(?:```text\n(?P<out>.*?)```)?", re.S)
CHECKER = doctest.OutputChecker()
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def examples(page: Path) -> list[tuple[str, str | None]]:
    """``[(code, expected output or None)]`` of ``page``, in order."""
    return [(m["code"], m["out"]) for m in BLOCK.finditer(page.read_text(encoding="utf-8"))]


@pytest.mark.parametrize("page", [p for p in PAGES if examples(p)], ids=lambda p: p.name)
def test_page_examples_print_what_the_page_says(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__doc_example__"}
    for i, (code, expected) in enumerate(examples(page)):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"{page.name} example {i}", "exec"), namespace)
        got = out.getvalue()
        if expected is None:
            assert not got, f"{page.name} example {i} prints output the page does not show:\n{got}"
        else:
            assert CHECKER.check_output(expected, got, FLAGS), (
                f"{page.name} example {i} printed\n{got}\nbut the page says\n{expected}"
            )


def test_the_block_pattern_pairs_code_with_its_output():
    text = "```python\nprint(1)\n```\n\n```text\n1\n```\n```python\nx = 2\n```\n"
    found = [(m["code"], m["out"]) for m in BLOCK.finditer(text)]
    assert found == [("print(1)\n", "1\n"), ("x = 2\n", None)]
