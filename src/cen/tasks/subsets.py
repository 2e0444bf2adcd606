"""Robustness to missing modalities: a model scored on every non-empty subset of its modalities.

``cen eval CONFIG --checkpoint C --subsets`` uses this. For each subset the model runs on
those inputs only (the others are dropped at inference: the norms use only the present
modalities' slices, the exchange averages over the present ones and the ensemble
renormalises its weights over them; see :class:`cen.MultiModal`), through the engine's
evaluation loop with ``modalities`` set to the subset. The data are read once per subset
with every modality of the config.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from cen.core.defaults import ENSEMBLE_KEY
from cen.errors import UserError

__all__ = ["SubsetError", "check_droppable", "evaluate_subsets", "format_subsets", "modality_subsets"]

SEPARATOR = "+"


class SubsetError(UserError, ValueError):
    """The model cannot be evaluated with modalities missing (names the reason)."""


def modality_subsets(names: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``names``, the full set first, then by size (largest first),
    each in the model's order: ``rgb+depth+normal, rgb+depth, rgb+normal, depth+normal, rgb, ...``."""
    names = tuple(names)
    return [c for k in range(len(names), 0, -1) for c in itertools.combinations(names, k)]


def _unwrap(model: nn.Module) -> nn.Module:
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def check_droppable(model: nn.Module, names: Sequence[str]) -> None:
    """Raise :class:`SubsetError` if ``model`` cannot run with some of ``names`` missing: it
    does not take its inputs by name (``model.names``), or one of its fusions reads every
    modality (``needs_all``, e.g. ``gated_sum``)."""
    inner = _unwrap(model)
    if getattr(inner, "names", None) is None:
        raise SubsetError(
            f"--subsets: the model ({type(inner).__name__}) does not take its modalities by name, so "
            "none can be dropped; it needs a cen.MultiModal model"
        )
    if len(names) < 2:
        raise SubsetError(f"--subsets: the model has one modality ({list(names)}); there is no subset to compare")
    for where, module in inner.named_modules():
        fusion = getattr(module, "fusion", None)
        if fusion is not None and getattr(fusion, "needs_all", False):
            raise SubsetError(
                f"--subsets: fusion {getattr(fusion, 'name', type(fusion).__name__)!r} (at {where}) "
                f"reads every modality and is not defined with one missing; evaluate this model on "
                f"all of {list(names)} only"
            )


def evaluate_subsets(
    names: Sequence[str],
    model: nn.Module,
    evaluate: Callable[[list[str]], Mapping[str, Any]],
    subsets: Sequence[Sequence[str]] | None = None,
) -> list[dict[str, Any]]:
    """``[{"subset": [names], "scores": {branch: scores}}]`` for every subset (default
    :func:`modality_subsets` of ``names``, the model's modalities).

    ``evaluate(subset)`` scores ``model`` fed only the modalities ``subset``; a model that
    refuses a subset (a ValueError) becomes a :class:`SubsetError` naming the subset."""
    names = list(names)
    check_droppable(model, names)
    records = []
    for subset in subsets or modality_subsets(names):
        try:
            scores = evaluate(list(subset))
        except ValueError as err:
            if isinstance(err, UserError):
                raise
            raise SubsetError(f"--subsets: the model cannot run on {SEPARATOR.join(subset)}: {err}") from None
        records.append({"subset": list(subset), "scores": dict(scores)})
    return records


def format_subsets(
    records: Sequence[Mapping[str, Any]],
    names: Sequence[str],
    metric: str,
    fmt: Callable[[float], str] = lambda v: f"{v:.4f}",
    *,
    markdown: bool = False,
    title: str | None = None,
) -> str:
    """One row per subset, one column per branch (each modality, then the ensemble) holding
    ``metric`` of that branch; ``-`` where the branch did not run (its modality was dropped).
    ``markdown`` gives a Markdown table instead of aligned text."""
    branches = [*names, ENSEMBLE_KEY]
    rows = []
    for rec in records:
        cells = []
        for b in branches:
            value = rec["scores"].get(b, {}).get(metric)
            cells.append("-" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt(value))
        rows.append([SEPARATOR.join(rec["subset"]), *cells])
    head = ["inputs", *(f"{b} {metric}" for b in branches)]
    if markdown:
        lines = [f"**{title}**", ""] if title else []
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * len(branches)) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt_row = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    lines = [title] if title else []
    lines += [fmt_row(head), "-" * len(fmt_row(head))]
    lines += [fmt_row(r) for r in rows]
    return "\n".join(lines)
