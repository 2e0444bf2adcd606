"""The task interface: what differs between tasks, for an engine that owns what they share.

A :class:`Task` (compare Lightning's ``LightningModule``) owns the batch keys, how a
batch becomes the model's input and target, the model(s) and their optimisers, the
training step (losses and optimiser steps: manual optimisation, so a GAN steps its
two optimisers itself), evaluation with its metrics, the score that selects
``best.pt``, the images saved for inspection and the printed table. The engine
(:class:`cen.train.trainer.Trainer`) owns devices and DDP, seeding, the epoch/step
loop, learning-rate stages, exact resume, interrupts, checkpoints and logging, and
knows a task only through this interface. Nothing here imports the engine.

A task is registered by name (``@TASKS.register("segmentation")``) and built from the
resolved config: ``TASKS.get(cfg.task)(cfg)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from cen.core.stats import exchange_stats
from cen.tasks.errors import ConfigError, DataError

#: Names of the parameter groups that the learning-rate stages address (``encoder_lr``, ``decoder_lr``).
ENCODER, DECODER = "encoder", "decoder"

Models = Mapping[str, nn.Module]
Optimizers = Mapping[str, torch.optim.Optimizer]


class Task:
    """Base class of the tasks; subclasses fill in the methods marked *required*.

    Class attributes:
        name: the ``task:`` value of a config.
        primary: key of :meth:`build_models` that is the inference model (what
            :func:`cen.load_model` returns and :meth:`evaluate` scores).
        target_key: sample key of the target (``"mask"``, ``"target"``).
        model_names: the ``model.name`` values (:data:`~cen.tasks.registry.MODELS`) it builds.
        eval_options: the names of the options :meth:`evaluate` accepts (e.g. ``scales``, ``flip``).
        default_threshold: θ when ``model.threshold`` is null (written into the config, so
            ``config.yaml`` and checkpoints hold the value); None: left alone.
        scores: the ``train.select_metric`` values the task accepts; ``default_score`` is ``auto``'s.
        higher_is_better: whether a larger score is better.

    Instance attributes set by ``__init__``:
        score_name: the entry of :meth:`score`'s result that picks ``best.pt``.
        collate_fn: how the engine's loaders batch a list of samples (None: torch's default
            collate); a subclass sets it after ``super().__init__``.
    """

    name: ClassVar[str] = ""
    primary: ClassVar[str] = "model"
    target_key: ClassVar[str] = "target"
    model_names: ClassVar[tuple[str, ...]] = ()  # the ``model.name`` values this task builds (empty: any)
    eval_options: ClassVar[tuple[str, ...]] = ()  # the keyword options :meth:`evaluate` takes
    default_threshold: ClassVar[float | None] = None
    scores: ClassVar[tuple[str, ...]] = ()  # train.select_metric choices (empty: not checked)
    default_score: ClassVar[str] = "score"
    higher_is_better: ClassVar[bool] = True

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        if self.model_names and cfg.model.name not in self.model_names:
            raise ConfigError(
                f"model.name={cfg.model.name!r} is not a model of task {self.name!r}; "
                f"expected one of {list(self.model_names)}"
            )
        if self.default_threshold is not None and cfg.model.threshold is None:
            cfg.model.threshold = self.default_threshold
        metric = self.default_score if cfg.train.select_metric == "auto" else cfg.train.select_metric
        if self.scores and metric not in self.scores:
            raise ConfigError(
                f"train.select_metric={metric!r} is not a {self.name} score; expected auto or one of "
                f"{list(self.scores)}"
            )
        self.score_name = metric
        self.collate_fn: Callable[[list], Any] | None = None
        # Set by the engine (cen.train.precision.Precision): how optimize() runs backward and the step.
        self.precision = None

    # -- config and data ---------------------------------------------------------
    @property
    def input_keys(self) -> tuple[str, ...]:
        """The sample keys the model reads: the config's modalities."""
        return tuple(self.cfg.modalities)

    def check_training_config(self) -> None:
        """Raise :class:`cen.train.config.ConfigError`-like user errors for settings that cannot train (optional)."""

    def build_datasets(self, splits=("train", "val", "test")) -> dict[str, Dataset]:
        """``{split: Dataset}`` of dict samples with :attr:`input_keys` and :attr:`target_key` (*required*)."""
        raise NotImplementedError

    def prepare_data(self) -> None:
        """Make the data once before :meth:`build_datasets` (main process only; e.g. generate scenes)."""

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

    # -- models and optimisers -----------------------------------------------------
    def build_models(self) -> dict[str, nn.Module]:
        """Every trained network by name, :attr:`primary` among them (*required*).

        The engine calls it once after seeding, so initial weights depend only on the seed.
        """
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        """The inference model alone (used by :func:`cen.load_model`); the default builds all and keeps it."""
        return self.build_models()[self.primary]

    def setup(self, models: Models) -> None:
        """Checks and choices that need the built models (e.g. which output is scored); optional."""

    def configure_optimizers(self, models: Models) -> dict[str, torch.optim.Optimizer]:
        """Optimisers by name (*required*). Param groups named ``encoder`` take a stage's
        ``encoder_lr``, every other group its ``decoder_lr`` (see :mod:`cen.train.optim`)."""
        raise NotImplementedError

    def meta(self) -> dict[str, Any]:
        """What a checkpoint must agree on with the config to be loaded (compared on resume and in ``cen eval``)."""
        return {"task": self.name, "modalities": list(self.cfg.modalities)}

    # -- training ----------------------------------------------------------------------
    def train_mode(self, models: Models) -> None:
        """Put the models in training mode (the default: ``.train()`` on each)."""
        for model in models.values():
            model.train()

    def training_step(
        self, batch: Mapping[str, Tensor], models: Models, nets: Models, optimizers: Optimizers
    ) -> dict[str, Tensor]:
        """One optimisation step on a CPU batch (*required*).

        ``models`` are the plain networks, ``nets`` the same wrapped for the forward
        pass (DistributedDataParallel under several processes). The task moves the
        batch to the device, computes its losses, zeroes, back-propagates and steps
        its optimisers (through :meth:`optimize`, which honours ``train.precision``; the
        engine runs this method under autocast when that is bf16 or fp16). Returns detached scalars to log; ``"loss"`` is required (the
        progress bar and the finiteness check read it).
        """
        raise NotImplementedError

    def optimize(self, loss: Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Zero ``optimizer``'s gradients, back-propagate ``loss`` and step, as ``train.precision`` asks.

        Runs outside autocast and, in fp16, through the engine's gradient scaler; without an
        engine (or in fp32) it is ``zero_grad(set_to_none=True); loss.backward(); optimizer.step()``.
        """
        precision = getattr(self, "precision", None)  # a subclass may skip Task.__init__
        if precision is not None:
            precision.optimize(loss, optimizer)
            return
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    # -- evaluation ------------------------------------------------------------------
    def evaluate(
        self,
        models: Models,
        loader,
        *,
        device: torch.device,
        progress: bool = True,
        image_dir=None,
        num_images: int = 0,
        **options,
    ) -> dict[str, dict]:
        """Scores of the models over ``loader``: ``{branch: {metric: value}}`` (*required*).

        Every process takes part (metrics are summed over processes). ``options`` are
        the task's evaluation settings (:meth:`test_options` for the final test).
        The engine restores training mode afterwards through :meth:`train_mode`.
        """
        raise NotImplementedError

    def test_options(self) -> dict[str, Any]:
        """The :meth:`evaluate` options of the final test (e.g. test-time augmentation from the config)."""
        return {}

    def describe_options(self, options: Mapping[str, Any]) -> str:
        """Text appended to a table's title for ``options`` (e.g. ``", scales [1.0] (%)"``)."""
        return ""

    def score(self, results: Mapping[str, Mapping]) -> float:
        """The value of :attr:`score_name` of the selected output (``self.select``, set in ``setup``) that picks
        ``best.pt``; override for another rule."""
        select = getattr(self, "select", None)
        value = results.get(select, {}).get(self.score_name)
        if value is None:
            raise KeyError(f"train.select={select!r} is not an output of the model; outputs are {list(results)}")
        return value

    def improves(self, score: float, best: float | None) -> bool:
        """Whether ``score`` beats ``best`` (``None``: nothing yet; a non-finite score never improves)."""
        if best is None:
            return True
        if not math.isfinite(score):
            return False
        if not math.isfinite(best):
            return True
        return score > best if self.higher_is_better else score < best

    @property
    def score_label(self) -> str:
        """What the score is, for messages (e.g. ``"ensemble mIoU"``)."""
        return self.score_name

    def format_value(self, score: float) -> str:
        """A score as printed in messages (e.g. ``"51.10"`` for an mIoU of 0.511)."""
        return f"{score:.4f}"

    def summary(self, models: Models) -> dict[str, Any]:
        """Extra fields of the validation and test records; the default: :func:`model_summary` of the primary."""
        return model_summary(models[self.primary])

    def format_table(self, results: Mapping[str, Mapping], *, title: str | None = None) -> str:
        """The printed table of :meth:`evaluate`'s results (*required*)."""
        raise NotImplementedError


def is_main_process() -> bool:
    """Whether this is the process that writes files (rank 0, or the only one)."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def model_summary(model: nn.Module) -> dict:
    """``alpha`` (softmax weights by name) and the exchanged fraction per layer and modality of a MultiModal."""
    out: dict = {}
    names = list(getattr(model, "names", ()))
    ens = getattr(model, "ensemble", None)
    if ens is not None:
        out["alpha"] = {k: float(v.detach()) for k, v in ens.weights().items()}
    stats = exchange_stats(model)
    if stats:
        out["exchange"] = {layer: dict(zip(names, fr)) for layer, fr in stats.items()}
        out["exchange_mean"] = {name: sum(fr[m] for fr in stats.values()) / len(stats) for m, name in enumerate(names)}
    return out
