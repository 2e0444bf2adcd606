"""What a run writes besides checkpoints: metrics as JSON lines, TensorBoard scalars, the score table."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def jsonable(value: Any) -> Any:
    """JSON-safe: tensors to numbers, nan/inf to None, mapping keys to strings."""
    if hasattr(value, "item") and getattr(value, "numel", lambda: 2)() == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


class RunLog:
    """Appends records to ``metrics.jsonl`` and mirrors scalars to TensorBoard (main process only)."""

    def __init__(self, run_dir: str | Path, *, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def record(self, kind: str, step: int, **fields: Any) -> None:
        """One JSON line ``{"kind", "step", "time", **fields}``; nested numbers also go to TensorBoard."""
        if not self.enabled:
            return
        line = {"kind": kind, "step": int(step), "time": round(time.time(), 3), **jsonable(fields)}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")
        if self.writer is not None:
            for tag, value in _flatten(fields, kind):
                self.writer.add_scalar(tag, value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _flatten(fields: Mapping, prefix: str):
    for key, value in fields.items():
        tag = f"{prefix}/{key}"
        if hasattr(value, "item") and getattr(value, "numel", lambda: 2)() == 1:
            value = value.item()
        if isinstance(value, Mapping):
            yield from _flatten(value, tag)
        elif isinstance(value, bool):
            continue
        elif isinstance(value, (int, float)) and math.isfinite(value):
            yield tag, float(value)


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file."""
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
