"""The comparison table of a folder of runs (``cen table RUNS_PARENT``): one row per run.

Each row holds the run's final test scores of one branch (the ensemble, else the branch
``train.select`` names, else the first modality) from ``results.json``: the scores its task
declares (:attr:`cen.tasks.base.Task.scores`: label, unit and direction; pixel acc, mean acc
and mIoU in % for segmentation, L1 / RMSE / FID / KID (x100) for translation), then any other
numeric score, by key; the parameter count (the first ``info`` record of ``metrics.jsonl``:
every network the run trains, so translation counts G + D); the train time (``sweep.json``,
else the span of the ``metrics.jsonl`` time stamps without the pauses after an interrupt);
and the paper's number of the recipe of the same name (:mod:`cen.analysis.paper`).

Runs that have not finished are listed with their status (unfinished, interrupted, failed,
pending) and no scores, never left out.

Runs of one config trained with several seeds (``cen sweep --seeds N``: ``<stem>@<seed>``) make
one row: each score as mean ± sample standard deviation over the seeds that finished, with
their number ``n``; the CSV keeps one line per seed (its ``group`` and ``seed`` columns say which).
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cen.analysis.paper import PaperRow, paper_row
from cen.analysis.runs import (
    RUN_FILES,
    _read_config,
    _read_results,
    numeric_scores,
    read_records,
)
from cen.core.defaults import ENSEMBLE_KEY
from cen.errors import UserError
from cen.tasks import TASKS
from cen.tasks.base import Score
from cen.train.sweep import SWEEP_FILE, format_seconds, read_sweep, seed_of

#: ``--sort`` keys besides the score keys.
SORT_KEYS = ("name", "status", "params", "time", "paper")


class TableError(UserError, ValueError):
    """A folder that holds no runs, or a bad ``--sort`` key."""


@dataclass
class Row:
    """One run of the table. ``scores`` are as in results.json (segmentation fractions, not %)."""

    name: str
    status: str
    task: str = "segmentation"
    branch: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    params: int | None = None
    seconds: float | None = None
    paper: PaperRow | None = None
    order: int = 0  # position in sweep.json (runs not in it follow, by name)
    spread: dict[str, float] = field(default_factory=dict)  # std over the seeds of a group row
    n: int = 1  # finished seeds behind a group row
    members: list[Row] = field(default_factory=list)  # the per-seed rows of a group row


def group_seeds(rows: Sequence[Row]) -> list[Row]:
    """One row per config: the rows of ``<stem>@<seed>`` runs merged (mean ± std of each score over the
    finished seeds, ``n``), the others as they are; in the order of each group's first run."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        stem, seed = seed_of(row.name)
        groups.setdefault(stem if seed is not None else row.name, []).append(row)
    out = []
    for stem, members in groups.items():
        if len(members) == 1 and seed_of(members[0].name)[1] is None:
            out.append(members[0])
            continue
        done = [m for m in members if m.scores]
        keys = sorted({k for m in done for k in m.scores})
        mean, std = {}, {}
        for key in keys:
            values = [m.scores[key] for m in done if key in m.scores]
            mean[key] = statistics.fmean(values)
            std[key] = statistics.stdev(values) if len(values) > 1 else 0.0
        first = members[0]
        finished = sum(m.status == "done" for m in members)
        status = "done" if finished == len(members) else f"{finished}/{len(members)} done"
        seconds = [m.seconds for m in members if m.seconds is not None]
        out.append(
            Row(
                name=stem,
                status=status,
                task=first.task,
                branch=first.branch,
                scores=mean,
                params=first.params,
                seconds=statistics.fmean(seconds) if seconds else None,
                paper=first.paper,
                order=first.order,
                spread=std,
                n=len(done),
                members=list(members),
            )
        )
    return out


