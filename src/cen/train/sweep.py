"""Train several configs in turn into one parent folder (``cen sweep``), resumably.

Each config ``<stem>.yaml`` trains into ``<parent>/<stem>/`` (``run.dir=<parent>``,
``run.name=<stem>``, after the user's overrides); with seeds (``cen sweep --seeds 3``) each
config trains once per seed into ``<parent>/<stem>@<seed>/`` (``train.seed=<seed>``; the data,
the generated scenes included, stay the same), and ``cen table`` shows each config's mean ± std
over its seeds. Before each run its folder decides:

* ``results.json`` there: the run finished; it is skipped;
* ``last.pt`` there (no results): it was interrupted; it resumes exactly from ``last.pt``;
* otherwise it starts.

``<parent>/sweep.json`` records the sweep (written atomically after every change)::

    {"version": 1, "overrides": [...],
     "runs": [{"name", "config", "status", "seconds", "attempts", "error", "overrides"}, ...]}

``overrides`` (top level) are those of the latest sweep, a run's own ``overrides`` those it was
last trained with. ``status`` is pending | running | done | interrupted | failed; ``seconds`` is the
wall time spent training the run in this folder, summed over the sweeps that resumed it.
A failing run is recorded with its one-line error and the sweep goes on; Ctrl-C stops the
sweep once the trainer has saved ``last.pt`` (:class:`cen.train.interrupt.TrainingInterrupted`).

Several sweeps may train into one parent at the same time (one per core or per GPU) when
their lists of configs are disjoint: each rewrites only its own runs' entries of
``sweep.json``, under a lock, on top of what the file holds then.
"""

from __future__ import annotations

import fcntl
import gc
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from cen.atomic import atomic_write_json
from cen.errors import UserError

SWEEP_FILE = "sweep.json"
LOCK_FILE = ".sweep.lock"
VERSION = 1
CONFIG_SUFFIXES = (".yaml", ".yml")
#: Keys the sweep sets itself for every run (after the user's overrides).
OWN_KEYS = ("run.dir", "run.name")
#: The separator of a config's stem and a seed in a run's name (``cen@1``).
SEED_SEPARATOR = "@"

START, RESUME, SKIP = "start", "resume", "skip"


class SweepError(UserError, ValueError):
    """Bad input to a sweep: no configs, a missing file, two configs with the same stem."""


#: ``train(config_path, overrides, run_dir, resume)`` trains one run to its end.
TrainFn = Callable[[Path, list[str], Path, bool], None]
#: ``check(config_path, overrides)`` raises if the config does not load.
CheckFn = Callable[[Path, list[str]], None]


def collect_configs(items: Sequence[str | Path]) -> list[Path]:
    """The config files named by ``items``: a folder gives every ``*.yaml`` / ``*.yml`` in it, sorted by name,
    but those whose name starts with ``_`` (bases that the recipes inherit from, not runs).

    Raises:
        SweepError: an item that does not exist or is not a YAML file, a folder without configs,
            nothing given, or two configs with the same stem (their runs would share a folder).
    """
    configs: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix in CONFIG_SUFFIXES and not p.name.startswith("_")
            )
            if not found:
                raise SweepError(f"{path}: no *.yaml configs in this folder")
            configs += found
        elif path.is_file():
            if path.suffix not in CONFIG_SUFFIXES:
                raise SweepError(f"{path}: expected a .yaml config file or a folder of them")
            configs.append(path)
        else:
            raise SweepError(f"{path}: no such config file or folder")
    if not configs:
        raise SweepError("no configs given: name a folder of *.yaml configs or config files")
    seen: dict[str, Path] = {}
    for path in configs:
        if path.stem in seen:
            raise SweepError(
                f"{seen[path.stem]} and {path} have the same name {path.stem!r}: their runs would "
                "share one folder; rename one"
            )
        seen[path.stem] = path
    return configs


