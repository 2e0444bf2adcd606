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

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cen.core.defaults import ENSEMBLE_KEY, TRANSLATION_THRESHOLD
from cen.errors import ConfigError
from cen.tasks.base import Models, Optimizers, PredictError, Score, Task
from cen.tasks.datasets import build_splits
from cen.tasks.optim import DECODER, build_optimizer
from cen.tasks.registry import MODELS, TASKS
from cen.tasks.translation import models as _models  # registers unet

TARGET_KEY = "target"
BETAS = (0.5, 0.999)


@dataclass
class TranslationData:
    target: str | None = "rgb"  # the target domain (sample key "target")
    decode: str = "linear"  # taskonomy, scenes: linear | reference (cen.data.Taskonomy decode=)
    load_size: int | None = None  # resize to this square before the random crop (null: crop_size)


@dataclass
class TranslationModel:
    ngf: int = 64  # generator width (pix2pix U-Net)
    num_downs: int = 8  # U-Net levels (input sides must be divisible by 2**num_downs)
    ndf: int = 64  # discriminator width (PatchGAN)


@dataclass
class TranslationLoss:
    l1_weight: float = 100.0  # weight of the L1 to the target per branch (pix2pix)


@dataclass
class TranslationEval:
    generator_mode: str = "eval"  # run the generator in eval mode, or train mode as the reference
    features: str = "auto"  # FID/KID features: auto | inception | scenes
    feature_weights: str | None = None  # local weights file of those features (inception needs one)


