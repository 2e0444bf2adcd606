"""Semantic segmentation (RGB-D, the paper's first task) as a :class:`~cen.tasks.base.Task`.

Batches are ``{modality: Tensor(B, 3, H, W), "mask": Tensor(B, H, W)}``; one model
(``{"model": RefineNetCEN | TinySegNet}``) trained by one optimiser with encoder and
decoder learning rates; the loss is :class:`SegmentationLoss` plus the sparsity penalty;
``best.pt`` is picked by the validation mIoU of ``train.select`` (the ensemble when there
is one). Evaluation scores every branch with pixel accuracy, mean class accuracy and mIoU,
with optional multi-scale and flip test-time augmentation (``eval.scales``, ``eval.flip``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from cen.core.defaults import ENSEMBLE_KEY, THRESHOLD
from cen.errors import ConfigError
from cen.tasks.base import Models, PredictError, Score, Task
from cen.tasks.datasets import build_splits
from cen.tasks.registry import MODELS, TASKS
from cen.tasks.segmentation import config as seg_config
from cen.tasks.segmentation.evaluate import UPSAMPLE_MODES, dataset_kinds, predict_scores
from cen.tasks.segmentation.losses import SegmentationLoss, check_labels
from cen.tasks.segmentation.metrics import SegmentationMetrics

MASK_KEY = "mask"
#: The flags cen predict passes to a segmentation checkpoint.
PREDICT_OPTIONS = ("scales", "flip", "upsample", "depth_scale", "branch", "labels", "grid")


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


class BranchMetrics:
    """One :class:`SegmentationMetrics` per branch, made as branches appear (summed over processes)."""

    def __init__(self, num_classes: int, ignore_index: int, device: torch.device) -> None:
        self.num_classes, self.ignore_index, self.device = num_classes, ignore_index, device
        self.branches: dict[str, SegmentationMetrics] = {}

    def update(self, branch: str, scores: Tensor, mask: Tensor) -> None:
        if branch not in self.branches:
            self.branches[branch] = SegmentationMetrics(
                self.num_classes, ignore_index=self.ignore_index, device=self.device
            )
        self.branches[branch].update(scores, mask)

    def compute(self) -> dict[str, dict]:
        return {name: metric.compute() for name, metric in self.branches.items()}


@TASKS.register("segmentation")
class SegmentationTask(Task):
    """Per-pixel classes from aligned modalities; scores: pixel acc, mean acc, mIoU per branch."""

    name = "segmentation"
    primary = "model"
    target_key = MASK_KEY
    model_names = ("refinenet", "tiny")
    config = seg_config.PARTS
    scores = (
        Score("pixel_acc", "pixel acc", scale=100.0, unit="%"),
        Score("mean_acc", "mean acc", scale=100.0, unit="%"),
        Score("miou", "mIoU", scale=100.0, unit="%"),
    )
    default_score = "miou"
    eval_options = ("scales", "flip")
    predict_options = PREDICT_OPTIONS
    default_threshold = THRESHOLD

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        loss = cfg.loss
        self.criterion = SegmentationLoss(
            ensemble_weight=loss.ensemble_weight, ignore_index=loss.ignore_index, resize=loss.resize
        )
        self.kinds: dict[str, str] | None = None  # the data set's modality kinds, for the pictures

    @classmethod
    def check_config(cls, cfg) -> None:
        seg_config.check_config(cfg)

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

    def build_datasets(self, splits=("train", "val", "test"), *, corruption=None):
        from cen.data import transforms as T

        d = self.cfg.data
        transforms = {"train": train_transform(d), "eval": T.segmentation_eval(shorter_side=d.short_side)}
        out = build_splits(self.cfg, self.name, self.corrupted(transforms, corruption), splits)
        for ds in out.values():
            self.kinds = self.kinds or dataset_kinds(ds)
        return out

    def data_context(self) -> str:
        return f"data.num_classes={self.cfg.data.num_classes}, modalities={list(self.cfg.modalities)}"

    # -- models -----------------------------------------------------------------------
    def build_models(self) -> dict[str, nn.Module]:
        return {"model": MODELS.get(self.cfg.model.name)(self.cfg)}

    def meta(self) -> dict:
        from cen.tasks.fusion_models import fusion_meta

        c = self.cfg
        return {
            "model": c.model.name,
            "backbone": c.model.backbone if c.model.name == "refinenet" else None,
            "modalities": list(c.modalities),
            "num_classes": int(c.data.num_classes),
            "head": str(c.model.head),
            **fusion_meta(c, THRESHOLD),
        }

    # -- training -------------------------------------------------------------------------
    def train_mode(self, models: Models) -> None:
        super().train_mode(models)
        if self.cfg.model.bn_stats == "frozen":
            freeze_norm_stats(models["model"])

    def check_batch(self, batch) -> None:
        check_labels(batch[MASK_KEY], self.cfg.data.num_classes, self.cfg.loss.ignore_index, where="training data")

    def loss(self, outputs, target, batch):
        return self.criterion(outputs, target)

    # -- evaluation ---------------------------------------------------------------------------
    def eval_step(self, batch, models, *, device, modalities, scales=(1.0,), flip=False, upsample=None, **options):
        if options:
            raise TypeError(f"unknown segmentation evaluation options {sorted(options)}")
        inputs = {n: batch[n].to(device, non_blocking=True).float() for n in modalities}
        size = tuple(batch[MASK_KEY].shape[-2:]) if MASK_KEY in batch else None
        return predict_scores(
            models[self.primary],
            inputs,
            size,
            scales=tuple(scales),
            flip=flip,
            upsample=upsample or self.cfg.eval.upsample,
        )

    def make_metrics(self, branches, device):
        return BranchMetrics(int(self.cfg.data.num_classes), int(self.cfg.loss.ignore_index), device)

    def save_images(self, folder, batch, outputs, start, limit) -> int:
        from cen.data.kinds import infer_kind
        from cen.tasks.segmentation.visualize import save_prediction_grid

        name = ENSEMBLE_KEY if ENSEMBLE_KEY in outputs else next(iter(outputs))
        pred = outputs[name].argmax(1).cpu()
        shown = [m for m in self.cfg.modalities if m in batch]
        kinds = self.kinds or {m: infer_kind(m) for m in shown}
        n = min(limit, pred.shape[0])
        for j in range(n):
            save_prediction_grid(
                Path(folder) / f"pred_{start + j:04d}_{name}.png",
                inputs={m: batch[m][j] for m in shown},
                kinds=kinds,
                mask=batch[MASK_KEY][j],
                pred=pred[j],
                ignore_index=self.cfg.loss.ignore_index,
            )
        return n

    def test_options(self) -> dict:
        return {"scales": list(self.cfg.eval.scales), "flip": bool(self.cfg.eval.flip)}

    def describe_options(self, options) -> str:
        scales = [float(s) for s in options.get("scales", (1.0,))]
        return f", scales {scales}{', flip' if options.get('flip') else ''} (%)"

    # -- prediction ---------------------------------------------------------------------------
    def read_inputs(self, paths: Mapping[str, str], depth_scale: float | None = None, **options) -> dict[str, Tensor]:
        """Each input read and prepared by its kind as the loaders do (images and HHA 8-bit -> [0, 1] -> ImageNet
        mean/std; depth 16-bit x 1/5000 or ``depth_scale``, replicated to 3 channels; normals -> [-1, 1])."""
        from cen.data.constants import REFERENCE_DEPTH_SCALE
        from cen.data.decode import decoder_for_kind
        from cen.data.images import read_image
        from cen.data.kinds import infer_kind
        from cen.data.transforms import segmentation_eval
        from cen.data.tvtensors import unwrap_sample, wrap

        arrays = {name: read_image(path) for name, path in paths.items()}
        sizes = {name: arr.shape[:2] for name, arr in arrays.items()}
        if len(set(sizes.values())) > 1:
            desc = " but ".join(f"{_flag(n, paths[n])} is {w}x{h}" for n, (h, w) in sizes.items())
            raise PredictError(f"{desc} (width x height); the modalities must be pixel-aligned images of one size")
        scale = REFERENCE_DEPTH_SCALE if depth_scale is None else depth_scale
        sample = {}
        for name, arr in arrays.items():
            decoder = decoder_for_kind(infer_kind(name), depth_scale=scale)
            try:
                sample[name] = wrap(decoder(arr, Path(paths[name])), decoder.kind)
            except ValueError as err:  # an image of the wrong kind (e.g. 8-bit depth): the user's file
                raise PredictError(f"{_flag(name, paths[name])}: {err}") from None
        sample = unwrap_sample(segmentation_eval()(sample))  # the loaders' evaluation normalisation
        return {name: sample[name].float().unsqueeze(0) for name in arrays}

    def predict(self, models, batch, *, device, scales=(1.0,), flip=False, upsample="bilinear", **options):
        if not scales or any(not (s > 0) for s in scales):
            raise PredictError(f"--scales must be positive numbers, got {list(scales)}")
        if upsample not in UPSAMPLE_MODES:
            raise PredictError(f"--upsample {upsample!r}: expected one of {list(UPSAMPLE_MODES)}")
        with self.eval_modes(models), torch.no_grad():
            return self.eval_step(
                batch, models, device=device, modalities=list(batch), scales=scales, flip=flip, upsample=upsample
            ), {k: v.cpu() for k, v in batch.items()}

    def write_prediction(self, outputs, out: Path, *, branch=None, labels=None, grid=None, **options) -> str:
        """The chosen branch's arg-max as a colour PNG at ``out`` (and raw ids at ``labels``, a grid at ``grid``)."""
        from PIL import Image

        from cen.tasks.segmentation.visualize import colorize, save_prediction_grid

        scores, inputs = outputs
        if branch is None:
            branch = ENSEMBLE_KEY if ENSEMBLE_KEY in scores else (next(iter(scores)) if len(scores) == 1 else None)
            if branch is None:
                raise PredictError(f"the model has no ensemble; choose an output with --branch: {list(scores)}")
        if branch not in scores:
            raise PredictError(f"--branch {branch!r} is not an output here; outputs: {list(scores)}")
        label_map = scores[branch][0].argmax(0).cpu()
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(colorize(label_map, ignore_index=None)).save(out)
        if labels:
            k = scores[branch].shape[1]
            Path(labels).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(label_map.numpy().astype("uint8" if k <= 256 else "uint16")).save(labels)
        if grid:
            save_prediction_grid(grid, inputs={k: v[0] for k, v in inputs.items()}, pred=label_map)
        self.last_prediction = label_map
        return f"{branch} prediction of {label_map.shape[1]}x{label_map.shape[0]} pixels written to {out}"


def _flag(name: str, path: str) -> str:
    """How the user gave input ``name`` to cen predict: ``--rgb PATH`` or ``--input NAME=PATH``."""
    return f"--{name} {path}" if name in ("rgb", "depth") else f"--input {name}={path}"


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


__all__ = ["MASK_KEY", "SegmentationTask", "freeze_norm_stats", "train_transform"]
