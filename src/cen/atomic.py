"""Atomic file writes: a crash mid-write never leaves a half-written file.

Every writer goes to a temporary file in the target's folder, flushes it to disk,
then ``os.replace``-s it onto the target (atomic on POSIX and Windows within one
file system). Readers see the old file or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

__all__ = ["atomic_torch_save", "atomic_write", "atomic_write_json", "atomic_write_text"]


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(fh)`` on a temporary binary file beside ``path``, then move it onto ``path``.

    The parent folder is created if needed. If ``write`` (or anything before the
    move) raises, the previous file is intact and the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` onto ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda fh: fh.write(text.encode(encoding)))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """``json.dumps(obj)`` into ``path`` atomically, with a final newline; ``obj`` must be JSON-serialisable.

    The text is made before the file is touched, so an object that cannot be
    serialised leaves no trace.
    """
    text = json.dumps(obj, indent=indent) + "\n"
    atomic_write_text(path, text)
