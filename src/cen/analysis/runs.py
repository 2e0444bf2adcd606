"""Reading a run folder written by ``cen train`` (finished or still running) into plain data.

A run folder holds ``config.yaml``, ``metrics.jsonl`` (JSON lines, ``kind`` = train |
val | test | info), ``last.pt`` / ``best.pt``, ``results.json`` and ``images/`` (see
:mod:`cen.train.trainer`). :func:`load_run` reads what is there and lists what is
missing in :attr:`Run.notes` (one line each) instead of failing; only a folder that
holds none of these files is refused with :class:`RunError`.

Exchanging layers and their scales come from a checkpoint's state dict without
rebuilding the model: the layer names from the checkpoint's ``gamma_tracker``
state, else from the ``exchange`` records of ``metrics.jsonl``; each layer's
``<name>.weight`` (``M*C`` values) is viewed as ``gamma`` of shape ``(M, C)``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cen.core.defaults import THRESHOLD

RUN_FILES = ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "results.json")


class RunError(ValueError):
    """A folder that cannot be read as a run at all."""


@dataclass
class Checkpoint:
    """What the report uses of one checkpoint: ``gammas`` ``{layer: Tensor(M, C)}``, bottom to top."""

    path: Path
    gammas: dict[str, torch.Tensor]
    thresholds: dict[str, float]
    tracker: dict | None  # GammaTracker.state_dict(), when the run tracked gamma
    progress: dict


@dataclass
class Run:
    path: Path
    name: str
    config: dict
    records: list[dict]
    results: dict | None
    checkpoints: dict[str, Checkpoint]  # "best" / "last"
    notes: list[str] = field(default_factory=list)

    # -- views of the records ----------------------------------------------------
    def kind(self, kind: str) -> list[dict]:
        return [r for r in self.records if r.get("kind") == kind]

    @property
    def modalities(self) -> list[str]:
        mods = self.config.get("modalities")
        if isinstance(mods, list) and mods:
            return [str(m) for m in mods]
        for rec in self.kind("val") + self.kind("test"):
            if rec.get("alpha"):
                return list(rec["alpha"])
        return []

    @property
    def threshold(self) -> float:
        """``theta`` of the run's config (``fusion.threshold``; ``model.threshold`` in older runs), else the
        package default."""
        value = (self.config.get("fusion") or {}).get("threshold", (self.config.get("model") or {}).get("threshold"))
        return float(value) if isinstance(value, (int, float)) else THRESHOLD

    def evaluations(self) -> list[dict]:
        """The validation records, in order."""
        return self.kind("val")

    def gamma_records(self) -> list[tuple[int, dict]]:
        """``(step, GammaTracker.summary())`` per evaluation: a ``gamma`` field of val records or ``gamma`` records."""
        out = []
        for rec in self.records:
            if rec.get("kind") == "gamma" and isinstance(rec.get("layers"), dict):
                out.append((rec.get("step", 0), rec))
            elif rec.get("kind") == "val" and isinstance(rec.get("gamma"), dict):
                out.append((rec.get("step", 0), rec["gamma"]))
        return out

    def test_scores(self) -> dict[str, dict]:
        """``{branch: {score: value or list}}`` from results.json (per-class lists included), else the test record."""
        if self.results and isinstance(self.results.get("test"), dict):
            return self.results["test"]
        tests = self.kind("test")
        return tests[-1].get("scores", {}) if tests else {}

    def exchange_layers(self) -> list[str]:
        for rec in reversed(self.records):
            if isinstance(rec.get("exchange"), dict) and rec["exchange"]:
                return list(rec["exchange"])
        return []


def _read_config(path: Path, notes: list[str]) -> dict:
    file = path / "config.yaml"
    if not file.is_file():
        notes.append(f"{file}: missing; modalities and theta are taken from the records / defaults")
        return {}
    try:
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(OmegaConf.load(file), resolve=False)
    except Exception as err:  # noqa: BLE001 -- a broken YAML file should not stop the report
        notes.append(f"{file}: unreadable ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
        return {}
    return cfg if isinstance(cfg, dict) else {}


def read_records(file: Path, notes: list[str]) -> list[dict]:
    """The JSON records of ``metrics.jsonl``; a line that is not JSON (a run writing it now) is skipped with a note."""
    if not file.is_file():
        notes.append(f"{file}: missing; no curves (has the run started?)")
        return []
    records, bad = [], []
    for i, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad.append(i)
            continue
        if isinstance(rec, dict):
            records.append(rec)
    if bad:
        notes.append(f"{file}: skipped {len(bad)} line(s) that are not JSON (first: line {bad[0]})")
    if not records:
        notes.append(f"{file}: no records yet")
    return records


def _read_results(path: Path, notes: list[str]) -> dict | None:
    file = path / "results.json"
    if not file.is_file():
        notes.append(f"{file}: missing; the test table comes from the last test record, if any (run not finished?)")
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        notes.append(f"{file}: not JSON ({err})")
        return None
    return data if isinstance(data, dict) else None


def _num_modalities(config: dict, records: list[dict]) -> int:
    mods = config.get("modalities")
    if isinstance(mods, list) and mods:
        return len(mods)
    for rec in records:
        if isinstance(rec.get("exchange"), dict) and rec["exchange"]:
            return len(next(iter(rec["exchange"].values())))
    return 0


def _model_states(ckpt) -> dict[str, dict]:
    """``{network: state_dict}`` of a checkpoint: version 2 ``models``, or version 1 / weights ``model``."""
    if not isinstance(ckpt, dict):
        return {}
    if isinstance(ckpt.get("models"), dict):
        return {k: v for k, v in ckpt["models"].items() if isinstance(v, dict)}
    return {"model": ckpt["model"]} if isinstance(ckpt.get("model"), dict) else {}


def read_checkpoint(
    file: Path, layers: list[str], num_modalities: int, threshold: float, notes: list[str]
) -> Checkpoint | None:
    """The exchanging layers' ``gamma`` of a checkpoint (see the module docstring), or None with a note."""
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- truncated, foreign or pickled with code: say so and go on
        notes.append(f"{file}: cannot be read as a checkpoint ({type(err).__name__})")
        return None
    states = _model_states(ckpt)
    if not states:
        notes.append(f"{file}: not a cen checkpoint (no 'models' or 'model' state dict)")
        return None
    tracker = ckpt.get("gamma_tracker") if isinstance(ckpt.get("gamma_tracker"), dict) else None
    thresholds = {}
    if tracker is not None and isinstance(tracker.get("layers"), dict):
        layers = list(tracker["layers"])
        thresholds = {n: float(v.get("threshold", threshold)) for n, v in tracker["layers"].items()}
    else:
        notes.append(
            f"{file}: no gamma tracking state (a run from before it existed); "
            "the Theorem 1 statistics need a run that tracked gamma"
        )
    # the network with the exchanging norms: the one that holds every layer's scale (the primary model first)
    state = next(
        (st for st in states.values() if all(f"{n}.weight" in st for n in layers)), next(iter(states.values()))
    )
    gammas = {}
    for name in layers:
        weight = state.get(f"{name}.weight")
        if not isinstance(weight, torch.Tensor) or num_modalities < 1 or weight.numel() % num_modalities:
            notes.append(f"{file}: no scales of {num_modalities} modalities for layer {name}")
            continue
        gammas[name] = weight.detach().float().view(num_modalities, -1)
        thresholds.setdefault(name, threshold)
    progress = ckpt.get("progress") if isinstance(ckpt.get("progress"), dict) else {}
    return Checkpoint(path=file, gammas=gammas, thresholds=thresholds, tracker=tracker, progress=progress)


