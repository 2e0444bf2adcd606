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

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from cen.core.defaults import ENSEMBLE_KEY, THRESHOLD
from cen.errors import ConfigError
from cen.tasks.base import Score, Task, format_per_class
from cen.tasks.datasets import DatasetEntry, build_splits
from cen.tasks.optim import DECODER, ENCODER, build_optimizer
from cen.tasks.presence import models as _models  # noqa: F401  (registers hetero, hetero_concat)
from cen.tasks.presence.data import MODALITIES, PRESENCE_NAMES, TARGET_KEY, ScenePresence, collate
from cen.tasks.presence.metrics import PresenceMetrics
from cen.tasks.registry import DATASETS, MODELS, TASKS

#: ``data.dataset`` of the presence data: the generated scenes (generated on first use, like ``scenes``).
DATASET = "scenes_points"


@dataclass
class PresenceData:
    num_points: int = 1024  # points sampled from each depth map (a fixed N per cloud)


@dataclass
class PresenceModel:
    embed_dim: int = 128  # common width D of the encoders' embeddings and of the shared MLP


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
    config = {"data": PresenceData, "model": PresenceModel}
    scores = (
        Score("map", "mAP", scale=100.0, unit="%"),
        Score("f1", "F1", scale=100.0, unit="%"),
        Score("exact_match", "exact match", scale=100.0, unit="%"),
    )
    default_threshold = THRESHOLD

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        unknown = [m for m in cfg.modalities if m not in MODALITIES]
        if unknown:
            raise ConfigError(f"modalities {unknown} are not in the presence data; it has {list(MODALITIES)}")
        self.collate_fn = collate  # names ragged keys instead of torch's stack error

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.data.num_points < 1:
            raise ConfigError(f"data.num_points must be >= 1 (points sampled per cloud), got {cfg.data.num_points}")
        if cfg.model.embed_dim < 1:
            raise ConfigError(f"model.embed_dim must be >= 1, got {cfg.model.embed_dim}")

    # -- data ------------------------------------------------------------------------
    def build_datasets(self, splits=("train", "val", "test"), *, corruption=None):
        if corruption is not None or self.cfg.data.get("corruptions") is not None:
            raise ConfigError("sensor corruptions are not defined for the presence task's point clouds")
        return build_splits(self.cfg, self.name, {"train": True, "eval": False}, splits)

    def data_context(self) -> str:
        return f"modalities={list(self.cfg.modalities)}, data.num_points={self.cfg.data.num_points}"

    # -- models and optimisers ----------------------------------------------------------
    def build_models(self) -> dict[str, nn.Module]:
        return {"model": MODELS.get(self.cfg.model.name)(self.cfg)}

    def outputs(self, model: nn.Module) -> list[str]:
        """The output branches of ``model``: each modality's (and the ensemble), or its one fused output."""
        if hasattr(model, "fused"):
            return super().outputs(model)
        from cen.models.hetero import CONCAT_KEY

        return [CONCAT_KEY]

    def configure_optimizers(self, models):
        stage, model = self.cfg.optim.stages[0], models["model"]
        enc = [p for p in model.encoders.parameters() if p.requires_grad]
        ids = {id(p) for p in enc}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        groups = [
            {"params": enc, "lr": stage.encoder_lr, "name": ENCODER},
            {"params": rest, "lr": stage.decoder_lr, "name": DECODER},
        ]
        return {"model": build_optimizer(model, self.cfg.optim, groups=groups)}

    def meta(self) -> dict:
        model = self.cfg.model
        return {
            **super().meta(),
            "model": model.name,
            "classes": list(PRESENCE_NAMES),
            "embed_dim": int(model.embed_dim),
        }

    # -- training and evaluation ------------------------------------------------------------
    def loss(self, outputs, target, batch):
        parts, loss = {}, None
        for name, logits in outputs.items():
            bce = F.binary_cross_entropy_with_logits(logits, target)
            parts[f"bce/{name}"] = bce.detach()
            term = (self.cfg.loss.ensemble_weight if name == ENSEMBLE_KEY else 1.0) * bce
            loss = term if loss is None else loss + term
        return loss, parts

    def make_metrics(self, branches, device):
        return PresenceMetrics(PRESENCE_NAMES).to(device)

    def describe_options(self, options) -> str:
        return " (%)"

    def format_table(self, results, *, title=None) -> str:
        """The scores of every branch, then each class's AP."""
        return f"{super().format_table(results, title=title)}\n\nAP per class (%):\n" + format_per_class(
            results, PRESENCE_NAMES, key="per_class_ap"
        )
