"""The training loop for CEN segmentation: one process or DistributedDataParallel.

A run folder ``<run.dir>/<run.name>/`` holds::

    config.yaml      the resolved config (rewritten on resume)
    metrics.jsonl    one JSON record per line: kind = train | val | test | info
    last.pt          the latest checkpoint (epoch ends, every train.checkpoint_every_steps)
    best.pt          the checkpoint with the best validation mIoU (train.select branch)
    tensorboard/     the same scalars for TensorBoard
    images/          prediction grids after each evaluation
    results.json     the final test scores of best.pt

Exact resume: the model, the optimiser, the position in the data (epoch and
batch), the best score and the torch / CUDA / numpy / python RNG states are in
every checkpoint, and data order and augmentation are functions of
``(seed, epoch, index)`` alone (see :mod:`cen.train.builders`), so a run
stopped after any checkpoint and resumed ends with the parameters of an
uninterrupted run.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn
from tqdm.auto import tqdm

from cen.core.stats import exchange_stats
from cen.atomic import atomic_torch_save as atomic_save
from cen.train.interrupt import StopRequest, TrainingInterrupted
from cen.train import builders, distributed
from cen.train.checkpoint import (
    FORMAT,
    VERSION,
    CheckpointError,
    check_meta,
    load_checkpoint,
    load_model_state,
    rng_state,
    set_rng_state,
)
from cen.train.losses import ENSEMBLE_KEY, SegmentationLoss, check_labels
from cen.train.optim import build_optimizer, learning_rates, set_stage, stage_of, total_epochs
from cen.train.evaluate import format_table
from cen.train.runlog import RunLog


class RunExistsError(RuntimeError):
    pass


def select_branch(cfg, model: nn.Module) -> str:
    """The output whose validation mIoU picks ``best.pt``."""
    if cfg.train.select != "auto":
        return cfg.train.select
    return ENSEMBLE_KEY if getattr(model, "ensemble", None) is not None else list(cfg.modalities)[0]


def model_summary(model: nn.Module) -> dict:
    """``alpha`` (softmax weights by name) and the exchanged fraction per layer and modality."""
    out: dict = {}
    names = list(getattr(model, "names", ()))
    ens = getattr(model, "ensemble", None)
    if ens is not None:
        out["alpha"] = {k: float(v.detach()) for k, v in ens.weights().items()}
    stats = exchange_stats(model)
    if stats:
        out["exchange"] = {layer: dict(zip(names, fr)) for layer, fr in stats.items()}
        out["exchange_mean"] = {
            name: sum(fr[m] for fr in stats.values()) / len(stats) for m, name in enumerate(names)
        }
    return out


class Trainer:
    """Train and evaluate one config.

    Args:
        cfg: a config from :func:`cen.train.config.load_config`.
        run_dir: the run folder (default ``<run.dir>/<run.name>``).
        resume: continue from ``run_dir/last.pt`` (or the checkpoint path given).
        overwrite: allow starting afresh in a folder that already has checkpoints.
        datasets: ``{"train", "val", "test"}`` data sets to use instead of building them from the config.
        model: a model to use instead of building it from the config.
    """

    def __init__(self, cfg, *, run_dir=None, resume: bool | str = False, overwrite: bool = False,
                 datasets: Mapping | None = None, model: nn.Module | None = None, stream=None) -> None:
        self.cfg = cfg
        self.stream = stream or sys.stderr
        self.info, self.device = distributed.init(cfg.train.device)
        self.run_dir = Path(run_dir) if run_dir is not None else Path(cfg.run.dir) / cfg.run.name
        self.resume_from = None
        if resume:
            self.resume_from = Path(resume) if isinstance(resume, (str, Path)) and not isinstance(resume, bool) else self.run_dir / "last.pt"
            if not self.resume_from.is_file():
                raise CheckpointError(f"cannot resume: {self.resume_from} does not exist")
        elif (self.run_dir / "last.pt").exists() and not overwrite:
            raise RunExistsError(
                f"{self.run_dir} already holds a run (last.pt); pass --resume to continue it, "
                f"--overwrite to start afresh there, or choose another run.name=..."
            )
        world = self.info.world_size
        if cfg.train.batch_size % world:
            raise ValueError(f"train.batch_size={cfg.train.batch_size} (the global batch) is not divisible by {world} processes")
        self.local_batch = cfg.train.batch_size // world

        torch.manual_seed(cfg.train.seed)  # same initial weights in every process
        if datasets is None:
            if self.info.is_main:
                builders.prepare_data(cfg)
            distributed.barrier()
            datasets = builders.build_datasets(cfg)
        self.datasets = dict(datasets)
        self._check_modalities()
        self.model = (model if model is not None else builders.build_model(cfg)).to(self.device)
        self.select = select_branch(cfg, self.model)
        outputs = list(cfg.modalities) + ([ENSEMBLE_KEY] if getattr(self.model, "ensemble", None) is not None else [])
        if self.select not in outputs:
            raise ValueError(f"train.select={self.select!r} is not an output of the model; choose one of {outputs} or auto")
        if self.info.distributed and self.device.type == "cuda":
            self.model = distributed.convert_sync_batchnorm(self.model)
        self.optimizer = build_optimizer(self.model, cfg.optim.name, cfg.optim.stages[0],
                                         momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)
        self.net = self.model
        if self.info.distributed:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.criterion = SegmentationLoss(
            sparsity_weight=cfg.loss.sparsity_weight, sparsity_mode=cfg.loss.sparsity_mode,
            sparsity_per_output=cfg.loss.sparsity_per_output, ensemble_weight=cfg.loss.ensemble_weight,
            ignore_index=cfg.loss.ignore_index, resize=cfg.loss.resize, sparsity_solver=cfg.loss.sparsity_solver,
        )
        pin = self.device.type == "cuda"
        self.train_loader = builders.train_loader(
            self.datasets["train"], self.local_batch, rank=self.info.rank, world_size=world,
            seed=cfg.train.seed, num_workers=cfg.data.num_workers, pin_memory=pin,
        )
        self.eval_loaders = {
            split: builders.eval_loader(self.datasets[split], cfg.eval.batch_size, rank=self.info.rank,
                                        world_size=world, num_workers=cfg.data.num_workers, pin_memory=pin)
            for split in ("val", "test") if split in self.datasets
        }
        self.epochs = total_epochs(cfg.optim.stages)
        self.epoch, self.batch, self.global_step = 0, 0, 0
        self.best_score, self.best_epoch = None, None
        self.log = None
        self._stop = StopRequest(self.stream)  # catches SIGINT/SIGTERM during fit()

    # -- checks ---------------------------------------------------------------
    def _check_modalities(self) -> None:
        wanted = list(self.cfg.modalities)
        for split, ds in self.datasets.items():
            if len(ds) == 0:
                raise ValueError(f"the {split} split is empty ({getattr(ds, 'list_file', '')})")
            try:
                sample = ds[0]
            except ValueError as err:
                raise ValueError(f"{err} [config: data.num_classes={self.cfg.data.num_classes}, modalities={wanted}]") from None
            if not isinstance(sample, Mapping) or "mask" not in sample:
                raise ValueError(f"{split} samples must be dicts with the modalities and 'mask', got {type(sample).__name__}")
            missing = [m for m in wanted if m not in sample]
            if missing:
                have = [k for k in sample if k != "mask"]
                raise ValueError(
                    f"modalities {missing} named in the config are absent from the {split} data "
                    f"(it provides {have}); set modalities=[{','.join(have)}] or add that data"
                )

    def _say(self, text: str) -> None:
        if self.info.is_main:
            tqdm.write(text, file=self.stream)

    # -- state ------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "progress": {
                "epoch": self.epoch, "batch": self.batch, "global_step": self.global_step,
                "best_score": self.best_score, "best_epoch": self.best_epoch,
            },
            "rng": rng_state(),
            "meta": builders.model_meta(self.cfg),
        }

    def save(self, name: str) -> None:
        if self.info.is_main:
            atomic_save(self.state_dict(), self.run_dir / name)
        distributed.barrier()

    def load(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        check_meta(ckpt.get("meta", {}), builders.model_meta(self.cfg), str(path))
        load_model_state(self.model, ckpt["model"], str(path))
        saved = ckpt.get("config", {}).get("train", {})
        changed = [f"train.{k}: checkpoint {saved[k]!r} vs config {self.cfg.train[k]!r}"
                   for k in ("batch_size", "seed") if k in saved and saved[k] != self.cfg.train[k]]
        if changed:
            raise CheckpointError(f"cannot resume {path} exactly with another {'; '.join(changed)}; "
                                  "use the settings of the run (see its config.yaml)")
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{path}: the optimiser state does not fit this config ({exc})") from None
        p = ckpt["progress"]
        self.epoch, self.batch, self.global_step = p["epoch"], p["batch"], p["global_step"]
        self.best_score, self.best_epoch = p.get("best_score"), p.get("best_epoch")
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"])
        self._say(f"resumed from {path}: epoch {self.epoch + 1}, batch {self.batch}, step {self.global_step}")

    # -- training -------------------------------------------------------------
    def _train_mode(self) -> None:
        self.net.train()
        if self.cfg.model.bn_stats == "frozen":
            builders.freeze_norm_stats(self.model)

    def _to_device(self, batch: Mapping) -> tuple[dict, torch.Tensor]:
        mask = batch["mask"]
        check_labels(mask, self.cfg.data.num_classes, self.cfg.loss.ignore_index, where="training data")
        nb = self.device.type == "cuda"
        inputs = {m: batch[m].to(self.device, non_blocking=nb) for m in self.cfg.modalities}
        return inputs, mask.to(self.device, non_blocking=nb)

    def train_step(self, batch: Mapping) -> tuple[float, dict]:
        inputs, mask = self._to_device(batch)
        outputs = self.net(inputs)
        loss, parts = self.criterion(outputs, mask, self.model)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        # the exchanging norms are in the encoder group (the first one)
        self.criterion.shrink(self.model, self.optimizer.param_groups[0]["lr"], len(outputs))
        return loss.detach(), parts

    def fit(self) -> dict:
        """Train to the end (or ``train.max_steps``), then evaluate ``best.pt`` on the test split."""
        cfg = self.cfg
        if self.resume_from is not None:
            self.load(self.resume_from)
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg), encoding="utf-8")
        distributed.barrier()
        # Different dropout masks per process, the same sequence on every run.
        if self.resume_from is None:
            torch.manual_seed(cfg.train.seed * 1000 + 1 + self.info.rank)
        self.log = RunLog(self.run_dir, enabled=self.info.is_main)
        if self.resume_from is None:
            self.log.record("info", 0, event="start", params=sum(p.numel() for p in self.model.parameters()),
                            processes=self.info.world_size, device=str(self.device))
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
        set_stage(self.optimizer, cfg.optim.stages[stage_idx],
                  reset=first and self.batch == 0 and cfg.optim.reset_each_stage)
        sampler.set_epoch(self.epoch, self.batch)
        self._train_mode()
        bar = tqdm(total=steps_per_epoch, initial=self.batch, desc=f"epoch {self.epoch + 1}/{self.epochs}",
                   unit="step", disable=not (self.info.is_main and cfg.train.progress), file=self.stream,
                   dynamic_ncols=True, leave=False)
        running, count, t0 = 0.0, 0, time.perf_counter()
        for batch in self.train_loader:
            loss, parts = self.train_step(batch)
            self.batch += 1
            self.global_step += 1
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the loss became {float(loss)} at step {self.global_step}; lower the learning rates")
            running += float(loss)
            count += 1
            rate = count * cfg.train.batch_size / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{running / count:.4f}", img_s=f"{rate:.1f}", stage=stage_idx + 1)
            bar.update(1)
            if cfg.train.log_every and self.global_step % cfg.train.log_every == 0:
                mean = distributed.all_reduce_mean(loss).item()
                self.log.record("train", self.global_step, epoch=self.epoch + 1, loss=mean,
                                **{k: v.item() for k, v in parts.items()}, **learning_rates(self.optimizer),
                                images_per_s=rate)
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
        self._say(f"epoch {self.epoch}/{self.epochs}: loss {running / max(count, 1):.4f}, "
                  f"{count} steps in {elapsed:.1f}s")
        if self.epoch % cfg.train.eval_every == 0 or self.epoch == self.epochs:
            self._validate()
        self.save("last.pt")
        return bool(cfg.train.max_steps) and self.global_step >= cfg.train.max_steps

    # -- evaluation ---------------------------------------------------------------
    def evaluate(self, split: str, *, scales=(1.0,), flip: bool = False, images: str | None = None) -> dict:
        """Scores per branch on ``split`` (all processes take part); prediction images into ``images/<images>``."""
        from cen.train.evaluate import evaluate

        results = evaluate(
            self.model, self.eval_loaders[split], self.cfg.data.num_classes, scales=tuple(scales), flip=flip,
            upsample=self.cfg.eval.upsample, device=self.device, ignore_index=self.cfg.loss.ignore_index,
            progress=self.info.is_main and self.cfg.train.progress, modalities=tuple(self.cfg.modalities),
            image_dir=self.run_dir / "images" / images if images and self.cfg.eval.num_images else None,
            num_images=self.cfg.eval.num_images if images else 0,
        )
        self._train_mode()
        return results

    def _validate(self) -> None:
        if "val" not in self.eval_loaders:
            return
        results = self.evaluate("val", images=f"val_epoch{self.epoch:03d}")
        summary = model_summary(self.model)
        score = results.get(self.select, {}).get("miou")
        if score is None:
            raise KeyError(f"train.select={self.select!r} is not an output of the model; outputs are {list(results)}")
        best = self.best_score
        improved = best is None or (math.isfinite(score) and (not math.isfinite(best) or score > best))
        if improved:
            self.best_score, self.best_epoch = score, self.epoch
        self.log.record("val", self.global_step, epoch=self.epoch, scores=_scalars(results), **summary,
                        best_miou=self.best_score, best_epoch=self.best_epoch)
        self._say(f"val {self.select} mIoU {100 * score:.2f} (best {100 * self.best_score:.2f} at epoch {self.best_epoch})"
                  + ("" if "alpha" not in summary else "; alpha " + ", ".join(f"{k} {v:.3f}" for k, v in summary["alpha"].items())))
        if improved:
            self.save("best.pt")

    def _finish(self) -> dict:
        cfg = self.cfg
        out = {"best_val_miou": self.best_score, "best_epoch": self.best_epoch, "steps": self.global_step}
        if not (cfg.eval.test and "test" in self.eval_loaders):
            return out
        best = self.run_dir / "best.pt"
        if best.is_file():
            load_model_state(self.model, load_checkpoint(best)["model"], str(best))
        results = self.evaluate("test", scales=cfg.eval.scales, flip=cfg.eval.flip, images="test_best")
        summary = model_summary(self.model)
        self.log.record("test", self.global_step, checkpoint="best.pt" if best.is_file() else "last",
                        scales=list(cfg.eval.scales), flip=cfg.eval.flip, scores=_scalars(results), **summary)
        out["test"] = results
        if self.info.is_main:
            (self.run_dir / "results.json").write_text(json.dumps(_jsonable(out), indent=2), encoding="utf-8")
            title = (f"test scores of {'best.pt (epoch %s)' % self.best_epoch if best.is_file() else 'the last model'}"
                     f" on {cfg.data.test_list}, scales {list(cfg.eval.scales)}{', flip' if cfg.eval.flip else ''} (%):")
            print(format_table(results, title=title), flush=True)
        return out


def _scalars(results: Mapping) -> dict:
    """Per-branch scores without the per-class lists (those stay in results.json)."""
    return {b: {k: v for k, v in s.items() if not isinstance(v, (list, tuple))} for b, s in results.items()}


def _jsonable(x):
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
