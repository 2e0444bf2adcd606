"""A task of one's own, in one module: which object class covers most of a generated scene.

Everything a task needs beyond :class:`cen.tasks.base.Task`'s defaults is here; the one line
that plugs it into cen is the ``@TASKS.register`` decorator, and a config names this module in
``plugins`` so that the command line imports it. The engine then trains, evaluates, selects
``best.pt``, resumes, predicts (``cen predict``) and tables (``cen table``) it like a built-in task.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from torchvision.models.resnet import BasicBlock

import cen
from cen.tasks import TASKS
from cen.tasks.base import Score, Task
from cen.tasks.datasets import build_splits
from cen.tasks.segmentation.task import SegmentationTask

#: Labels of the generated scenes: 0 wall, 1 floor, then the objects (cen.data.synth.classes).
FIRST_OBJECT = 2


@dataclass
class SceneClassesData:
    num_classes: int = 7  # the scenes' classes; the target is one of the objects among them


class LargestObject(Dataset):
    """A segmentation data set's samples with ``target``: the object class covering most pixels (-1 if none)."""

    def __init__(self, segmentation: Dataset) -> None:
        self.segmentation = segmentation

    def __len__(self) -> int:
        return len(self.segmentation)

    def __getitem__(self, i):
        sample = dict(self.segmentation[i])
        mask = sample.pop("mask")
        counts = torch.bincount(mask[mask < 255].flatten(), minlength=FIRST_OBJECT + 1)[FIRST_OBJECT:]
        sample["target"] = torch.tensor(int(counts.argmax()) if counts.sum() else -1)
        return sample


class Accuracy:
    """Share of scenes whose arg-max is the target, per branch (scenes without an object are left out)."""

    def __init__(self) -> None:
        self.right, self.total = {}, {}

    def update(self, branch, logits, target) -> None:
        keep = target >= 0
        self.right[branch] = self.right.get(branch, 0) + int((logits.argmax(1)[keep] == target[keep]).sum())
        self.total[branch] = self.total.get(branch, 0) + int(keep.sum())

    def compute(self):
        return {b: {"accuracy": self.right[b] / max(self.total[b], 1)} for b in self.right}


@TASKS.register("scene_classes")
class SceneClasses(Task):
    """The largest object of a scene, from every modality by channel exchange."""

    name = "scene_classes"
    config = {"data": SceneClassesData}
    scores = (Score("accuracy", "accuracy", scale=100.0, unit="%"),)
    default_threshold = 2e-2

    def build_datasets(self, splits=("train", "val", "test"), *, corruption=None):
        from cen.data import transforms as T

        norm = T.segmentation_eval()
        transforms = self.corrupted({"train": norm, "eval": norm}, corruption)  # cen eval --corruptions works too
        parts = build_splits(self.cfg, "segmentation", transforms, splits)
        return {split: LargestObject(ds) for split, ds in parts.items()}

    def build_models(self):
        width, objects = 8, self.cfg.data.num_classes - FIRST_OBJECT
        encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            BasicBlock(width, width),  # cen exchanges after its bn1
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(width, objects),
        )
        spec = cen.FusionSpec(threshold=float(self.cfg.fusion.threshold))
        net = cen.convert(encoder, len(self.cfg.modalities), spec)
        return {"model": cen.MultiModal(net, list(self.cfg.modalities), ensemble=len(self.cfg.modalities) > 1)}

    def loss(self, outputs, target, batch):
        keep = target >= 0
        parts = {f"ce/{k}": F.cross_entropy(v[keep], target[keep]) for k, v in outputs.items()}
        return sum(parts.values()), {k: v.detach() for k, v in parts.items()}

    def make_metrics(self, branches, device):
        return Accuracy()

    def read_inputs(self, paths, **options):
        return SegmentationTask.read_inputs(self, paths)  # each modality read as the segmentation loaders do

    def write_prediction(self, outputs, out, **options) -> str:
        probs = {branch: torch.softmax(v[0].float(), 0).tolist() for branch, v in outputs.items()}
        Path(out).write_text(json.dumps(probs))
        return f"class probabilities of {', '.join(probs)} written to {out}"