def choose_branch(test: dict, config: dict) -> str:
    """The reported branch: the ensemble, else ``train.select`` when it names one, else the first modality."""
    if ENSEMBLE_KEY in test:
        return ENSEMBLE_KEY
    select = str((config.get("train") or {}).get("select", "auto"))
    if select != "auto" and select in test:
        return select
    for mod in config.get("modalities") or []:
        if str(mod) in test:
            return str(mod)
    return next(iter(test), "")


def train_seconds(records: Sequence[dict]) -> float | None:
    """Seconds between the first and last time stamps, without the gaps that follow an ``interrupted`` record."""
    stamps = [
        (float(r["time"]), r.get("kind") == "info" and r.get("event") == "interrupted")
        for r in records
        if isinstance(r.get("time"), (int, float))
    ]
    if len(stamps) < 2:
        return None
    total = 0.0
    for (before, paused), (after, _) in itertools.pairwise(stamps):
        if not paused:
            total += max(after - before, 0.0)
    return total


def _status(path: Path | None, results: dict | None, records: list[dict], entry: dict) -> str:
    recorded = str(entry.get("status", ""))
    if results is not None:
        return "done" if isinstance(results.get("test"), dict) else "done (no test scores)"
    if path is None:
        if recorded == "failed":
            return f"failed: {entry.get('error', '')}".rstrip(": ")
        return "pending" if recorded in ("", "pending") else f"{recorded} (no run folder)"
    step = max((int(r.get("step", 0)) for r in records if isinstance(r.get("step"), int)), default=0)
    at = f" (step {step})" if records else ""
    interrupted = any(r.get("kind") == "info" and r.get("event") == "interrupted" for r in records[-1:])
    if recorded == "failed":
        return f"failed{at}: {entry.get('error', '')}".rstrip(": ")
    if recorded == "interrupted" or interrupted:
        return f"interrupted{at}"
    if recorded == "running":
        return f"running{at}"
    return f"unfinished{at}"


def read_row(name: str, path: Path | None, entry: dict | None = None) -> Row:
    """The table row of the run folder ``path`` (None: a run only listed in sweep.json)."""
    entry = entry or {}
    notes: list[str] = []  # what is missing is said by the status; the report lists the details
    config = _read_config(path, notes) if path is not None else {}
    records = read_records(path / "metrics.jsonl", notes) if path is not None else []
    results = _read_results(path, notes) if path is not None else None
    task = str(config.get("task") or "segmentation")
    if task not in TASKS and config.get("plugins"):  # a user's task: its module registers it
        from cen.train.config import import_plugins

        try:
            import_plugins(config["plugins"])
        except UserError:
            notes.append(f"{name}: plugins {config['plugins']} not importable; scores shown by key")
    row = Row(
        name=name, status=_status(path, results, records, entry), task=task, paper=paper_row(seed_of(name)[0], task)
    )
    test = (results or {}).get("test")
    if isinstance(test, dict) and test:
        row.branch = choose_branch(test, config)
        row.scores = numeric_scores(test.get(row.branch) or {})
    row.params = next(
        (int(r["params"]) for r in records if r.get("kind") == "info" and isinstance(r.get("params"), int)), None
    )
    seconds = entry.get("seconds")
    row.seconds = float(seconds) if isinstance(seconds, (int, float)) and seconds > 0 else train_seconds(records)
    return row


def collect_rows(parent: str | Path) -> list[Row]:
    """A row per run in ``parent``: each sub-folder holding a run file, and each run listed in its sweep.json.

    Raises:
        TableError: ``parent`` is not a folder, is itself a run folder, or holds no runs.
    """
    parent = Path(parent)
    if not parent.is_dir():
        raise TableError(f"{parent}: no such folder (expected the parent folder of runs, e.g. cen sweep's --out)")
    if any((parent / f).is_file() for f in RUN_FILES):
        raise TableError(f"{parent} is a run folder itself; give the folder that holds the runs ({parent.parent})")
    sweep = read_sweep(parent)
    folders = {p.name: p for p in parent.iterdir() if p.is_dir() and any((p / f).exists() for f in RUN_FILES)}
    names = list(sweep) + sorted(n for n in folders if n not in sweep)
    if not names:
        raise TableError(
            f"{parent}: no runs in this folder (expected sub-folders with {' / '.join(RUN_FILES)} or a {SWEEP_FILE})"
        )
    rows = []
    for i, name in enumerate(names):
        row = read_row(name, folders.get(name), sweep.get(name))
        row.order = i
        rows.append(row)
    return rows


