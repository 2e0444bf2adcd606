"""Classes of timm named in a table, looked up only once timm has been imported by someone else."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from typing import Generic, TypeVar

V = TypeVar("V")


class TimmClasses(Generic[V]):
    """A table ``{module name: {class name: value}}`` of timm classes, resolved once timm is imported.

    Never imports timm itself and never fails: a module or class the installed timm lacks,
    or a class that is not a subclass of ``base``, is passed over.
    """

    def __init__(self, table: Mapping[str, Mapping[str, V]], base: type) -> None:
        self.table = table
        self.base = base
        self.resolved = False

    def take(self) -> list[tuple[type, V]]:
        """``[(class, value)]`` on the first call after timm is imported; ``[]`` before it and after it."""
        if self.resolved or "timm" not in sys.modules:
            return []
        self.resolved = True
        found = []
        for module_name, entries in self.table.items():
            try:
                module = importlib.import_module(module_name)
            except Exception:  # a timm without this module (another version): its classes stay unknown
                continue
            for cls_name, value in entries.items():
                cls = getattr(module, cls_name, None)
                if isinstance(cls, type) and issubclass(cls, self.base):
                    found.append((cls, value))
        return found


__all__ = ["TimmClasses"]