def split_arguments(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(paths, overrides)``: an item with ``=`` that is not an existing path is a ``key=value`` override."""
    paths, overrides = [], []
    for item in items:
        (overrides if "=" in item and not Path(item).exists() else paths).append(item)
    return paths, overrides


def check_overrides(overrides: Sequence[str], *, seeds: bool = False) -> None:
    """Refuse overrides of the keys the sweep sets itself (``run.dir``, ``run.name``; ``train.seed`` with seeds)."""
    own = (*OWN_KEYS, "train.seed") if seeds else OWN_KEYS
    for item in overrides:
        key = item.split("=", 1)[0].strip().lstrip("+~")
        if key in own:
            raise SweepError(
                f"{item}: the sweep sets {key} itself (run.dir = --out, run.name = the config's stem"
                + (", train.seed = each of --seeds)" if seeds else ")")
            )


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its name (the folder under the parent), its config, the overrides it adds."""

    name: str
    config: Path
    extra: tuple[str, ...] = ()


def plan_runs(configs: Sequence[Path], seeds: Sequence[int] | None = None) -> list[RunSpec]:
    """A run per config, or per config and seed (``<stem>@<seed>``, ``train.seed=<seed>``), configs outermost."""
    if seeds is None:
        return [RunSpec(p.stem, p) for p in configs]
    if not seeds or len(set(seeds)) != len(seeds):
        raise SweepError(f"--seeds must name distinct seeds, got {list(seeds)}")
    return [RunSpec(f"{p.stem}{SEED_SEPARATOR}{s}", p, (f"train.seed={s}",)) for p in configs for s in seeds]


def seed_of(name: str) -> tuple[str, int | None]:
    """``("cen", 1)`` for the run name ``cen@1``; ``("cen", None)`` for ``cen``."""
    stem, sep, seed = name.rpartition(SEED_SEPARATOR)
    if sep and seed.isdigit():
        return stem, int(seed)
    return name, None


def default_parent(configs: Sequence[Path], runs_dir: str | Path = "runs") -> Path:
    """``runs/sweep-<name of the folder holding the first config>``."""
    return Path(runs_dir) / f"sweep-{configs[0].resolve().parent.name}"


def decide(run_dir: Path) -> str:
    """:data:`SKIP` (results.json there), :data:`RESUME` (last.pt there) or :data:`START`."""
    if (run_dir / "results.json").is_file():
        return SKIP
    if (run_dir / "last.pt").is_file():
        return RESUME
    return START


@dataclass
class RunEntry:
    """One run of the sweep as recorded in ``sweep.json``."""

    name: str
    config: str
    status: str = "pending"
    seconds: float = 0.0  # wall time spent training it, summed over attempts
    attempts: int = 0
    error: str = ""
    overrides: list[str] = field(default_factory=list)  # those it was last trained with
    pid: int = 0  # the process training it while ``running``

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "config": self.config,
            "status": self.status,
            "seconds": round(self.seconds, 3),
            "attempts": self.attempts,
            "error": self.error,
            "overrides": self.overrides,
            "pid": self.pid,
        }

    @classmethod
    def from_dict(cls, name: str, data: dict, config: str | None = None) -> RunEntry:
        """An entry read back from ``sweep.json`` (missing or malformed fields get their defaults)."""
        overrides = data.get("overrides")
        return cls(
            name=name,
            config=config if config is not None else str(data.get("config", "")),
            status=str(data.get("status", "pending")),
            seconds=_number(data.get("seconds")),
            attempts=int(_number(data.get("attempts"))),
            error=str(data.get("error") or ""),
            overrides=[str(o) for o in overrides] if isinstance(overrides, list) else [],
            pid=int(_number(data.get("pid"))),
        )


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


