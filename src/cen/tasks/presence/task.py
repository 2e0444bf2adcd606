"""Scene-level multi-label presence from an image and a point cloud, as a :class:`~cen.tasks.base.Task`.

Batches are ``{"rgb": Tensor(B, 3, H, W), "points": Tensor(B, N, 3), "target": Tensor(B, K)}``
(:mod:`cen.tasks.presence.data`). One model (``hetero`` or ``hetero_concat``,
:mod:`cen.tasks.presence.models`), one optimiser (``optim.name``) with two groups: the
encoders (``encoder_lr``) and the rest, where the shared MLP and its exchanging norms
are (``decoder_lr``). The loss, per output branch ``o`` with logits ``z_o``::

    sum_{o != ensemble} BCE(z_o, y) + ensemble_weight * BCE(z_ensemble, y) + lambda * sum |gamma|

(disjoint l1 on the exchanging norms; with ``loss.sparsity_solver: proximal`` it is a
soft-threshold after each step instead). The ensemble's inputs are detached inside
:class:`cen.Ensemble`, so its BCE trains ``alpha`` only. ``best.pt`` is picked by the
validation ``train.select_metric`` (default mAP) of ``train.select`` (default the
ensemble, else the one output).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cen.core.defaults import ENSEMBLE_KEY, THRESHOLD
from cen.core.sparsity import sparsity_loss, sparsity_shrink_
from cen.tasks.base import DECODER, ENCODER, Models, Optimizers, Task
from cen.tasks.datasets import DatasetEntry, build_splits, prepare_data
from cen.tasks.errors import ConfigError
from cen.tasks.presence import models as _models  # noqa: F401  (registers hetero, hetero_concat)
from cen.tasks.presence.data import MODALITIES, PRESENCE_NAMES, TARGET_KEY, ScenePresence, collate
from cen.tasks.presence.metrics import SCORE_LABELS, PresenceMetrics, format_table
from cen.tasks.registry import DATASETS, MODELS, TASKS
from cen.train.optim import gamma_lr_scale, group_lr, with_gamma_group

#: ``data.dataset`` of the presence data: the generated scenes (generated on first use, like ``scenes``).
DATASET = "scenes_points"


def _read(root, list_file, cfg, train: bool):
    """The presence reader of :func:`cen.tasks.datasets.build_splits` (its transform slot carries ``train``)."""
    d = cfg.data
    return ScenePresence(
        root,
        list_file,
        tuple(cfg.modalities),
        num_points=int(d.num_points),
        train=train,
        flip=bool(d.flip),
        short_side=d.short_side,
    )


DATASETS.register(DATASET)(DatasetEntry({"presence": _read}, prepare=DATASETS.get("scenes").prepare))


@TASKS.register("presence")
class PresenceTask(Task):
    """Which object classes a scene shows; scores: mAP, macro F1, exact match per branch."""

    name = "presence"
    primary = "model"
    target_key = TARGET_KEY
    model_names = ("hetero", "hetero_concat")
    default_threshold = THRESHOLD
    scores = tuple(SCORE_LABELS)
    default_score = "map"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        unknown = [m for m in cfg.modalities if m not in MODALITIES]
        if unknown:
            raise ConfigError(f"modalities {unknown} are not in the presence data; it has {list(MODALITIES)}")
        self.select = cfg.train.select  # resolved in setup() once the model is known
        self.collate_fn = collate  # names ragged keys instead of torch's stack error

    # -- config and data ---------------------------------------------------------
    def check_training_config(self) -> None:
        if self.cfg.data.num_points < 1:
            raise ConfigError(
                f"data.num_points must be >= 1 (points sampled per cloud), got {self.cfg.data.num_points}"
            )

    def prepare_data(self) -> None:
        prepare_data(self.cfg)

    def build_datasets(self, splits=("train", "val", "test")):
        return build_splits(self.cfg, self.name, {"train": True, "eval": False}, splits)

    def data_context(self) -> str:
        return f"modalities={list(self.cfg.modalities)}, data.num_points={self.cfg.data.num_points}"

    # -- models and optimisers ----------------------------------------------------------
    def build_models(self) -> dict[str, nn.Module]:
        return {"model": MODELS.get(self.cfg.model.name)(self.cfg)}

    def outputs(self, model: nn.Module) -> list[str]:
        """The output branches of ``model``: each modality's (and the ensemble), or its one fused output."""
        if hasattr(model, "fused"):
            return list(self.cfg.modalities) + ([ENSEMBLE_KEY] if model.ensemble is not None else [])
        from cen.models.hetero import CONCAT_KEY

        return [CONCAT_KEY]

    def setup(self, models: Models) -> None:
        outputs = self.outputs(models[self.primary])
        if self.select == "auto":
            self.select = ENSEMBLE_KEY if ENSEMBLE_KEY in outputs else outputs[0]
        if self.select not in outputs:
            raise ConfigError(
                f"train.select={self.select!r} is not an output of the model; choose one of {outputs} or auto"
            )

    def configure_optimizers(self, models: Models) -> dict[str, torch.optim.Optimizer]:
        o, stage = self.cfg.optim, self.cfg.optim.stages[0]
        model = models["model"]
        enc = [p for p in model.encoders.parameters() if p.requires_grad]
        ids = {id(p) for p in enc}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        groups = [
            {"params": enc, "lr": stage.encoder_lr, "name": ENCODER},
            {"params": rest, "lr": stage.decoder_lr, "name": DECODER},
        ]
        groups = with_gamma_group(groups, model, gamma_lr_scale(self.cfg))
        if o.name == "sgd":
            opt = torch.optim.SGD(groups, lr=stage.decoder_lr, momentum=o.momentum, weight_decay=o.weight_decay)
        else:
            betas = tuple(o.betas) if o.betas is not None else (0.9, 0.999)
            opt = torch.optim.Adam(groups, lr=stage.decoder_lr, betas=betas, weight_decay=o.weight_decay)
        return {"model": opt}

    def meta(self) -> dict:
        c = self.cfg
        return {
            "task": self.name,
            "model": c.model.name,
            "modalities": list(c.modalities),
            "classes": list(PRESENCE_NAMES),
            "embed_dim": int(c.model.embed_dim),
        }

    # -- training -------------------------------------------------------------------------
    def training_step(
        self, batch: Mapping[str, Tensor], models: Models, nets: Models, optimizers: Optimizers
    ) -> dict[str, Tensor]:
        c = self.cfg
        model, optimizer = models["model"], optimizers["model"]
        device = next(model.parameters()).device
        nb = device.type == "cuda"
        inputs = {m: batch[m].to(device, non_blocking=nb) for m in c.modalities}
        target = batch[TARGET_KEY].to(device, non_blocking=nb)
        outputs = nets["model"](inputs)
        parts: dict[str, Tensor] = {}
        loss = None
        for name, logits in outputs.items():
            bce = F.binary_cross_entropy_with_logits(logits, target)
            parts[f"bce/{name}"] = bce.detach()
            term = (c.loss.ensemble_weight if name == ENSEMBLE_KEY else 1.0) * bce
            loss = term if loss is None else loss + term
        penalise = c.loss.sparsity_mode != "none" and c.loss.sparsity_weight > 0
        if penalise:
            l1 = sparsity_loss(model, c.loss.sparsity_mode)
            parts["l1"] = l1.detach()
            if c.loss.sparsity_solver == "gradient":
                loss = loss + c.loss.sparsity_weight * l1
        self.optimize(loss, optimizer)  # the engine's precision-aware step (train.precision)
        if penalise and c.loss.sparsity_solver == "proximal":
            lr = group_lr(optimizer, DECODER)  # the norms' group
            sparsity_shrink_(model, lr * c.loss.sparsity_weight, c.loss.sparsity_mode)
        return {"loss": loss.detach(), **parts}

    # -- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(
        self, models: Models, loader, *, device, progress: bool = True, image_dir=None, num_images: int = 0, **options
    ) -> dict[str, dict]:
        if options:
            raise TypeError(f"unknown presence evaluation options {sorted(options)}")
        from tqdm.auto import tqdm

        model = models[self.primary].to(device).eval()
        metrics = PresenceMetrics(PRESENCE_NAMES)
        seen = 0
        for batch in tqdm(loader, desc="eval", unit="batch", disable=not progress, leave=False):
            inputs = {m: batch[m].to(device) for m in self.cfg.modalities}
            target = batch[TARGET_KEY].to(device)
            for branch, logits in model(inputs).items():
                metrics.update(branch, logits, target)
            seen += 1
        if not seen:
            raise ValueError("the loader yielded no batches; nothing to evaluate")
        return metrics.compute()

    @property
    def score_label(self) -> str:
        return f"{self.select} {SCORE_LABELS[self.score_name]}"

    def format_value(self, score: float) -> str:
        return f"{100 * score:.2f}"

    def describe_options(self, options) -> str:
        return " (%)"

    def format_table(self, results, *, title=None) -> str:
        return format_table(results, PRESENCE_NAMES, title=title)
