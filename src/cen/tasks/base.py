"""The task interface: what differs between tasks, for an engine that owns what they share.

A :class:`Task` (compare Lightning's ``LightningModule``) says what a task *is*; the engine
(:mod:`cen.train`: the training loop, the evaluation loop, prediction, best-model
selection, checkpoints, devices, DDP, logging) runs every task the same way and knows a
task only through this interface. Nothing here imports the engine.

A task supplies, once:

* its **data** (:meth:`build_datasets`), **models** (:meth:`build_models`) and, if it
  needs more than one optimiser over its primary model, :meth:`configure_optimizers`;
* its **config part** (:attr:`config`: the keys of ``data``, ``model``, ``loss``, ``eval``
  that only this task reads; a key of another task in its recipe is an error naming that task);
* a **training step**: either :meth:`loss` (the default :meth:`training_step` does forward,
  loss, the sparsity penalty and the optimiser step) or its own :meth:`training_step`
  (a GAN steps its two optimisers itself);
* its **evaluation**: :meth:`eval_step` (a batch to ``{branch: prediction}``),
  :meth:`make_metrics` (an accumulator of ``update(branch, prediction, target)`` /
  ``compute()``), optionally :meth:`save_images`;
* its **prediction** for ``cen predict``: :meth:`read_inputs`, :meth:`predict` (default
  :meth:`eval_step`), :meth:`write_prediction`;
* its **score metadata**: :attr:`scores`, a tuple of :class:`Score` (key, label, unit,
  better-is-higher); the first is what picks ``best.pt`` unless ``train.select_metric``
  says otherwise, and ``cen table`` / ``cen report`` read the same tuple.

A task is registered by name (``@TASKS.register("segmentation")``) and built from the
resolved config: ``TASKS.get(cfg.task)(cfg)``. A user's own task lives in their own module,
named by the config's ``plugins`` list so the command line imports it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from cen.core.defaults import ENSEMBLE_KEY
from cen.core.stats import exchange_split, exchange_stats
from cen.errors import ConfigError, DataError, UserError
from cen.tasks.optim import DECODER, ENCODER, build_optimizer
from cen.tasks.sparsity import SparsityPenalty

__all__ = ["DECODER", "ENCODER", "Models", "Optimizers", "PredictError", "Score", "Task", "output_names"]

Models = Mapping[str, nn.Module]
Optimizers = Mapping[str, torch.optim.Optimizer]


class PredictError(UserError, ValueError):
    """Bad input to ``cen predict``: the message says which argument and what was expected."""


@dataclass(frozen=True)
class Score:
    """One score a task reports.

    Attributes:
        key: its key in the results (``"miou"``).
        label: its name in tables (``"mIoU"``).
        higher_is_better: the direction of "better".
        scale: the factor from the stored value to the printed one (100 for a fraction shown in %).
        unit: the printed unit (``"%"`` or ``""``).
    """

    key: str
    label: str
    higher_is_better: bool = True
    scale: float = 1.0
    unit: str = ""

    def show(self, value: float | None, digits: int | None = None) -> str:
        """``value`` in the printed unit (``"-"`` for a missing or non-finite value)."""
        if value is None or not math.isfinite(value):
            return "-"
        digits = (2 if self.scale == 100 else 4) if digits is None else digits
        return f"{value * self.scale:.{digits}f}"

    @property
    def heading(self) -> str:
        return f"{self.label} {self.unit}".strip()


def output_names(model: nn.Module, modalities: Sequence[str]) -> list[str]:
    """The model's output keys with every modality given: its ``output_names`` when it says, else the
    modalities plus ``"ensemble"`` when it has an α-ensemble. The one place that answers this."""
    inner = model
    while hasattr(inner, "module") and isinstance(inner.module, nn.Module):  # DDP / compile wrappers
        inner = inner.module
    names = getattr(inner, "output_names", None)
    if names is not None:
        return list(names)
    return list(modalities) + ([ENSEMBLE_KEY] if getattr(inner, "ensemble", None) is not None else [])


class Task:
    """Base class of the tasks (see the module docstring); subclasses fill in what is marked *required*.

    Class attributes:
        name: the ``task:`` value of a config.
        primary: key of :meth:`build_models` that is the inference model.
        target_key: sample key of the target (``"mask"``, ``"target"``).
        model_names: the ``model.name`` values it builds (empty: any).
        config: ``{group: dataclass}``, the task's own keys in the config groups
            ``data``, ``model``, ``loss``, ``eval`` (see :mod:`cen.tasks.schema`).
        scores: its scores, in the order tables show them.
        default_score: the key of the score that picks ``best.pt`` by default (empty: the first).
        eval_options: the keyword options :meth:`eval_step` takes (e.g. ``scales``, ``flip``).
        default_threshold: θ when ``fusion.threshold`` is null.
    """

    name: ClassVar[str] = ""
    primary: ClassVar[str] = "model"
    target_key: ClassVar[str] = "target"
    model_names: ClassVar[tuple[str, ...]] = ()
    config: ClassVar[Mapping[str, type]] = {}
    scores: ClassVar[tuple[Score, ...]] = ()
    default_score: ClassVar[str] = ""
    eval_options: ClassVar[tuple[str, ...]] = ()
    default_threshold: ClassVar[float | None] = None

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        if not self.scores:
            raise TypeError(f"task {type(self).__name__} declares no scores")
        if self.model_names and cfg.model.name not in self.model_names:
            raise ConfigError(
                f"model.name={cfg.model.name!r} is not a model of task {self.name!r}; "
                f"expected one of {list(self.model_names)}"
            )
        if self.default_threshold is not None and cfg.fusion.threshold is None:
            cfg.fusion.threshold = self.default_threshold
        default = self.default_score or self.scores[0].key
        key = default if cfg.train.select_metric == "auto" else cfg.train.select_metric
        known = {s.key: s for s in self.scores}
        if key not in known:
            raise ConfigError(
                f"train.select_metric={key!r} is not a {self.name} score; expected auto or one of {list(known)}"
            )
        self.score_info: Score = known[key]
        self.select: str = cfg.train.select  # resolved by setup() once the model is known
        self.penalty = SparsityPenalty.from_config(cfg.loss)
        self.collate_fn: Callable[[list], Any] | None = None
        # Set by the engine (cen.train.precision.Precision): how optimize() runs backward and the step.
        self.precision = None

    # -- scores ------------------------------------------------------------------------
    @classmethod
    def score(cls, key: str) -> Score:
        """The :class:`Score` of ``key`` (a ``KeyError`` naming the known keys)."""
        for s in cls.scores:
            if s.key == key:
                return s
        raise KeyError(f"task {cls.name!r} has no score {key!r}; its scores: {[s.key for s in cls.scores]}")

    @property
    def score_name(self) -> str:
        """The key of the score that picks ``best.pt``."""
        return self.score_info.key

    @property
    def score_label(self) -> str:
        """What picks ``best.pt``, for messages (e.g. ``"ensemble mIoU"``)."""
        return f"{self.select} {self.score_info.label}"

    def format_value(self, score: float) -> str:
        """A score of :attr:`score_info` as printed (e.g. ``"51.10"`` for an mIoU of 0.511)."""
        return self.score_info.show(score)

    def selected_score(self, results: Mapping[str, Mapping]) -> float:
        """The value that picks ``best.pt``: :attr:`score_name` of the output :attr:`select`."""
        value = results.get(self.select, {}).get(self.score_name)
        if value is None:
            raise KeyError(f"train.select={self.select!r} is not an output of the model; outputs are {list(results)}")
        return value

    def improves(self, score: float, best: float | None) -> bool:
        """Whether ``score`` beats ``best`` (``None``: nothing yet; a non-finite score never improves)."""
        if best is None:
            return True
        if not math.isfinite(score):
            return False
        if not math.isfinite(best):
            return True
        return score > best if self.score_info.higher_is_better else score < best

    def format_table(self, results: Mapping[str, Mapping], *, title: str | None = None) -> str:
        """The printed table: one row per branch, one column per :attr:`scores` entry, in its unit."""
        width = max([len("branch")] + [len(b) for b in results])
        cols = [(s, max(9, len(s.heading))) for s in self.scores]
        head = f"{'branch':<{width}}" + "".join(f"  {s.heading:>{w}}" for s, w in cols)
        lines = [title] if title else []
        lines += [*self.table_notes(), head, "-" * len(head)]
        for branch, values in results.items():
            lines.append(f"{branch:<{width}}" + "".join(f"  {s.show(values.get(s.key)):>{w}}" for s, w in cols))
        return "\n".join(lines)

    def table_notes(self) -> list[str]:
        """Lines printed above the table (e.g. which features FID used); none by default."""
        return []

    # -- config and data ---------------------------------------------------------------
    @classmethod
    def check_config(cls, cfg) -> None:
        """Value checks of the task's own keys (called when a config of this task is loaded); none by default."""

    @property
    def input_keys(self) -> tuple[str, ...]:
        """The sample keys the model reads: the config's modalities."""
        return tuple(self.cfg.modalities)

    def check_training_config(self) -> None:
        """Raise a :class:`ConfigError` for settings that cannot train (optional)."""

    def prepare_data(self) -> None:
        """Make the data once before :meth:`build_datasets` (main process only; e.g. generate scenes)."""
        from cen.tasks.datasets import prepare_data

        prepare_data(self.cfg)

    def build_datasets(self, splits=("train", "val", "test"), *, corruption=None) -> dict[str, Dataset]:
        """``{split: Dataset}`` of dict samples with :attr:`input_keys` and :attr:`target_key` (*required*).

        ``corruption``: a callable applied to every decoded sample before the task's pipeline (``cen eval
        --corruptions``: :class:`cen.data.corruptions.CorruptModality`); :meth:`corrupted` wraps transforms so.
        """
        raise NotImplementedError

    def corrupted(self, transforms: Mapping[str, Any], corruption=None) -> dict[str, Any]:
        """``{"train": ..., "eval": ...}`` transforms with the sensor corruptions applied to the decoded samples
        first: ``corruption`` (evaluation under a fault) on both, and ``data.corruptions`` (a training
        augmentation, :class:`cen.data.corruptions.RandomCorruption`) on the training one."""
        from cen.data.corruptions import RandomCorruption, with_corruption

        out = dict(transforms)
        spec = self.cfg.data.get("corruptions")
        if spec is not None:
            spec = dict(spec)
            unknown = sorted(set(spec) - {"p", "names", "severities"})
            if unknown:
                raise ConfigError(f"data.corruptions has no key {unknown}; it takes p, names, severities")
            try:
                augment = RandomCorruption(
                    p=float(spec.get("p", 0.5)),
                    corruptions=None if spec.get("names") is None else list(spec["names"]),
                    severities=list(spec.get("severities") or (1, 2, 3, 4, 5)),
                    modalities=list(self.input_keys),
                )
            except ValueError as err:
                raise ConfigError(f"data.corruptions={spec}: {err}") from None
            out["train"] = with_corruption(augment, out["train"])
        if corruption is not None:
            out = {k: with_corruption(corruption, v) for k, v in out.items()}
        return out

    def data_context(self) -> str:
        """Config values worth naming when a sample cannot be read (appended to the error)."""
        return f"modalities={list(self.cfg.modalities)}"

    def check_datasets(self, datasets: Mapping[str, Dataset]) -> None:
        """Read the first sample of each split and check its keys (a :class:`DataError` names what is wrong)."""
        wanted = list(self.input_keys)
        for split, ds in datasets.items():
            if len(ds) == 0:
                raise DataError(f"the {split} split is empty ({getattr(ds, 'list_file', '')})")
            try:
                sample = ds[0]
            except ValueError as err:
                raise DataError(f"{err} [config: {self.data_context()}]") from None
            if not isinstance(sample, Mapping) or self.target_key not in sample:
                raise DataError(
                    f"{split} samples must be dicts with the modalities and {self.target_key!r}, "
                    f"got {type(sample).__name__}"
                )
            missing = [m for m in wanted if m not in sample]
            if missing:
                have = [k for k in sample if k != self.target_key]
                raise DataError(
                    f"modalities {missing} named in the config are absent from the {split} data "
                    f"(it provides {have}); set modalities=[{','.join(have)}] or add that data"
                )

    # -- models and optimisers ------------------------------------------------------------
    def build_models(self) -> dict[str, nn.Module]:
        """Every trained network by name, :attr:`primary` among them (*required*).

        The engine calls it once after seeding, so initial weights depend only on the seed.
        """
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        """The inference model alone (used by :func:`cen.load_model`); the default builds all and keeps it."""
        return self.build_models()[self.primary]

    def outputs(self, model: nn.Module) -> list[str]:
        """The output keys of the primary model (:func:`output_names`)."""
        return output_names(model, self.cfg.modalities)

    def setup(self, models: Models) -> None:
        """Resolve ``train.select`` against the model's outputs: ``auto`` is the ensemble when there is
        one, else the first output."""
        outputs = self.outputs(models[self.primary])
        if self.select == "auto":
            self.select = ENSEMBLE_KEY if ENSEMBLE_KEY in outputs else outputs[0]
        if self.select not in outputs:
            raise ConfigError(
                f"train.select={self.select!r} is not an output of the model; choose one of {outputs} or auto"
            )

    def configure_optimizers(self, models: Models) -> dict[str, torch.optim.Optimizer]:
        """Optimisers by name; the default: one over the primary model (:func:`cen.tasks.optim.build_optimizer`:
        ``encoder`` and ``decoder`` groups, the fusion points' γ in their own group)."""
        return {self.primary: build_optimizer(models[self.primary], self.cfg.optim)}

    def meta(self) -> dict[str, Any]:
        """What a checkpoint must agree on with the config to be loaded (compared on resume and in ``cen eval``)."""
        return {"task": self.name, "modalities": list(self.cfg.modalities)}

    # -- training -------------------------------------------------------------------------
    def train_mode(self, models: Models) -> None:
        """Put the models in training mode (the default: ``.train()`` on each)."""
        for model in models.values():
            model.train()

    def to_device(self, batch: Mapping[str, Any], device: torch.device, keys: Sequence[str]) -> dict[str, Tensor]:
        """``{key: batch[key]}`` on ``device`` for ``keys``."""
        nb = device.type == "cuda"
        return {k: batch[k].to(device, non_blocking=nb) for k in keys}

    def loss(self, outputs: Mapping[str, Tensor], target: Tensor, batch: Mapping[str, Any]) -> tuple[Tensor, dict]:
        """``(loss, detached parts to log)`` of the primary model's ``outputs`` (the default training step's)."""
        raise NotImplementedError(f"task {self.name!r} must define loss() or its own training_step()")

    def check_batch(self, batch: Mapping[str, Any]) -> None:
        """Checks of a CPU training batch before it moves (e.g. label range); none by default."""

    def training_step(
        self, batch: Mapping[str, Tensor], models: Models, nets: Models, optimizers: Optimizers
    ) -> dict[str, Tensor]:
        """One optimisation step on a CPU batch; returns detached scalars to log (``"loss"`` required).

        The default: forward of ``nets[primary]`` on the modalities, :meth:`loss`, the sparsity
        penalty (:attr:`penalty`), one step of ``optimizers[primary]`` (:meth:`optimize`), the
        penalty's proximal step. ``models`` are the plain networks, ``nets`` the same wrapped for
        the forward pass (DDP, compile). The engine runs this under autocast when asked.
        """
        model, optimizer = models[self.primary], optimizers[self.primary]
        self.check_batch(batch)
        device = next(model.parameters()).device
        # the modalities of the batch: all of them, or those that modality dropout kept this step
        inputs = self.to_device(batch, device, [m for m in self.input_keys if m in batch])
        target = self.to_device(batch, device, [self.target_key])[self.target_key]
        outputs = nets[self.primary](inputs)
        loss, parts = self.loss(outputs, target, batch)
        term, l1 = self.penalty.loss(model, len(outputs))
        if l1 is not None:
            parts["l1"] = l1
        if term is not None:
            loss = loss + term
        self.optimize(loss, optimizer)
        self.penalty.after_step(model, optimizer, len(outputs))
        return {"loss": loss.detach(), **parts}

    def optimize(self, loss: Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Zero ``optimizer``'s gradients, back-propagate ``loss`` and step, as ``train.precision`` asks.

        Runs outside autocast and, in fp16, through the engine's gradient scaler; without an
        engine (or in fp32) it is ``zero_grad(set_to_none=True); loss.backward(); optimizer.step()``.
        """
        precision = getattr(self, "precision", None)
        if precision is not None:
            precision.optimize(loss, optimizer)
            return
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    # -- evaluation (the engine runs the loop: cen.train.evaluation) -------------------------
    @contextlib.contextmanager
    def eval_modes(self, models: Models) -> Iterator[None]:
        """The modes the models evaluate in (default: the primary in eval mode), restored afterwards."""
        model = models[self.primary]
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            yield
        finally:
            for module, mode in modes:
                module.training = mode

    def eval_step(
        self, batch: Mapping[str, Any], models: Models, *, device: torch.device, modalities: Sequence[str], **options
    ) -> dict[str, Tensor]:
        """``{branch: prediction}`` of the primary model on the ``modalities`` of ``batch`` (the default:
        the model's 2-d and 4-d tensor outputs as they are). ``options`` are :attr:`eval_options`."""
        if options:
            raise TypeError(f"unknown {self.name} evaluation options {sorted(options)}")
        inputs = self.to_device(batch, device, modalities)
        out = models[self.primary](inputs)
        return {k: v for k, v in out.items() if isinstance(v, Tensor) and v.ndim in (2, 4)}

    def make_metrics(self, branches: Sequence[str], device: torch.device):
        """An accumulator with ``update(branch, prediction, target)`` and ``compute() -> {branch: {score: value}}``
        (*required*); summing over processes is its job."""
        raise NotImplementedError

    def save_images(self, folder: Path, batch: Mapping[str, Any], outputs: Mapping[str, Tensor], start: int,
                    limit: int) -> int:  # fmt: skip
        """Write up to ``limit`` pictures of this batch into ``folder`` (numbered from ``start``); how many.
        None by default."""
        return 0

    def test_options(self) -> dict[str, Any]:
        """The :meth:`eval_step` options of the final test (e.g. test-time augmentation from the config)."""
        return {}

    def describe_options(self, options: Mapping[str, Any]) -> str:
        """Text appended to a table's title for ``options`` (e.g. ``", scales [1.0]"``)."""
        return ""

    def summary(self, models: Models) -> dict[str, Any]:
        """Extra fields of the validation and test records; the default: :func:`model_summary` of the primary."""
        return model_summary(models[self.primary])

    # -- prediction (cen predict; the engine runs it: cen.train.predict) --------------------
    predict_options: ClassVar[tuple[str, ...]] = ()

    def read_inputs(self, paths: Mapping[str, str], **options) -> dict[str, Tensor]:
        """``{modality: path}`` -> a batch of one sample ``{modality: Tensor(1, ...)}`` prepared as the
        loaders prepare evaluation samples (*required* for ``cen predict``)."""
        raise PredictError(f"cen predict does not know how to read inputs for task {self.name!r}")

    def predict(self, models: Models, batch: Mapping[str, Tensor], *, device: torch.device, **options):
        """The outputs ``cen predict`` writes; the default: :meth:`eval_step` on the given modalities."""
        with self.eval_modes(models), torch.no_grad():
            return self.eval_step(batch, models, device=device, modalities=list(batch), **options)

    def write_prediction(self, outputs, out: Path, **options) -> str:
        """Write ``outputs`` to ``out``; returns the line ``cen predict`` prints (*required* for ``cen predict``)."""
        raise PredictError(f"cen predict does not know how to write predictions of task {self.name!r}")


def is_main_process() -> bool:
    """Whether this is the process that writes files (rank 0, or the only one)."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def model_summary(model: nn.Module) -> dict:
    """``alpha`` (softmax weights by name) and the exchanged share per layer and modality of a MultiModal
    (:mod:`cen.core.stats`: ``exchange`` all exchanged channels, ``exchange_unpenalised`` the part of them outside
    the modality's penalised group)."""
    out: dict = {}
    names = list(getattr(model, "names", ()))
    ens = getattr(model, "ensemble", None)
    if ens is not None:
        out["alpha"] = {k: float(v.detach()) for k, v in ens.weights().items()}
    stats = exchange_stats(model)
    if stats:
        out["exchange"] = {layer: dict(zip(names, fr)) for layer, fr in stats.items()}
        out["exchange_mean"] = {name: sum(fr[m] for fr in stats.values()) / len(stats) for m, name in enumerate(names)}
    split = exchange_split(model)
    if split:
        out["exchange_unpenalised"] = {layer: dict(zip(names, s["unpenalised"])) for layer, s in split.items()}
    return out


def format_per_class(
    results: Mapping[str, Mapping], class_names: Sequence[str] | None = None, key: str = "per_class_iou"
) -> str:
    """A per-class score (``key``: a list per branch) in % (rows: classes; columns: branches); ``-`` for a
    class left out."""
    branches = list(results)
    k = max(len(r[key]) for r in results.values())
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} classes")
    width = max(len("class"), *(len(n) for n in names))
    cols = [max(9, len(b)) for b in branches]
    lines = [f"{'class':<{width}}" + "".join(f"  {b:>{c}}" for b, c in zip(branches, cols))]
    lines.append("-" * len(lines[0]))
    for i, name in enumerate(names):
        row = f"{name:<{width}}"
        for b, c in zip(branches, cols):
            v = results[b][key][i]
            row += f"  {'-':>{c}}" if v is None else f"  {100 * v:>{c}.2f}"
        lines.append(row)
    return "\n".join(lines)
