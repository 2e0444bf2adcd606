"""Comparing a state dict read from a file with the one a model expects, for one-line load errors."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple


class KeyMismatch(NamedTuple):
    """How a given state dict differs from a model's: the missing and unexpected keys, and the shape mismatches as
    ``"<key>: <given_as> (shape) vs model (shape)"``."""

    missing: list[str]
    unexpected: list[str]
    wrong: list[str]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.wrong)


def key_mismatch(
    own: Mapping[str, object],
    given: Mapping[str, object],
    *,
    optional: Callable[[str], bool] = lambda key: False,
    given_as: str = "file",
) -> KeyMismatch:
    """The keys of ``own`` (the model's state dict) missing from ``given``, those of ``given`` the model lacks,
    and the shared keys whose shapes differ (a value of ``given`` without ``.shape`` is not compared).

    ``optional(key)`` marks a key of ``own`` that ``given`` may lack (e.g. a classifier); ``given_as``
    names ``given`` in the shape messages (``"file"``, ``"checkpoint"``).
    """
    missing = [k for k in own if k not in given and not optional(k)]
    unexpected = [k for k in given if k not in own]
    wrong = [
        f"{k}: {given_as} {tuple(given[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in given and hasattr(given[k], "shape") and tuple(given[k].shape) != tuple(v.shape)
    ]
    return KeyMismatch(missing, unexpected, wrong)


def show_keys(items: Sequence[str], limit: int = 5) -> str:
    """``"['a', 'b'] ... (12)"``: the first ``limit`` items, ``...`` if there are more, and their count."""
    return f"{list(items[:limit])}{' ...' if len(items) > limit else ''} ({len(items)})"


def describe_key_mismatch(mismatch: KeyMismatch, limit: int = 5) -> str:
    """``"missing [...] (n), unexpected [...] (n), shape mismatches [...] (n)"``, the empty lists left out."""
    labelled = (
        ("missing", mismatch.missing),
        ("unexpected", mismatch.unexpected),
        ("shape mismatches", mismatch.wrong),
    )
    return ", ".join(f"{label} {show_keys(items, limit)}" for label, items in labelled if items)


__all__ = ["KeyMismatch", "describe_key_mismatch", "key_mismatch", "show_keys"]
