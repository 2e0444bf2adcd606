"""The engine: trains any :class:`~cen.tasks.base.Task`, in one process or under DistributedDataParallel.

A run folder ``<run.dir>/<run.name>/`` holds::

    config.yaml      the resolved config (rewritten on resume)
    metrics.jsonl    one JSON record per line: kind = train | val | test | info
    last.pt          the latest checkpoint (epoch ends, every train.checkpoint_every_steps)
    best.pt          the checkpoint with the best validation score (the task's choice)
    tensorboard/     the same scalars for TensorBoard
    images/          the task's pictures after each evaluation
    results.json     the final test scores of best.pt

Every file is written atomically. The engine owns what tasks share: devices and
DDP, seeding, the epoch/step loop, learning-rate stages, exact resume, interrupts,
checkpoints, logging and progress bars; the task owns its data, models,
optimisers, training step, metrics, images and table, and is only reached through
the :class:`~cen.tasks.base.Task` interface.

Exact resume: every model and optimiser of the task, the position in the data
(epoch and batch), the best score and the torch / CUDA / numpy / python RNG states
are in every checkpoint, and data order and augmentation are functions of
``(seed, epoch, index)`` alone (see :mod:`cen.train.loaders`), so a run stopped
after any checkpoint and resumed ends with the parameters of an uninterrupted run.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn
from tqdm.auto import tqdm

from cen.atomic import atomic_torch_save, atomic_write_json, atomic_write_text
from cen.core.norms import convert_sync_batchnorm
from cen.errors import UserError
from cen.tasks import build_task
from cen.tasks.base import Task
from cen.train import distributed, hardware, loaders
from cen.train.callbacks import Callback, default_callbacks
from cen.train.checkpoint import (
    FORMAT,
    TRAINING,
    VERSION,
    CheckpointError,
    check_meta,
    load_checkpoint,
    load_model_state,
    model_states,
    optimizer_states,
    rng_state,
    set_rng_state,
)
from cen.train.evaluation import evaluate
from cen.train.interrupt import StopRequest, TrainingInterrupted
from cen.train.modality_dropout import ModalityDropout, prepare_model
from cen.train.precision import (
    Precision,
    check_compile,
    check_memory_options,
    check_precision,
    compile_error,
    compile_model,
)
from cen.train.runlog import RunLog, jsonable
from cen.train.stages import learning_rates, set_stage, stage_of, total_epochs

#: What a run writes into its folder; ``--overwrite`` removes these (and nothing else) first.
RUN_OUTPUTS = ("last.pt", "best.pt", "metrics.jsonl", "results.json", "figure_a.png", "images", "tensorboard")


def clear_run_outputs(run_dir: Path) -> None:
    """Remove the files and folders of :data:`RUN_OUTPUTS` from ``run_dir`` (other files stay)."""
    for name in RUN_OUTPUTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


class RunExistsError(UserError, RuntimeError):
    """The run folder already holds a run and neither resume nor overwrite was asked for."""


class Trainer:
    """Train and evaluate one config.

    Args:
        cfg: a config from :func:`cen.train.config.load_config`.
        run_dir: the run folder (default ``<run.dir>/<run.name>``).
        resume: continue from ``run_dir/last.pt`` (or the checkpoint path given).
        overwrite: allow starting afresh in a folder that already has checkpoints.
        datasets: ``{"train", "val", "test"}`` data sets to use instead of the task's.
        models: networks to use instead of the task's (``{name: nn.Module}``, or one
            module for the task's primary model).
        task: the task (default: ``cfg.task`` built from the config).
        stream: where messages and progress bars go (default stderr).
        compile_backend: the :func:`torch.compile` backend of ``train.compile`` (default Inductor;
            the tests pass ``"aot_eager"``, which needs no C compiler).
        callbacks: what runs at the start, after each step and after each validation
            (default :func:`cen.train.callbacks.default_callbacks`: γ statistics, Figure A, λ to a target,
            warnings of a degenerate ℓ1 regime).
    """

    def __init__(
        self,
        cfg,
        *,
        run_dir=None,
        resume: bool | str = False,
        overwrite: bool = False,
        datasets: Mapping | None = None,
        models: Mapping | nn.Module | None = None,
        task: Task | None = None,
        stream=None,
        compile_backend="inductor",
        callbacks: list[Callback] | None = None,
    ) -> None:
        self.cfg = cfg
        self.stream = stream or sys.stderr
        self.task = task if task is not None else build_task(cfg)
        self.task.check_training_config()
        self.info, self.device = distributed.init(cfg.train.device)
        self.run_dir = Path(run_dir) if run_dir is not None else Path(cfg.run.dir) / cfg.run.name
        self.resume_from = None
        if resume:
            given = isinstance(resume, (str, Path)) and not isinstance(resume, bool)
            self.resume_from = Path(resume) if given else self.run_dir / "last.pt"
            if not self.resume_from.is_file():
                raise CheckpointError(f"cannot resume: {self.resume_from} does not exist")
        self._settle_hardware()
        if cfg.train.compile:
            check_compile()
        t = cfg.train
        check_memory_options(
            t.precision,
            recast_weights=t.recast_weights,
            step_in_backward=t.step_in_backward,
            compile=t.compile,
            distributed=self.info.distributed,
        )
        self.precision = Precision(
            t.precision,
            self.device,
            channels_last=t.channels_last,
            recast_weights=t.recast_weights,
            step_in_backward=t.step_in_backward,
        )
        if not resume and (self.run_dir / "last.pt").exists():
            if not overwrite:
                raise RunExistsError(
                    f"{self.run_dir} already holds a run (last.pt); pass --resume to continue it, "
                    f"--overwrite to start afresh there, or choose another run.name=..."
                )
            if self.info.is_main:  # afresh: the old run's log, scores and checkpoints must not mix with the new
                clear_run_outputs(self.run_dir)
        world = self.info.world_size
        if cfg.train.batch_size % world:
            raise UserError(
                f"train.batch_size={cfg.train.batch_size} (the global batch) is not divisible by {world} processes"
            )
        self.local_batch = cfg.train.batch_size // world

        # The order of what follows fixes the RNG consumption (and so the run): seed,
        # read the data (the first training sample is augmented), build the models.
        torch.manual_seed(cfg.train.seed)  # same initial weights in every process
        if datasets is None:
            if self.info.is_main:
                self.task.prepare_data()
            distributed.barrier()
            datasets = self.task.build_datasets()
        self.datasets = dict(datasets)
        self.task.check_datasets(self.datasets)
        if models is None:
            models = self.task.build_models()
        elif isinstance(models, nn.Module):
            models = {self.task.primary: models}
        self.models: dict[str, nn.Module] = {
            k: self.precision.prepare_model(m.to(self.device)) for k, m in models.items()
        }
        self.task.setup(self.models)
        self.modality_dropout = None
        if cfg.train.modality_dropout is not None:
            value = cfg.train.modality_dropout
            value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            self.modality_dropout = ModalityDropout(value, cfg.modalities, cfg.train.seed)
            prepare_model(self.models[self.task.primary], f"of task {self.task.name!r}")
        if self.info.distributed and self.device.type == "cuda":
            self.models = {k: convert_sync_batchnorm(m) for k, m in self.models.items()}
        self.optimizers = dict(self.task.configure_optimizers(self.models))
        self.precision.add_optimizers(self.optimizers)
        self.task.precision = self.precision  # Task.optimize steps through it (loss scaling in fp16)
        self.nets = dict(self.models)
        if self.info.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            unused = self.modality_dropout is not None  # a dropped modality's norm slots get no gradient
            self.nets = {
                k: nn.parallel.DistributedDataParallel(m, device_ids=ids, find_unused_parameters=unused)
                for k, m in self.models.items()
            }
        # Compiled at the first step; evaluation runs the plain models (no recompiling for eval mode).
        if cfg.train.compile:
            self.nets = {k: compile_model(n, compile_backend) for k, n in self.nets.items()}
        loading = loaders.LoaderSettings.of_run(cfg, self.info, self.device, self.task.collate_fn)
        self.train_loader = loaders.train_loader(self.datasets["train"], self.local_batch, loading, seed=cfg.train.seed)
        self.eval_loaders = {
            split: loaders.eval_loader(self.datasets[split], cfg.eval.batch_size, loading)
            for split in ("val", "test")
            if split in self.datasets
        }
        self.epochs = total_epochs(cfg.optim.stages)
        self.epoch, self.batch, self.global_step = 0, 0, 0
        self.best_score, self.best_epoch = None, None
        self.log = None
        self._stop = StopRequest(self.stream)  # catches SIGINT/SIGTERM during fit()
        self.callbacks = list(default_callbacks() if callbacks is None else callbacks)
        for callback in self.callbacks:
            callback.setup(self)

    def _settle_hardware(self) -> None:
        """Resolve ``train.precision`` / ``train.channels_last`` (``auto``) and ``train.threads`` for this
        device, write the resolved values into the config (so config.yaml and checkpoints record them)."""
        cfg = self.cfg
        saved = None
        if self.resume_from is not None and "auto" in (cfg.train.precision, cfg.train.channels_last):
            saved = load_checkpoint(self.resume_from).get("config", {}).get("train")
        chosen = hardware.settle(cfg.train.precision, cfg.train.channels_last, self.device, saved=saved)
        check_precision(chosen.precision, self.device)
        asked = f"precision={cfg.train.precision}, channels_last={str(cfg.train.channels_last).lower()}"
        cfg.train.precision, cfg.train.channels_last = chosen.precision, chosen.channels_last
        threads, why = hardware.choose_threads(cfg.train.threads, processes_per_machine=self.info.local_world_size)
        if self.device.type == "cpu" or cfg.train.threads != "auto":
            torch.set_num_threads(threads)
        self.hardware = {
            "device": str(self.device),
            "precision": chosen.precision,
            "channels_last": chosen.channels_last,
            "asked": asked,
            "reason": chosen.reason,
            "threads": torch.get_num_threads(),
            "threads_from": why,
            "loader_workers": int(cfg.data.num_workers),
            "cpu": hardware.cpu_model(),
        }
        if chosen.notice:
            self._say(f"notice: {chosen.notice}")

    def _say_hardware(self) -> None:
        h = self.hardware
        layout = "channels-last" if h["channels_last"] else "contiguous (NCHW)"
        why = f" ({h['reason']})" if h["reason"] else ""
        self._say(
            f"device {h['device']} ({h['cpu']}): precision {h['precision']}, {layout}{why}; "
            f"{h['threads']} threads ({h['threads_from']}), {h['loader_workers']} loader workers"
        )

    @property
    def model(self) -> nn.Module:
        """The task's primary (inference) model."""
        return self.models[self.task.primary]

    def _say(self, text: str) -> None:
        if self.info.is_main:
            tqdm.write(text, file=self.stream)

    # -- state ------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "kind": TRAINING,
            "models": {k: m.state_dict() for k, m in self.models.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "progress": {
                "epoch": self.epoch,
                "batch": self.batch,
                "global_step": self.global_step,
                "best_score": self.best_score,
                "best_epoch": self.best_epoch,
            },
            "rng": rng_state(),
            "meta": self.task.meta(),
            "grad_scalers": self.precision.state_dict(),
            **{cb.key: cb.state_dict() for cb in self.callbacks if cb.key and cb.state_dict() is not None},
        }

    def save(self, name: str) -> None:
        if self.info.is_main:
            atomic_torch_save(self.state_dict(), self.run_dir / name)
        distributed.barrier()

    def _load_models(self, ckpt: Mapping, path: Path) -> None:
        states = model_states(ckpt, self.task.primary)
        if set(states) != set(self.models):
            raise CheckpointError(f"{path} holds the models {sorted(states)}; this task trains {sorted(self.models)}")
        for name, model in self.models.items():
            load_model_state(model, states[name], f"{path} ({name})")

    def load(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        check_meta(ckpt.get("meta", {}), self.task.meta(), str(path))
        self._load_models(ckpt, path)
        saved = ckpt.get("config", {}).get("train", {})
        changed = [
            f"train.{k}: checkpoint {saved[k]!r} vs config {self.cfg.train[k]!r}"
            for k in ("batch_size", "seed")
            if k in saved and saved[k] != self.cfg.train[k]
        ]
        if changed:
            raise CheckpointError(
                f"cannot resume {path} exactly with another {'; '.join(changed)}; "
                "use the settings of the run (see its config.yaml)"
            )
        states = optimizer_states(ckpt, self.task.primary)
        if set(states) != set(self.optimizers):
            raise CheckpointError(
                f"{path} holds the optimisers {sorted(states)}; this task uses {sorted(self.optimizers)}"
            )
        for name, optimizer in self.optimizers.items():
            try:
                optimizer.load_state_dict(states[name])
            except (ValueError, KeyError) as exc:
                raise CheckpointError(
                    f"{path}: the optimiser {name!r} state does not fit this config ({exc})"
                ) from None
        p = ckpt["progress"]
        self.epoch, self.batch, self.global_step = p["epoch"], p["batch"], p["global_step"]
        self.best_score, self.best_epoch = p.get("best_score"), p.get("best_epoch")
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"])
        self.precision.load_state_dict(ckpt.get("grad_scalers", {}))
        for callback in self.callbacks:
            if callback.key and callback.key in ckpt:
                callback.load_state_dict(ckpt[callback.key])
            elif callback.key and callback.state_dict():
                self._say(f"{path} has no {callback.key} state (an older checkpoint): it restarts here")
        self._say(f"resumed from {path}: epoch {self.epoch + 1}, batch {self.batch}, step {self.global_step}")

    # -- training -------------------------------------------------------------
    def _train_mode(self) -> None:
        self.task.train_mode(self.nets)

    def train_step(self, batch: Mapping) -> tuple[torch.Tensor, dict]:
        """One step of the task under ``train.precision`` / ``train.channels_last``; ``(loss, other logged scalars)``."""
        if self.modality_dropout is not None:
            batch = self.modality_dropout(batch, self.global_step)
        batch = self.precision.prepare_batch(batch)
        try:
            with self.precision.autocast():
                scalars = dict(self.task.training_step(batch, self.models, self.nets, self.optimizers))
        except Exception as exc:
            error = compile_error(exc) if self.cfg.train.compile else None  # e.g. no C compiler for Inductor
            if error is not None:
                raise error from exc
            raise
        return scalars.pop("loss"), scalars

    def fit(self) -> dict:
        """Train to the end (or ``train.max_steps``), then evaluate ``best.pt`` on the test split."""
        cfg = self.cfg
        if self.resume_from is not None:
            self.load(self.resume_from)
        self._say_hardware()
        if self.info.is_main:
            atomic_write_text(self.run_dir / "config.yaml", OmegaConf.to_yaml(cfg))
        distributed.barrier()
        # Different dropout masks per process, the same sequence on every run.
        if self.resume_from is None:
            torch.manual_seed(cfg.train.seed * 1000 + 1 + self.info.rank)
        self.log = RunLog(self.run_dir, enabled=self.info.is_main)
        if self.resume_from is None:
            params = sum(p.numel() for m in self.models.values() for p in m.parameters())
            self.log.record("info", 0, event="start", params=params, processes=self.info.world_size, **self.hardware)
        for callback in self.callbacks:
            callback.on_fit_start(self)
        sampler = self.train_loader.sampler
        steps_per_epoch = sampler.batches_per_epoch()
        stopped = False
        try:
            with self._stop:
                while self.epoch < self.epochs and not stopped:
                    stopped = self._train_epoch(sampler, steps_per_epoch)
                    if self._stop.agreed(self.device):  # signalled during the last step of the epoch
                        self._interrupted()
            results = self._finish()
        finally:
            self.log.close()
        return results

    def _interrupted(self) -> None:
        """Called between steps after a SIGINT/SIGTERM; ``last.pt`` holds the state after the last full step."""
        self.log.record("info", self.global_step, event="interrupted", epoch=self.epoch + 1, batch=self.batch)
        raise TrainingInterrupted(
            f"interrupted after step {self.global_step} (epoch {self.epoch + 1}, batch {self.batch}); "
            f"{self.run_dir / 'last.pt'} is saved: rerun the same command with --resume to continue exactly"
        )

    def _train_epoch(self, sampler, steps_per_epoch: int) -> bool:
        cfg = self.cfg
        stage_idx, first = stage_of(self.epoch, cfg.optim.stages)
        for optimizer in self.optimizers.values():
            set_stage(
                optimizer, cfg.optim.stages[stage_idx], reset=first and self.batch == 0 and cfg.optim.reset_each_stage
            )
        sampler.set_epoch(self.epoch, self.batch)
        self._train_mode()
        bar = tqdm(
            total=steps_per_epoch,
            initial=self.batch,
            desc=f"epoch {self.epoch + 1}/{self.epochs}",
            unit="step",
            disable=not (self.info.is_main and cfg.train.progress),
            file=self.stream,
            dynamic_ncols=True,
            leave=False,
        )
        running, count, t0 = 0.0, 0, time.perf_counter()
        for batch in self.train_loader:
            loss, parts = self.train_step(batch)
            self.batch += 1
            self.global_step += 1
            for callback in self.callbacks:
                callback.on_step_end(self)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the loss became {float(loss)} at step {self.global_step}; lower the learning rates"
                )
            running += float(loss)
            count += 1
            rate = count * cfg.train.batch_size / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{running / count:.4f}", img_s=f"{rate:.1f}", stage=stage_idx + 1)
            bar.update(1)
            if cfg.train.log_every and self.global_step % cfg.train.log_every == 0:
                mean = distributed.all_reduce_mean(loss).item()
                self.log.record(
                    "train",
                    self.global_step,
                    epoch=self.epoch + 1,
                    loss=mean,
                    **{k: v.item() for k, v in parts.items()},
                    **learning_rates(self.optimizers),
                    images_per_s=rate,
                )
            at_end = self.batch >= steps_per_epoch
            hit_max = bool(cfg.train.max_steps) and self.global_step >= cfg.train.max_steps
            if hit_max and not at_end:
                bar.close()
                self.save("last.pt")
                self._say(f"stopped after train.max_steps={cfg.train.max_steps} steps; last.pt saved")
                return True
            every = cfg.train.checkpoint_every_steps
            if every and self.global_step % every == 0 and not at_end:
                self.save("last.pt")
            if not at_end and self._stop.agreed(self.device):
                bar.close()
                self.save("last.pt")
                self._interrupted()
        bar.close()
        self.epoch += 1
        self.batch = 0
        elapsed = time.perf_counter() - t0
        self._say(
            f"epoch {self.epoch}/{self.epochs}: loss {running / max(count, 1):.4f}, {count} steps in {elapsed:.1f}s"
        )
        if self.epoch % cfg.train.eval_every == 0 or self.epoch == self.epochs:
            self._validate()
        self.save("last.pt")
        return bool(cfg.train.max_steps) and self.global_step >= cfg.train.max_steps

    # -- evaluation ---------------------------------------------------------------
    def evaluate(self, split: str, *, images: str | None = None, **options) -> dict:
        """The task's scores on ``split`` (all processes take part); its pictures into ``images/<images>``."""
        num = self.cfg.eval.num_images
        with self.precision.autocast():
            results = evaluate(
                self.task,
                self.models,
                self.eval_loaders[split],
                device=self.device,
                progress=self.info.is_main and self.cfg.train.progress,
                image_dir=self.run_dir / "images" / images if images and num else None,
                num_images=num if images else 0,
                **options,
            )
        self._train_mode()
        return results

    def _validate(self) -> None:
        if "val" not in self.eval_loaders:
            return
        results = self.evaluate("val", images=f"val_epoch{self.epoch:03d}")
        summary = self.task.summary(self.models)
        score = self.task.selected_score(results)
        improved = self.task.improves(score, self.best_score)
        if improved:
            self.best_score, self.best_epoch = score, self.epoch
        self.log.record(
            "val",
            self.global_step,
            epoch=self.epoch,
            scores=_scalars(results),
            **summary,
            **{f"best_{self.task.score_name}": self.best_score},
            best_epoch=self.best_epoch,
        )
        for callback in self.callbacks:
            callback.on_validation_end(self, results, summary)
        value = self.task.format_value
        self._say(
            f"val {self.task.score_label} {value(score)} (best {value(self.best_score)} at epoch {self.best_epoch})"
            + (
                ""
                if "alpha" not in summary
                else "; alpha " + ", ".join(f"{k} {v:.3f}" for k, v in summary["alpha"].items())
            )
        )
        if improved:
            self.save("best.pt")

    def _finish(self) -> dict:
        cfg = self.cfg
        out = {
            f"best_val_{self.task.score_name}": self.best_score,
            "best_epoch": self.best_epoch,
            "steps": self.global_step,
            **{k: self.hardware[k] for k in ("device", "precision", "channels_last", "threads", "cpu")},
        }
        for callback in self.callbacks:
            callback.on_fit_end(self, out)
        if not (cfg.eval.test and "test" in self.eval_loaders):
            return out
        best = self.run_dir / "best.pt"
        if best.is_file():
            self._load_models(load_checkpoint(best), best)
        options = self.task.test_options()
        results = self.evaluate("test", images="test_best", **options)
        summary = self.task.summary(self.models)
        self.log.record(
            "test",
            self.global_step,
            checkpoint="best.pt" if best.is_file() else "last",
            **options,
            scores=_scalars(results),
            **summary,
        )
        out["test"] = results
        if self.info.is_main:
            atomic_write_json(self.run_dir / "results.json", jsonable(out))
            which = f"best.pt (epoch {self.best_epoch})" if best.is_file() else "the last model"
            title = f"test scores of {which} on {cfg.data.test_list}{self.task.describe_options(options)}:"
            print(self.task.format_table(results, title=title), flush=True)
        return out


def _scalars(results: Mapping) -> dict:
    """Per-branch scores without the per-class lists (those stay in results.json)."""
    return {b: {k: v for k, v in s.items() if not isinstance(v, (list, tuple))} for b, s in results.items()}