def declared_scores(rows: Sequence[Row]) -> dict[str, Score]:
    """``{key: Score}`` that the rows' tasks declare, tasks in registry order (a task not registered here
    declares none)."""
    out: dict[str, Score] = {}
    present = {r.task for r in rows}
    for task in TASKS.names():
        if task in present:
            for score in TASKS.get(task).scores:
                out.setdefault(score.key, score)
    return out


def score_keys(rows: Sequence[Row]) -> list[str]:
    """The score columns: the declared scores present, in the tasks' order, then the others by name."""
    present = {k for r in rows for k in r.scores}
    declared = declared_scores(rows)
    return [k for k in declared if k in present] + sorted(present - set(declared))


def sort_rows(rows: Sequence[Row], key: str | None) -> list[Row]:
    """``rows`` by ``key`` (best first for scores, smallest first for params / time); missing values last.

    ``None`` keeps the sweep's order (then the names).
    """
    if key is None:
        return sorted(rows, key=lambda r: r.order)
    if key == "name":
        return sorted(rows, key=lambda r: r.name)
    if key == "status":
        return sorted(rows, key=lambda r: (r.status, r.order))
    declared = declared_scores(rows)
    known = set(SORT_KEYS) | set(declared) | {k for r in rows for k in r.scores}
    if key not in known:
        raise TableError(f"--sort {key}: not a column; expected one of {sorted(known)}")

    def better_first(metric: str, v: float) -> float:
        score = declared.get(metric)
        return -v if score is None or score.higher_is_better else v

    def value(row: Row) -> float | None:
        if key == "params":
            return row.params
        if key == "time":
            return row.seconds
        if key == "paper":  # each row in its own metric's direction (FID: lower first)
            return (
                better_first(row.paper.metric, row.paper.value) if row.paper and row.paper.value is not None else None
            )
        v = row.scores.get(key)
        return None if v is None else better_first(key, v)

    return sorted(rows, key=lambda r: (value(r) is None, value(r) if value(r) is not None else 0.0, r.order))


def _score_label(key: str, declared: dict[str, Score]) -> str:
    return declared[key].heading if key in declared else key


def _scaled(key: str, value: float | None, declared: dict[str, Score]) -> float | None:
    return None if value is None else value * (declared[key].scale if key in declared else 1.0)


def _decimals(value: float) -> int:
    # 4 under 1: an L1 of 0.2327 rounded to 0.23 hides the differences between rows
    return 2 if abs(value) >= 1 or value == 0 else 4


def _fmt(value: float | None, decimals: int | None = None) -> str:
    """``value`` with 2 decimals (4 under 1), or with ``decimals``."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{value:.{_decimals(value) if decimals is None else decimals}f}"


def _fmt_params(params: int | None) -> str:
    """``118.20 M``, ``2.1 k``, ``512``."""
    if params is None:
        return ""
    if params >= 1e6:
        return f"{params / 1e6:.2f} M"
    return f"{params / 1e3:.1f} k" if params >= 1e3 else str(params)


def _paper_header(rows: Sequence[Row], declared: dict[str, Score]) -> tuple[str, bool]:
    """The paper column's header and whether each cell must name its metric (rows of several metrics)."""
    metrics = {r.paper.metric for r in rows if r.paper and (r.paper.value is not None or r.paper.text)}
    if len(metrics) == 1:
        return f"paper {_score_label(metrics.pop(), declared)}", False
    return "paper", True