@dataclass
class SweepLog:
    """``<parent>/sweep.json``: read (keeping earlier wall times), updated and rewritten atomically."""

    path: Path
    runs: dict[str, RunEntry] = field(default_factory=dict)  # this sweep's runs, in its order
    overrides: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, parent: Path, runs: Sequence[RunSpec], overrides: Sequence[str]) -> SweepLog:
        log = cls(path=parent / SWEEP_FILE, overrides=list(overrides))
        earlier = read_sweep(parent)
        for run in runs:
            log.runs[run.name] = RunEntry.from_dict(run.name, earlier.get(run.name, {}), str(run.config))
            if log.runs[run.name].status == "running":  # the sweep that ran it was killed without its handling
                log.runs[run.name].status = "interrupted"
        return log

    def write(self) -> None:
        """Rewrite this sweep's entries; the other runs listed in the file (earlier or concurrent sweeps) stay."""
        with open(self.path.parent / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                entries = {name: _unless_stale(entry) for name, entry in read_sweep(self.path.parent).items()}
                entries.update({name: e.as_dict() for name, e in self.runs.items()})  # in file order, new ones last
                atomic_write_json(
                    self.path, {"version": VERSION, "overrides": self.overrides, "runs": list(entries.values())}
                )
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _unless_stale(entry: dict) -> dict:
    """``entry``, marked ``interrupted`` if it says ``running`` but no live process of this machine trains it."""
    if entry.get("status") != "running":
        return entry
    pid = int(_number(entry.get("pid")))
    if pid > 0:
        try:
            os.kill(pid, 0)
            return entry
        except PermissionError:  # alive, another user's
            return entry
        except OSError:
            pass
    return {**entry, "status": "interrupted"}


def read_sweep(parent: str | Path) -> dict[str, dict]:
    """``{run name: entry}`` of ``<parent>/sweep.json``, in the sweep's order; ``{}`` when absent or unreadable."""
    file = Path(parent) / SWEEP_FILE
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    runs = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(runs, list):
        return {}
    return {str(r["name"]): r for r in runs if isinstance(r, dict) and r.get("name")}


def format_seconds(seconds: float | None) -> str:
    """``42s``, ``5m07s``, ``2h03m``; ``""`` for None."""
    if seconds is None:
        return ""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def one_line(err: BaseException) -> str:
    """``Type: first line of the message``."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def check_config(config: Path, overrides: list[str]) -> None:
    """Load ``config`` with ``overrides`` (the default ``check`` of :func:`run_sweep`); raises ConfigError."""
    from cen.train.config import load_config

    load_config(config, overrides)


def train_with_trainer(config: Path, overrides: list[str], run_dir: Path, resume: bool) -> None:
    """Train one run with :class:`cen.train.trainer.Trainer` (the default ``train`` of :func:`run_sweep`)."""
    from cen.train.config import load_config
    from cen.train.trainer import Trainer

    cfg = load_config(config, overrides)
    trainer = Trainer(cfg, run_dir=run_dir, resume=resume)
    try:
        trainer.fit()
    finally:
        del trainer
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover -- torch is a dependency
            pass


@dataclass
class SweepResult:
    """What a sweep did: run names by outcome, and whether Ctrl-C stopped it."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (name, one-line error)
    interrupted: str | None = None

    @property
    def exit_code(self) -> int:
        """130 after Ctrl-C (the shell's code for SIGINT), 1 if a run failed, else 0."""
        return 130 if self.interrupted else 1 if self.failed else 0


def run_sweep(
    configs: Sequence[Path],
    parent: str | Path,
    overrides: Sequence[str] = (),
    *,
    train: TrainFn = train_with_trainer,
    check: CheckFn | None = check_config,
    seeds: Sequence[int] | None = None,
    stream=None,
    progress: bool | None = None,
    debug: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> SweepResult:
    """Train ``configs`` in order into ``parent/<stem>/`` (see the module docstring).

    Args:
        configs: config files (see :func:`collect_configs`).
        parent: the parent folder of the runs (created).
        overrides: ``key=value`` overrides applied to every config.
        seeds: train every config once per seed, into ``parent/<stem>@<seed>/`` (None: once, as it is).
        train: trains one run; ``train(config, overrides, run_dir, resume)``.
        check: loads a config before anything trains, ``check(config, overrides)``: the runs whose config
            does not load are reported as failed at once and not trained; if no run to train loads (a
            mistyped override), :class:`SweepError` is raised and nothing trains. None: no check.
        stream: where progress and messages go (default stderr).
        progress: show a bar over the runs (default: when ``stream`` is a terminal).
        debug: print a failing run's traceback too.
        clock: seconds, for wall times (a parameter for tests).
    """
    stream = stream or sys.stderr
    overrides = list(overrides)
    check_overrides(overrides, seeds=seeds is not None)
    parent = Path(parent)
    runs = plan_runs(configs, seeds)
    plan = {r.name: decide(parent / r.name) for r in runs}
    arguments = {r.name: [*overrides, *r.extra, f"run.dir={parent}", f"run.name={r.name}"] for r in runs}
    invalid = _check_configs([r for r in runs if plan[r.name] != SKIP], arguments, check)
    parent.mkdir(parents=True, exist_ok=True)
    log = SweepLog.open(parent, runs, overrides)
    for name, action in plan.items():
        if action == SKIP:
            log.runs[name].status = "done"
    log.write()
    counts = {a: sum(v == a for v in plan.values()) for a in (SKIP, RESUME, START)}
    show = stream.isatty() if progress is None and hasattr(stream, "isatty") else bool(progress)
    prog = _Progress(len(runs), stream, show, clock)
    prog.say(
        f"sweep of {len(runs)} run(s) into {parent}: {counts[START]} to start, {counts[RESUME]} to resume, "
        f"{counts[SKIP]} finished already (skipped)"
    )
    result = SweepResult()
    try:
        for i, run in enumerate(runs, 1):
            name, entry, config = run.name, log.runs[run.name], run.config
            head = f"run {i} of {len(runs)}: {name}"
            action = decide(parent / name)  # again: another process may have moved it on
            if action == SKIP or name in invalid:
                entry.status, entry.error = ("done", "") if action == SKIP else ("failed", invalid.get(name, ""))
                log.write()
                if action == SKIP:
                    result.skipped.append(name)
                    prog.say(f"{head}: finished already (results.json), skipped")
                else:
                    result.failed.append((name, entry.error))
                    prog.say(f"{head} FAILED (its config does not load): {entry.error}")
                prog.advance(None, left=None)
                continue
            left = sum(decide(parent / r.name) != SKIP for r in runs[i - 1 :])
            verb = "resuming from last.pt" if action == RESUME else "starting"
            prog.say(f"{head} ({verb}; {prog.timing(left)})")
            prog.show_run(i, name, left)
            entry.status, entry.error, entry.overrides, entry.pid = "running", "", list(overrides), os.getpid()
            entry.attempts += 1
            log.write()
            status, error, took = _attempt(
                train, config, arguments[name], parent / name, action == RESUME, clock, stream if debug else None
            )
            entry.seconds += took
            entry.status, entry.error = status, error if status == "failed" else ""
            log.write()
            if status == "interrupted":
                result.interrupted = name
                prog.say(f"{head} interrupted ({error})")
                break
            if status == "failed":
                result.failed.append((name, error))
                prog.say(
                    f"{head} FAILED after {format_seconds(took)}: {error}"
                    + ("" if debug else " (--debug shows the traceback)")
                )
                prog.advance(None, left=None)
                continue
            result.done.append(name)
            prog.say(f"{head} done in {format_seconds(took)}")
            prog.advance(took, left=sum(decide(parent / r.name) != SKIP for r in runs[i:]))
    finally:
        prog.close()
    total = format_seconds(prog.elapsed())
    if result.interrupted:
        prog.say(
            f"sweep stopped at {result.interrupted} after {total}; rerun the same command to resume it "
            "and go on with the rest"
        )
    else:
        prog.say(
            f"sweep finished in {total}: {len(result.done)} trained, {len(result.skipped)} skipped, "
            f"{len(result.failed)} failed"
        )
    if result.failed:
        prog.say("failed runs: " + "; ".join(f"{name} ({error})" for name, error in result.failed))
    return result


def _attempt(
    train: TrainFn,
    config: Path,
    arguments: list[str],
    run_dir: Path,
    resume: bool,
    clock: Callable[[], float],
    traceback_stream,
) -> tuple[str, str, float]:
    """Train one run: ``(status, message, seconds)`` with status done | interrupted | failed; a failure's
    traceback goes to ``traceback_stream`` when given."""
    start = clock()
    try:
        train(config, arguments, run_dir, resume)
    except KeyboardInterrupt as stop:  # TrainingInterrupted included: the trainer saved last.pt
        return "interrupted", str(stop).strip() or "Ctrl-C", clock() - start
    except Exception as err:  # noqa: BLE001 -- a failing run must not stop the others
        if traceback_stream is not None:
            traceback.print_exception(err, file=traceback_stream)
        return "failed", one_line(err), clock() - start
    return "done", "", clock() - start


class _Progress:
    """The sweep's messages, its bar over the runs, and the ETA: the mean wall time of the runs trained in this
    sweep times the runs left to train (skipped runs do not count)."""

    def __init__(self, total: int, stream, show: bool, clock: Callable[[], float]) -> None:
        self.stream, self.clock, self.t0 = stream, clock, clock()
        self.durations: list[float] = []
        self.bar = tqdm(
            total=total,
            desc="sweep",
            unit="run",
            file=stream,
            disable=not show,
            dynamic_ncols=True,
            bar_format="{desc}: {n_fmt}/{total_fmt} runs done |{bar}| {elapsed} elapsed{postfix}",
        )

    def say(self, text: str) -> None:
        tqdm.write(text, file=self.stream)

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def eta(self, left: int) -> float | None:
        return sum(self.durations) / len(self.durations) * left if self.durations and left else None

    def timing(self, left: int) -> str:
        eta = self.eta(left)
        return f"elapsed {format_seconds(self.elapsed())}" + ("" if eta is None else f", ETA {format_seconds(eta)}")

    def show_run(self, i: int, name: str, left: int) -> None:
        self.bar.set_description_str(f"sweep, run {i} of {self.bar.total}: {name}", refresh=False)
        eta = self.eta(left)
        self.bar.set_postfix_str("" if eta is None else f"ETA {format_seconds(eta)}")

    def advance(self, seconds: float | None, *, left: int | None) -> None:
        """One run over; ``seconds`` of training when it trained to its end, ``left`` runs still to train."""
        if seconds is not None:
            self.durations.append(seconds)
        if left is not None:
            eta = self.eta(left)
            self.bar.set_postfix_str("" if eta is None else f"ETA {format_seconds(eta)}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _check_configs(runs: Sequence[RunSpec], arguments: dict[str, list[str]], check: CheckFn | None) -> dict[str, str]:
    """``{name: one-line error}`` of the runs whose config does not load; raises SweepError when none does."""
    if check is None:
        return {}
    invalid = {}
    for run in runs:
        try:
            check(run.config, arguments[run.name])
        except Exception as err:  # noqa: BLE001 -- reported as that run's failure
            invalid[run.name] = one_line(err)
    if runs and len(invalid) == len(runs):
        first = runs[0].name
        raise SweepError(f"no config of the sweep loads (nothing was trained); {first}: {invalid[first]}")
    return invalid
