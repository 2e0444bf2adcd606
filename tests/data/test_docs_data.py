"""The Python examples of docs/data.md run as written, in order, in one namespace."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "data.md"


def test_data_doc_examples_run(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert len(blocks) >= 2
    namespace = {"__name__": "__doc_example__"}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 - the doc's own examples
    assert namespace["batch"]["mask"].shape == (4, 48, 48)
    assert len(namespace["depth_mean"]) == 3
