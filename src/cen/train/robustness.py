"""A checkpoint scored under sensor faults: every corruption of every modality at several severities.

``cen eval CONFIG --checkpoint C --corruptions`` uses this. For each modality, each corruption
defined for its kind (:mod:`cen.data.corruptions`: depth holes / noise / quantisation, RGB low
light / over-exposure / motion blur / noise, a dead sensor for any kind) and each severity, the
evaluation data are read again with that one corruption applied to the decoded samples
(:class:`cen.data.corruptions.CorruptModality`, seeded per sample: every model sees the same
faults), and the task's scores are computed as usual. The clean scores come first (severity 0).
A dead sensor is the same at every severity and is scored once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cen.data.corruptions import CORRUPTIONS, SEVERITIES, CorruptModality, corruptions_for
from cen.errors import UserError

#: The one corruption that is the same at every severity.
CONSTANT = "dead_sensor"
#: Severities scored by default.
DEFAULT_SEVERITIES = (1, 3, 5)


class CorruptionError(UserError, ValueError):
    """A corruption or severity that does not apply (names the choice and what applies)."""


def plan(
    kinds: Mapping[str, str], names: Sequence[str] | None = None, severities: Sequence[int] = DEFAULT_SEVERITIES
) -> list[tuple[str, str, int]]:
    """``[(modality, corruption, severity)]``: each modality of ``kinds`` (``{modality: kind}``), each corruption of
    ``names`` (default all) defined for its kind, each severity (``dead_sensor`` once, at severity 1)."""
    unknown = [n for n in names or () if n not in CORRUPTIONS]
    if unknown:
        raise CorruptionError(f"--corruptions {unknown}: unknown; known: {', '.join(CORRUPTIONS)}")
    bad = [s for s in severities if s not in SEVERITIES]
    if bad or not severities:
        raise CorruptionError(f"--severities {list(severities)}: expected some of {list(SEVERITIES)}")
    out = []
    for modality, kind in kinds.items():
        for name in corruptions_for(kind):
            if names and name not in names:
                continue
            for severity in (1,) if name == CONSTANT else severities:
                out.append((modality, name, int(severity)))
    if not out:
        raise CorruptionError(
            f"--corruptions {list(names or [])}: none applies to the modalities {dict(kinds)} "
            f"(by kind: {', '.join(f'{k}: {list(corruptions_for(k))}' for k in sorted(set(kinds.values())))})"
        )
    return out


def evaluate_corruptions(
    score: Callable[[Any], Mapping[str, Mapping[str, Any]]],
    steps: Sequence[tuple[str, str, int]],
    *,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """``[{"modality", "corruption", "severity", "scores"}]``: the clean scores (corruption ``None``, severity 0),
    then one record per step. ``score(corruption)`` evaluates with that sample corruption (None: clean)."""
    records = [{"modality": None, "corruption": None, "severity": 0, "scores": dict(score(None))}]
    for modality, name, severity in steps:
        if progress is not None:
            progress(f"{modality}: {name} at severity {severity}")
        fault = CorruptModality(modality, name, severity, seed=seed)
        records.append({"modality": modality, "corruption": name, "severity": severity, "scores": dict(score(fault))})
    return records


def _value(record: Mapping, branch: str, metric: str) -> float | None:
    value = record["scores"].get(branch, {}).get(metric)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def curves(records: Sequence[Mapping], branch: str, metric: str) -> dict[str, list[tuple[int, float]]]:
    """``{"depth: depth_holes": [(0, clean), (1, v), (3, v), ...]}``: the score against the severity per corruption."""
    clean = _value(records[0], branch, metric)
    out: dict[str, list[tuple[int, float]]] = {}
    for rec in records[1:]:
        value = _value(rec, branch, metric)
        if value is None:
            continue
        key = f"{rec['modality']}: {rec['corruption']}"
        out.setdefault(key, [(0, clean)] if clean is not None else []).append((rec["severity"], value))
    return out


def format_corruptions(
    records: Sequence[Mapping],
    branch: str,
    metric: str,
    fmt: Callable[[float], str] = lambda v: f"{v:.4f}",
    *,
    markdown: bool = False,
    title: str | None = None,
) -> str:
    """One row per (modality, corruption), one column per severity (0 = clean) of ``metric`` of ``branch``."""
    severities = sorted({int(r["severity"]) for r in records[1:]} | {0})
    clean = _value(records[0], branch, metric)
    rows = []
    for key, points in curves(records, branch, metric).items():
        by = dict(points)
        rows.append([key, *(fmt(by[s]) if s in by else ("" if s else fmt(clean)) for s in severities)])
    head = ["modality: corruption", *(("clean" if s == 0 else f"severity {s}") for s in severities)]
    if markdown:
        lines = [f"**{title}**", ""] if title else []
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    out = [title] if title else []
    out += [line(head), "-" * len(line(head)), *(line(r) for r in rows)]
    return "\n".join(out)


def figure(records: Sequence[Mapping], branch: str, metric: str, label: str, title: str, *, percent: bool = False):
    """The score against the severity, one line per (modality, corruption) (a matplotlib Figure)."""
    from cen.train.figures import lines

    series = {key: ([s for s, _ in pts], [v for _, v in pts]) for key, pts in curves(records, branch, metric).items()}
    return lines(series, title=title, xlabel="severity (0 = clean)", ylabel=label, percent=percent)