@TASKS.register("translation")
class TranslationTask(Task):
    """Generate ``data.target`` from the input domains ``modalities`` with a CEN U-Net and a PatchGAN."""

    name = "translation"
    primary = "generator"
    target_key = TARGET_KEY
    model_names = ("unet",)
    config = {"data": TranslationData, "model": TranslationModel, "loss": TranslationLoss, "eval": TranslationEval}
    scores = (
        Score("l1", "L1", higher_is_better=False),
        Score("rmse", "RMSE", higher_is_better=False),
        Score("fid", "FID", higher_is_better=False),
        Score("kid", "KID x100", higher_is_better=False),
        Score("kid_std", "KID std x100", higher_is_better=False),
        Score("fid_low", "FID 2.5%", higher_is_better=False),
        Score("fid_high", "FID 97.5%", higher_is_better=False),
        Score("kid_low", "KID 2.5% x100", higher_is_better=False),
        Score("kid_high", "KID 97.5% x100", higher_is_better=False),
    )
    default_threshold = TRANSLATION_THRESHOLD
    predict_options = ()

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self._metrics = None  # built on first evaluation, then reset and reused
        self.feature_name: str | None = None

    @classmethod
    def check_config(cls, cfg) -> None:
        choices = {
            "eval.generator_mode": ("eval", "train"),
            "eval.features": ("auto", "inception", "scenes"),
            "data.decode": ("linear", "reference"),
        }
        for key, allowed in choices.items():
            group, name = key.split(".")
            if cfg[group][name] not in allowed:
                raise ConfigError(f"{key}={cfg[group][name]!r} is not valid; expected one of {list(allowed)}")
        for key in ("model.ngf", "model.num_downs", "model.ndf"):
            group, name = key.split(".")
            if cfg[group][name] < 1:
                raise ConfigError(f"{key} must be >= 1, got {cfg[group][name]}")

    # -- config and data ---------------------------------------------------------
    def check_training_config(self) -> None:
        d = self.cfg.data
        if d.target in self.cfg.modalities:
            raise ConfigError(f"data.target={d.target!r} is also an input (modalities={list(self.cfg.modalities)})")
        if d.crop_size is not None and not isinstance(d.crop_size, int):
            raise ConfigError(f"data.crop_size must be one int (square crops) for translation, got {d.crop_size!r}")

    def build_datasets(self, splits=("train", "val", "test"), *, corruption=None):
        from torchvision.transforms import v2

        from cen.data import transforms as T

        d = self.cfg.data
        if d.crop_size is None:  # the images as they are (their sides must suit the U-Net)
            train = v2.Compose([*([v2.RandomHorizontalFlip(p=0.5)] if d.flip else []), T.ToSignedUnit()])
        else:
            # decode=reference: the reference's PIL bilinear resize of 8-bit images; else antialiased tensors
            make = T.translation_reference_train if d.decode == "reference" else T.translation_train
            train = make(load_size=d.load_size or d.crop_size, crop_size=d.crop_size, hflip_p=0.5 if d.flip else 0.0)
        transforms = self.corrupted({"train": train, "eval": self.eval_transform()}, corruption)
        return build_splits(self.cfg, self.name, transforms, splits)

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

    def configure_optimizers(self, models: Models) -> dict[str, torch.optim.Optimizer]:
        o = self.cfg.optim
        if o.name != "adam":
            raise ConfigError(f"optim.name={o.name!r}: translation trains with adam (as pix2pix and the reference)")
        lr = o.stages[0].decoder_lr
        return {
            name: build_optimizer(
                model, o, groups=[{"params": list(model.parameters()), "lr": lr, "name": DECODER}], betas=BETAS
            )
            for name, model in models.items()
        }

    def meta(self) -> dict:
        from cen.tasks.fusion_models import fusion_meta

        c = self.cfg
        return {
            **super().meta(),
            "model": c.model.name,
            "target": c.data.target,
            "head": str(c.model.head),
            **fusion_meta(c, TRANSLATION_THRESHOLD),
        }

    # -- training -------------------------------------------------------------------------
    def training_step(
        self, batch: Mapping[str, Tensor], models: Models, nets: Models, optimizers: Optimizers
    ) -> dict[str, Tensor]:
        c = self.cfg
        device = next(models["generator"].parameters()).device
        names = [m for m in c.modalities if m in batch]  # modality dropout may have taken some out
        inputs = self.to_device(batch, device, names)
        real = self.to_device(batch, device, [TARGET_KEY])[TARGET_KEY]
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
        term, gamma_l1 = self.penalty.loss(models["generator"])
        if gamma_l1 is not None:
            parts["l1_gamma"] = gamma_l1
        if term is not None:
            loss = loss + term
        g_opt = optimizers["generator"]
        self.optimize(loss, g_opt)  # zero_grad, backward, step (loss scaling in fp16)
        self.penalty.after_step(models["generator"], g_opt)
        for i, m in enumerate(names):
            parts[f"gan/{m}"] = gan[i].detach()
            parts[f"l1/{m}"] = l1[i].detach()
        return {"loss": loss.detach(), "d_loss": d_loss.detach(), **parts}

    # -- evaluation ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def eval_modes(self, models: Models):
        """The generator in ``eval.generator_mode``; train-mode dropout draws from a forked RNG, so evaluating
        never moves the training's random stream."""
        generator = models[self.primary]
        modes = [(m, m.training) for m in generator.modules()]
        generator.train(self.cfg.eval.generator_mode == "train")
        device = next(generator.parameters()).device
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                yield
        finally:
            for module, mode in modes:
                module.training = mode

    def make_metrics(self, branches, device):
        from cen.tasks.translation.metrics import TranslationMetrics

        e = self.cfg.eval
        if self._metrics is None or self._metrics.branches != tuple(branches):
            self._metrics = TranslationMetrics(branches, features=e.features, weights=e.feature_weights, device=device)
        self.feature_name = self._metrics.feature_name
        self._metrics.to(device).reset()
        return self._metrics

    def save_images(self, folder, batch, outputs, start, limit) -> int:
        inputs = {m: batch[m] for m in self.cfg.modalities if m in batch}
        return _save_images(Path(folder), inputs, outputs, batch[TARGET_KEY], limit, start)

    def describe_options(self, options) -> str:
        return f", generator in {self.cfg.eval.generator_mode} mode"

    def table_notes(self) -> list[str]:
        return [f"FID/KID features: {self.feature_name}"] if self.feature_name else []

    # -- prediction ---------------------------------------------------------------------------
    def read_inputs(self, paths, **options):
        """Each ``--input`` decoded as its Taskonomy domain (``data.decode``), then the evaluation transform."""
        from cen.data.images import read_image
        from cen.data.taskonomy import domain_decoder
        from cen.data.tvtensors import unwrap_sample, wrap

        sample, sizes = {}, {}
        for name, path in paths.items():
            try:
                decoder = domain_decoder(name, 3, decode=self.cfg.data.decode)
                arr = read_image(path)
                sample[name] = wrap(decoder(arr, Path(path)), decoder.kind)
            except ValueError as err:
                raise PredictError(f"--input {name}={path}: {err}") from None
            sizes[name] = tuple(arr.shape[:2])
        if len(set(sizes.values())) > 1:
            raise PredictError(f"the inputs differ in size (height, width): {sizes}; they must be pixel-aligned")
        sample = unwrap_sample(self.eval_transform()(sample))
        return {k: v.float().unsqueeze(0) for k, v in sample.items()}

    def write_prediction(self, outputs, out: Path, **options) -> str:
        """Every branch's generated image as ``OUT/<branch>.png`` (OUT a folder)."""
        from PIL import Image

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for branch, image in outputs.items():
            Image.fromarray(image_array(image[0])).save(out / f"{branch}.png")
        return f"{', '.join(outputs)} images written to {out}/"


def _bce_per_branch(logits: Tensor, target: float) -> Tensor:
    """Mean BCE of ``logits (M, B, 1, h, w)`` against a constant label, per branch: ``(M,)``."""
    labels = torch.full_like(logits, target)
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="none").flatten(1).mean(1)


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
