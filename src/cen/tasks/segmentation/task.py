"""Semantic segmentation (RGB-D, the paper's first task) as a :class:`~cen.tasks.base.Task`.

Batches are ``{modality: Tensor(B, 3, H, W), "mask": Tensor(B, H, W)}``; one model
(``{"model": RefineNetCEN | TinySegNet}``) trained by one optimiser with encoder and
decoder learning rates; the loss is :class:`SegmentationLoss`; ``best.pt`` is picked by
the validation mIoU of ``train.select`` (the ensemble when there is one).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from cen.core.defaults import ENSEMBLE_KEY, THRESHOLD
from cen.tasks.base import ENCODER, Models, Optimizers, Task
from cen.tasks.datasets import build_splits, prepare_data
from cen.tasks.errors import ConfigError
from cen.tasks.fusion_models import fusion_kwargs, output_names
from cen.tasks.registry import MODELS, TASKS
from cen.tasks.segmentation.evaluate import evaluate, format_table
from cen.tasks.segmentation.losses import SegmentationLoss, check_labels
from cen.tasks.segmentation.optim import build_optimizer
from cen.train.optim import gamma_lr_scale, group_lr

MASK_KEY = "mask"
SCORE_LABELS = {"miou": "mIoU", "mean_acc": "mean acc", "pixel_acc": "pixel acc"}


def freeze_norm_stats(model: nn.Module) -> None:
    """Put every norm in eval mode (running statistics frozen) while its gamma and beta still train.

    The reference code trains its segmentation model this way. A norm is any module with a
    ``track_running_stats`` attribute: torch's batch and instance norms and cen's modality norms.
    A modality norm's fusion strategy (``norm.fusion``) stays in training mode: freezing
    statistics must not freeze e.g. ``random``'s per-step draw into its evaluation set.
    """
    for module in model.modules():
        if hasattr(module, "track_running_stats"):
            module.eval()
            fusion = getattr(module, "fusion", None)
            if isinstance(fusion, nn.Module):
                fusion.train(True)


@TASKS.register("segmentation")
class SegmentationTask(Task):
    """Per-pixel classes from aligned modalities; scores: pixel acc, mean acc, mIoU per branch."""

    name = "segmentation"
    primary = "model"
    target_key = MASK_KEY
    model_names = ("refinenet", "tiny")
    eval_options = ("scales", "flip")
    default_threshold = THRESHOLD
    scores = tuple(SCORE_LABELS)
    default_score = "miou"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.select = cfg.train.select  # resolved in setup() once the model is known
        loss = cfg.loss
        self.criterion = SegmentationLoss(
            sparsity_weight=loss.sparsity_weight,
            sparsity_mode=loss.sparsity_mode,
            sparsity_per_output=loss.sparsity_per_output,
            ensemble_weight=loss.ensemble_weight,
            ignore_index=loss.ignore_index,
            resize=loss.resize,
            sparsity_solver=loss.sparsity_solver,
        )

    # -- config and data ---------------------------------------------------------
    def check_training_config(self) -> None:
        m = self.cfg.model
        # Frozen statistics are meant for weights whose running statistics are set (ImageNet).
        # Randomly initialised norms have mean 0 / variance 1, which would normalise nothing:
        # the first loss on NYUDv2 was ~18000 instead of ~13. The tiny smoke-test net has no
        # weights at all and keeps the mode (an exact DDP comparison needs per-process-free stats).
        if m.bn_stats == "frozen" and m.name == "refinenet" and not m.pretrained:
            raise ConfigError(
                "model.bn_stats=frozen keeps the norms' running statistics at their initial values (mean 0, "
                "variance 1) unless model.pretrained loads weights that set them, and model.pretrained is null: "
                "set model.bn_stats=train to learn the statistics from the data, or model.pretrained=imagenet "
                "(or a local weights file)"
            )

    def prepare_data(self) -> None:
        prepare_data(self.cfg)

    def build_datasets(self, splits=("train", "val", "test")):
        from cen.data import transforms as T

        d = self.cfg.data
        transforms = {"train": train_transform(d), "eval": T.segmentation_eval(shorter_side=d.short_side)}
        return build_splits(self.cfg, self.name, transforms, splits)

    def data_context(self) -> str:
        return f"data.num_classes={self.cfg.data.num_classes}, modalities={list(self.cfg.modalities)}"

    # -- models and optimisers ----------------------------------------------------------
    def build_models(self) -> dict[str, nn.Module]:
        return {"model": MODELS.get(self.cfg.model.name)(self.cfg)}

    def setup(self, models: Models) -> None:
        outputs = output_names(models[self.primary], self.cfg.modalities)
        if self.select == "auto":
            self.select = ENSEMBLE_KEY if ENSEMBLE_KEY in outputs else self.cfg.modalities[0]
        if self.select not in outputs:
            raise ConfigError(
                f"train.select={self.select!r} is not an output of the model; choose one of {outputs} or auto"
            )

    def configure_optimizers(self, models: Models) -> dict[str, torch.optim.Optimizer]:
        o = self.cfg.optim
        return {
            "model": build_optimizer(
                models["model"],
                o.name,
                o.stages[0],
                momentum=o.momentum,
                weight_decay=o.weight_decay,
                gamma_lr_scale=gamma_lr_scale(self.cfg),
            )
        }

    def meta(self) -> dict:
        c = self.cfg
        return {
            "model": c.model.name,
            "backbone": c.model.backbone if c.model.name == "refinenet" else None,
            "modalities": list(c.modalities),
            "num_classes": int(c.data.num_classes),
            "head": str(c.model.head),
            **fusion_kwargs(c),
        }

    # -- training -------------------------------------------------------------------------
    def train_mode(self, models: Models) -> None:
        super().train_mode(models)
        if self.cfg.model.bn_stats == "frozen":
            freeze_norm_stats(models["model"])

    def training_step(
        self, batch: Mapping[str, Tensor], models: Models, nets: Models, optimizers: Optimizers
    ) -> dict[str, Tensor]:
        model, optimizer = models["model"], optimizers["model"]
        device = next(model.parameters()).device
        mask = batch[MASK_KEY]
        check_labels(mask, self.cfg.data.num_classes, self.cfg.loss.ignore_index, where="training data")
        nb = device.type == "cuda"
        inputs = {m: batch[m].to(device, non_blocking=nb) for m in self.cfg.modalities}
        mask = mask.to(device, non_blocking=nb)
        outputs = nets["model"](inputs)
        loss, parts = self.criterion(outputs, mask, model)
        self.optimize(loss, optimizer)  # zero_grad, backward, step (loss scaling in fp16)
        # the exchanging norms are in the encoder group, or their own gamma group
        self.criterion.shrink(model, group_lr(optimizer, ENCODER), len(outputs))
        return {"loss": loss.detach(), **parts}

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(
        self,
        models: Models,
        loader,
        *,
        device,
        progress: bool = True,
        image_dir=None,
        num_images: int = 0,
        scales=(1.0,),
        flip: bool = False,
        **options,
    ) -> dict[str, dict]:
        if options:
            raise TypeError(f"unknown segmentation evaluation options {sorted(options)}")
        c = self.cfg
        return evaluate(
            models[self.primary],
            loader,
            c.data.num_classes,
            scales=tuple(scales),
            flip=flip,
            upsample=c.eval.upsample,
            device=device,
            ignore_index=c.loss.ignore_index,
            progress=progress,
            modalities=tuple(c.modalities),
            image_dir=image_dir,
            num_images=num_images,
        )

    def test_options(self) -> dict:
        return {"scales": list(self.cfg.eval.scales), "flip": bool(self.cfg.eval.flip)}

    def describe_options(self, options) -> str:
        scales = [float(s) for s in options.get("scales", (1.0,))]
        return f", scales {scales}{', flip' if options.get('flip') else ''} (%)"

    @property
    def score_label(self) -> str:
        return f"{self.select} {SCORE_LABELS[self.score_name]}"

    def format_value(self, score: float) -> str:
        return f"{100 * score:.2f}"

    def format_table(self, results, *, title=None) -> str:
        return format_table(results, title=title)


def train_transform(d):
    """The training pipeline of :mod:`cen.data.transforms` for the ``data`` config."""
    from torchvision.transforms import v2

    from cen.data import transforms as T

    scale = None if (d.scale_min, d.scale_max) == (1.0, 1.0) else (d.scale_min, d.scale_max)
    if d.crop_size is not None:
        crop = d.crop_size if isinstance(d.crop_size, int) else tuple(d.crop_size)
        return T.segmentation_train(crop, scale_range=scale, shorter_side=d.short_side, hflip_p=0.5 if d.flip else 0.0)
    if scale is not None:
        raise ConfigError(
            f"data.scale_min/scale_max = {d.scale_min}/{d.scale_max} rescale every image differently, so a batch "
            "needs a common crop: set data.crop_size (e.g. the image height), or scale_min=scale_max=1"
        )
    steps = [v2.Resize(d.short_side, antialias=True)] if d.short_side else []
    steps.append(T.NormalizeModalities(T.default_normalization()))
    if d.flip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    return v2.Compose(steps)
