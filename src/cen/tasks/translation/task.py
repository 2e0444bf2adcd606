"""Multimodal image-to-image translation (the paper's second task) as a :class:`~cen.tasks.base.Task`.

Batches are ``{domain: Tensor(B, 3, H, W), "target": Tensor(B, 3, H, W)}`` in [-1, 1].
Two networks: ``generator`` (:class:`cen.models.UNetCEN`, one output per input domain
and the α-ensemble) and ``discriminator`` (:class:`cen.models.PatchDiscriminator`,
shared by every branch), each with its own Adam (betas (0.5, 0.999) by default). One
training step (pix2pix, per branch m with input x_m and generated y_m):

* discriminator: ``Σ_m ½ [BCE(D(x_m, y_m.detach()), 0) + BCE(D(x_m, y), 1)]``;
* generator: ``Σ_m [BCE(D(x_m, y_m), 1) + l1_weight · |y_m - y|₁] + ensemble_weight ·
  |y_ens - y|₁ + λ Σ|γ|`` (disjoint ℓ1 on the exchanging norms; with the proximal
  solver it is applied as a soft-threshold after the step instead).

The ensemble's branches are detached inside :class:`cen.Ensemble`, so its L1 trains α
only. Evaluation scores every branch with L1, RMSE, FID and KID
(:class:`cen.tasks.translation.metrics.TranslationMetrics`); ``best.pt`` is picked by
``train.select_metric`` (default L1, lower is better) of ``train.select`` (default the
ensemble). ``eval.generator_mode``: ``eval`` (default: the norms' running statistics,
no dropout, a deterministic output) or ``train`` (the reference: instance statistics and
dropout at test time).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cen.core.defaults import ENSEMBLE_KEY, TRANSLATION_THRESHOLD
from cen.core.sparsity import sparsity_loss, sparsity_shrink_
from cen.tasks.base import DECODER, Models, Optimizers, Task, is_main_process
from cen.tasks.datasets import build_splits, prepare_data
from cen.tasks.errors import ConfigError
from cen.tasks.fusion_models import fusion_kwargs, output_names
from cen.tasks.registry import MODELS, TASKS
from cen.tasks.translation import models as _models  # registers unet
from cen.train.optim import gamma_lr_scale, group_lr, with_gamma_group

TARGET_KEY = "target"
BETAS = (0.5, 0.999)
#: score -> (table label, lower is better)
SCORES = {"l1": ("L1", True), "rmse": ("RMSE", True), "fid": ("FID", True), "kid": ("KID x100", True)}


@TASKS.register("translation")
class TranslationTask(Task):
    """Generate ``data.target`` from the input domains ``modalities`` with a CEN U-Net and a PatchGAN."""

    name = "translation"
    primary = "generator"
    target_key = TARGET_KEY
    model_names = ("unet",)
    default_threshold = TRANSLATION_THRESHOLD
    scores = tuple(SCORES)
    default_score = "l1"
    higher_is_better = False

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.select = cfg.train.select
        self._metrics = None  # built on first evaluation, then reset and reused

    # -- config and data ---------------------------------------------------------
    def check_training_config(self) -> None:
        d = self.cfg.data
        if d.target in self.cfg.modalities:
            raise ConfigError(f"data.target={d.target!r} is also an input (modalities={list(self.cfg.modalities)})")
        if d.crop_size is not None and not isinstance(d.crop_size, int):
            raise ConfigError(f"data.crop_size must be one int (square crops) for translation, got {d.crop_size!r}")

    def prepare_data(self) -> None:
        prepare_data(self.cfg)

    def build_datasets(self, splits=("train", "val", "test")):
        from torchvision.transforms import v2

        from cen.data import transforms as T

        d = self.cfg.data
        if d.crop_size is None:  # the images as they are (their sides must suit the U-Net)
            train = v2.Compose([*([v2.RandomHorizontalFlip(p=0.5)] if d.flip else []), T.ToSignedUnit()])
        else:
            # decode=reference: the reference's PIL bilinear resize of 8-bit images; else antialiased tensors
            make = T.translation_reference_train if d.decode == "reference" else T.translation_train
            train = make(load_size=d.load_size or d.crop_size, crop_size=d.crop_size, hflip_p=0.5 if d.flip else 0.0)
        return build_splits(self.cfg, self.name, {"train": train, "eval": self.eval_transform()}, splits)

    def eval_transform(self):
        """The evaluation transform: values to [-1, 1], resized to ``data.crop_size`` when it is set."""
        from cen.data import transforms as T

        size = self.cfg.data.crop_size
        if size is None:
            return T.ToSignedUnit()
        make = T.translation_reference_eval if self.cfg.data.decode == "reference" else T.translation_eval
        return make(size=size)

    def data_context(self) -> str:
        return f"modalities={list(self.cfg.modalities)}, data.target={self.cfg.data.target!r}"

    # -- models and optimisers ----------------------------------------------------------
    def build_models(self) -> dict[str, nn.Module]:
        return {
            "generator": MODELS.get(self.cfg.model.name)(self.cfg),
            "discriminator": _models.discriminator(self.cfg),
        }

    def build_model(self) -> nn.Module:
        return MODELS.get(self.cfg.model.name)(self.cfg)

    def setup(self, models: Models) -> None:
        outputs = output_names(models["generator"], self.cfg.modalities)
        if self.select == "auto":
            self.select = outputs[-1]
        if self.select not in outputs:
            raise ConfigError(
                f"train.select={self.select!r} is not an output of the generator; choose one of {outputs} or auto"
            )

    def configure_optimizers(self, models: Models) -> dict[str, torch.optim.Optimizer]:
        o = self.cfg.optim
        if o.name != "adam":
            raise ConfigError(f"optim.name={o.name!r}: translation trains with adam (as pix2pix and the reference)")
        betas = tuple(o.betas) if o.betas is not None else BETAS
        lr = o.stages[0].decoder_lr
        return {
            name: torch.optim.Adam(
                with_gamma_group(
                    [{"params": list(model.parameters()), "lr": lr, "name": DECODER}], model, gamma_lr_scale(self.cfg)
                ),
                lr=lr,
                betas=betas,
                weight_decay=o.weight_decay,
            )
            for name, model in models.items()
        }

    def meta(self) -> dict:
        c = self.cfg
        return {
            "task": self.name,
            "model": c.model.name,
            "modalities": list(c.modalities),
            "target": c.data.target,
            "head": str(c.model.head),
            **fusion_kwargs(c),
        }

    # -- training -------------------------------------------------------------------------
    def training_step(
        self, batch: Mapping[str, Tensor], models: Models, nets: Models, optimizers: Optimizers
    ) -> dict[str, Tensor]:
        c = self.cfg
        device = next(models["generator"].parameters()).device
        nb = device.type == "cuda"
        names = list(c.modalities)
        inputs = {m: batch[m].to(device, non_blocking=nb) for m in names}
        real = batch[TARGET_KEY].to(device, non_blocking=nb)
        outputs = nets["generator"](inputs)
        fakes = torch.stack([outputs[m] for m in names])  # (M, B, 3, H, W)
        x = torch.stack([inputs[m] for m in names])
        real_m = real.expand_as(fakes)

        # discriminator: every branch's (input, generated) and (input, real) pairs in one call
        d_opt = optimizers["discriminator"]
        pairs = torch.cat([torch.cat([x, fakes.detach()], 2), torch.cat([x, real_m], 2)]).flatten(0, 1)
        logits = nets["discriminator"](pairs).unflatten(0, (2, len(names), -1))
        d_fake = _bce_per_branch(logits[0], 0.0)
        d_real = _bce_per_branch(logits[1], 1.0)
        d_loss = 0.5 * (d_fake + d_real).sum()
        self.optimize(d_loss, d_opt)  # zero_grad, backward, step (loss scaling in fp16)

        # generator: fool the (now fixed) discriminator, stay close to the target
        disc = models["discriminator"]  # not the DDP wrapper: its parameters take no gradient here
        disc.requires_grad_(False)
        try:
            g_logits = disc(torch.cat([x, fakes], 2).flatten(0, 1)).unflatten(0, (len(names), -1))
        finally:
            disc.requires_grad_(True)
        gan = _bce_per_branch(g_logits, 1.0)
        l1 = (fakes - real_m).abs().flatten(1).mean(1)  # per branch
        loss = gan.sum() + c.loss.l1_weight * l1.sum()
        parts: dict[str, Tensor] = {}
        if ENSEMBLE_KEY in outputs:
            ens = (outputs[ENSEMBLE_KEY] - real).abs().mean()
            loss = loss + c.loss.ensemble_weight * ens
            parts[f"l1/{ENSEMBLE_KEY}"] = ens.detach()
        penalise = c.loss.sparsity_mode != "none" and c.loss.sparsity_weight > 0
        if penalise:
            gamma = sparsity_loss(models["generator"], c.loss.sparsity_mode)
            parts["l1_gamma"] = gamma.detach()
            if c.loss.sparsity_solver == "gradient":
                loss = loss + c.loss.sparsity_weight * gamma
        g_opt = optimizers["generator"]
        self.optimize(loss, g_opt)  # zero_grad, backward, step (loss scaling in fp16)
        if penalise and c.loss.sparsity_solver == "proximal":
            sparsity_shrink_(
                models["generator"], group_lr(g_opt, DECODER) * c.loss.sparsity_weight, c.loss.sparsity_mode
            )
        for i, m in enumerate(names):
            parts[f"gan/{m}"] = gan[i].detach()
            parts[f"l1/{m}"] = l1[i].detach()
        return {"loss": loss.detach(), "d_loss": d_loss.detach(), **parts}

    # -- evaluation ---------------------------------------------------------------------------
    def _metric(self, branches, device):
        from cen.tasks.translation.metrics import TranslationMetrics

        e = self.cfg.eval
        if self._metrics is None or self._metrics.branches != tuple(branches):
            self._metrics = TranslationMetrics(branches, features=e.features, weights=e.feature_weights, device=device)
        self._metrics.to(device).reset()
        return self._metrics

    @torch.no_grad()
    def evaluate(
        self, models: Models, loader, *, device, progress: bool = True, image_dir=None, num_images: int = 0, **options
    ) -> dict[str, dict]:
        if options:
            raise TypeError(f"unknown translation evaluation options {sorted(options)}")
        from tqdm.auto import tqdm

        generator = models[self.primary].to(device)
        modes = [(m, m.training) for m in generator.modules()]
        generator.train(self.cfg.eval.generator_mode == "train")
        names = list(self.cfg.modalities)
        metrics, saved = None, 0
        devices = [device] if device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):  # train-mode dropout must not move the training RNG
                for batch in tqdm(loader, desc="eval", unit="batch", disable=not progress, leave=False):
                    inputs = {m: batch[m].to(device) for m in names}
                    real = batch[TARGET_KEY].to(device)
                    outputs = {k: v for k, v in generator(inputs).items() if isinstance(v, Tensor) and v.ndim == 4}
                    if metrics is None:
                        metrics = self._metric(list(outputs), device)
                    for branch, fake in outputs.items():
                        metrics.update(branch, fake, real)
                    if image_dir is not None and saved < num_images and is_main_process():
                        saved += _save_images(Path(image_dir), inputs, outputs, real, num_images - saved, saved)
        finally:
            for module, mode in modes:
                module.training = mode
        if metrics is None:
            raise ValueError("the loader yielded no batches; nothing to evaluate")
        self.feature_name = metrics.feature_name
        return metrics.compute()

    @property
    def score_label(self) -> str:
        return f"{self.select} {SCORES[self.score_name][0]}"

    def describe_options(self, options) -> str:
        return f", generator in {self.cfg.eval.generator_mode} mode"

    def format_table(self, results, *, title=None) -> str:
        return format_table(results, title=title, features=getattr(self, "feature_name", None))


def _bce_per_branch(logits: Tensor, target: float) -> Tensor:
    """Mean BCE of ``logits (M, B, 1, h, w)`` against a constant label, per branch: ``(M,)``."""
    labels = torch.full_like(logits, target)
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="none").flatten(1).mean(1)


def format_table(
    results: Mapping[str, Mapping[str, float]], *, title: str | None = None, features: str | None = None
) -> str:
    """Rows: branches; columns: L1, RMSE (on [-1, 1] images), FID, KID x100 (named features)."""
    cols = [("l1", "L1"), ("rmse", "RMSE"), ("fid", "FID"), ("kid", "KID x100")]
    width = max([len("branch")] + [len(b) for b in results])
    head = f"{'branch':<{width}}" + "".join(f"  {label:>9}" for _, label in cols)
    lines = [title] if title else []
    if features:
        lines.append(f"FID/KID features: {features}")
    lines += [head, "-" * len(head)]
    for branch, scores in results.items():
        cells = []
        for key, _ in cols:
            v = scores.get(key, math.nan)
            cells.append(f"  {'-':>9}" if v is None or not math.isfinite(v) else f"  {v:>9.4f}")
        lines.append(f"{branch:<{width}}" + "".join(cells))
    return "\n".join(lines)


def image_array(x: Tensor) -> object:
    """``(3, H, W)`` in [-1, 1] -> ``(H, W, 3)`` uint8 array."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _save_images(folder: Path, inputs, outputs, real, limit: int, start: int) -> int:
    """``inputs | each output | target`` side by side per sample, 4 white pixels apart."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    n = min(limit, real.shape[0])
    for j in range(n):
        panels = [image_array(v[j]) for v in inputs.values()] + [image_array(v[j]) for v in outputs.values()]
        panels.append(image_array(real[j]))
        gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
        row = [p for panel in panels for p in (panel, gap)][:-1]
        Image.fromarray(np.concatenate(row, 1)).save(folder / f"translation_{start + j:04d}.png")
    return n
