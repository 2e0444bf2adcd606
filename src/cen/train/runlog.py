"""What a run writes besides checkpoints: metrics as JSON lines, TensorBoard scalars, the score table."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TABLE_METRICS = (("pixel_acc", "pixel acc"), ("mean_acc", "mean acc"), ("miou", "mIoU"))


def _clean(value: Any) -> Any:
    """JSON-safe: tensors to numbers, nan/inf to None."""
    if hasattr(value, "item") and getattr(value, "numel", lambda: 2)() == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
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
        line = {"kind": kind, "step": int(step), "time": round(time.time(), 3), **_clean(fields)}
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


def format_table(results: Mapping[str, Mapping[str, float]], title: str = "") -> str:
    """Rows per branch (modalities, then ``ensemble``), columns pixel acc / mean acc / mIoU in %."""
    names = [n for n in results if n != "ensemble"] + (["ensemble"] if "ensemble" in results else [])
    width = max([len("branch")] + [len(n) for n in names])
    head = f"{'branch':<{width}}  " + "  ".join(f"{label:>9}" for _, label in TABLE_METRICS)
    lines = [title] if title else []
    lines += [head, "-" * len(head)]
    for name in names:
        cells = []
        for key, _ in TABLE_METRICS:
            v = results[name].get(key)
            cells.append(f"{100 * v:9.2f}" if isinstance(v, (int, float)) and math.isfinite(v) else f"{'-':>9}")
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)