def _paper_cell(row: Row, with_metric: bool, declared: dict[str, Score]) -> str:
    p = row.paper
    if p is None or (p.value is None and not p.text):
        return ""
    cell = p.display()
    if p.extra:
        cell += " (" + ", ".join(f"{_score_label(k, declared)} {v:g}" for k, v in p.extra) + ")"
    return f"{_score_label(p.metric, declared)} {cell}" if with_metric else cell


def _cell(row: Row, key: str, declared: dict[str, Score]) -> str:
    """A score in its unit; ``mean ± std`` for a row of several seeds."""
    mean = _scaled(key, row.scores.get(key), declared)
    value = _fmt(mean)
    if value and row.members and key in row.spread:  # the spread to the mean's decimals
        return f"{value} ± {_fmt(_scaled(key, row.spread[key], declared), _decimals(mean))}"
    return value


def markdown(rows: Sequence[Row]) -> str:
    """A Markdown table of ``rows`` (scores in the units their tasks declare; mean ± std over seeds)."""
    keys = score_keys(rows)
    declared = declared_scores(rows)
    paper_head, with_metric = _paper_header(rows, declared)
    seeded = any(r.members for r in rows)
    head = [
        "run",
        "status",
        "branch",
        *(["n"] if seeded else []),
        *(_score_label(k, declared) for k in keys),
        "params",
        "train time",
        paper_head,
        "paper row",
    ]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join([":---", ":---", ":---"] + ["---:"] * (len(keys) + 3 + seeded) + [":---"]) + "|",
    ]
    for r in rows:
        cells = [
            r.name,
            r.status,
            r.branch,
            *([str(r.n)] if seeded else []),
            *(_cell(r, k, declared) for k in keys),
            _fmt_params(r.params),
            format_seconds(r.seconds),
            _paper_cell(r, with_metric, declared),
            r.paper.description if r.paper else "",
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    sources = sorted({r.paper.source for r in rows if r.paper and (r.paper.value is not None or r.paper.text)})
    if seeded:
        lines += ["", "Scores of several seeds: mean ± sample standard deviation over the n seeds that finished."]
    if sources:
        lines += ["", "Paper numbers: " + "; ".join(sources) + " (not measured on this data)."]
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[Row]) -> str:
    """The same table as CSV, with full precision: scores in their tasks' units, params, seconds."""
    keys = score_keys(rows)
    declared = declared_scores(rows)
    units = {k: k + ("_pct" if k in declared and declared[k].unit == "%" else "") for k in keys}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            "run",
            "group",
            "seed",
            "status",
            "task",
            "branch",
            *(units[k] for k in keys),
            "params",
            "train_seconds",
            "paper_metric",
            "paper_value",
            "paper_source",
            "paper_row",
        ]
    )
    for r in (m for row in rows for m in (row.members or [row])):
        p = r.paper
        group, seed = seed_of(r.name)
        writer.writerow(
            [
                r.name,
                group,
                "" if seed is None else seed,
                r.status,
                r.task,
                r.branch,
                *("" if r.scores.get(k) is None else repr(_scaled(k, r.scores[k], declared)) for k in keys),
                "" if r.params is None else r.params,
                "" if r.seconds is None else round(r.seconds, 1),
                p.metric if p else "",
                p.display() if p else "",
                p.source if p else "",
                p.description if p else "",
            ]
        )
    return out.getvalue()


def write_table(
    parent: str | Path, out: str | Path | None = None, *, sort: str | None = None
) -> tuple[str, list[Path]]:
    """Read the runs of ``parent`` and write ``table.md`` and ``table.csv`` into ``out`` (default ``parent``).

    Returns the Markdown text and the paths written.
    """
    from cen.atomic import atomic_write_text

    rows = sort_rows(group_seeds(collect_rows(parent)), sort)
    folder = Path(out) if out is not None else Path(parent)
    folder.mkdir(parents=True, exist_ok=True)
    text = markdown(rows)
    paths = [folder / "table.md", folder / "table.csv"]
    atomic_write_text(paths[0], text)
    atomic_write_text(paths[1], csv_text(rows))
    return text, paths