def load_run(path: str | Path) -> Run:
    """Read the run folder ``path``; raises :class:`RunError` only if it is not a run folder at all."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path}: no such folder")
    if not any((path / f).exists() for f in RUN_FILES):
        raise RunError(f"{path} is not a run folder: it has none of {', '.join(RUN_FILES)}")
    notes: list[str] = []
    config = _read_config(path, notes)
    records = read_records(path / "metrics.jsonl", notes)
    results = _read_results(path, notes)
    run = Run(
        path=path,
        name=path.resolve().name,
        config=config,
        records=records,
        results=results,
        checkpoints={},
        notes=notes,
    )
    layers = run.exchange_layers()
    num = _num_modalities(config, records)
    for key in ("best", "last"):
        file = path / f"{key}.pt"
        if not file.is_file():
            notes.append(f"{file}: missing")
            continue
        ckpt = read_checkpoint(file, layers, num, run.threshold, notes)
        if ckpt is not None:
            run.checkpoints[key] = ckpt
    # the same note about the tracker from best.pt and last.pt says nothing new
    seen: set[str] = set()
    run.notes = [n for n in notes if not (n.split(": ", 1)[-1] in seen or seen.add(n.split(": ", 1)[-1]))]
    return run


def numeric_scores(scores: dict) -> dict[str, float]:
    """The numeric (non-list) entries of one branch's scores; None / nan dropped."""
    out = {}
    for key, value in (scores or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


def per_class_scores(scores: dict) -> dict[str, list[Any]]:
    """The per-class lists of one branch's scores (e.g. ``per_class_iou``)."""
    return {
        k: v
        for k, v in (scores or {}).items()
        if isinstance(v, list) and v and all(x is None or isinstance(x, (int, float)) for x in v)
    }
