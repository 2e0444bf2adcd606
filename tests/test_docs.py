"""The Python examples in the README and the core docs run as written."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "core.md"]


def _blocks():
    for path in DOCS:
        for i, block in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(), re.S)):
            yield pytest.param(block, id=f"{path.name}-{i}")


@pytest.mark.parametrize("code", list(_blocks()))
def test_example_runs(code):
    exec(compile(code, "<doc example>", "exec"), {"__name__": "__doc_example__"})
