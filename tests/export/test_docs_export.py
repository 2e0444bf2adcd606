"""The Python examples of docs/export.md run as written."""

import re
from pathlib import Path

import pytest

pytest.importorskip("onnx", reason="ONNX export needs onnx: pip install -e '.[export]'")
pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript: pip install -e '.[export]'")
pytest.importorskip("onnxruntime", reason="running ONNX needs onnxruntime: pip install -e '.[export]'")

DOC = Path(__file__).resolve().parents[2] / "docs" / "export.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"export.md-{i}" for i in range(len(BLOCKS))])
def test_example_runs(code, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the examples write model.onnx into the working folder
    exec(compile(code, "<doc example>", "exec"), {"__name__": "__doc_example__"})
    printed = capsys.readouterr().out
    assert "False" not in printed and (tmp_path / "model.onnx").is_file()
