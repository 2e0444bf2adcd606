"""Small in-memory stand-ins for the data sets: dict samples as the real loaders give."""

from __future__ import annotations

import random

import torch
from torch.utils.data import Dataset


class FakeScenes(Dataset):
    """``n`` samples of ``{modality: (3, H, W), "mask": (H, W)}``: labels from rgb or depth alone.

    Class 0/1 is readable from ``rgb``'s first channel, class 0/2 from ``depth``'s,
    so both modalities matter. ``augment`` flips at random (python ``random``) and
    adds torch noise, so tests see augmentation randomness.
    """

    def __init__(self, n=8, size=32, modalities=("rgb", "depth"), augment=False, seed=0, ignore=False, max_label=None):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(n):
            a = (torch.rand(1, size // 8, size // 8, generator=g) > 0.5).float()
            b = (torch.rand(1, size // 8, size // 8, generator=g) > 0.5).float()
            up = lambda t: t.repeat_interleave(8, 1).repeat_interleave(8, 2)
            a, b = up(a), up(b)
            mask = (a[0] + 2 * b[0]).long().clamp(max=2)
            if ignore:
                mask[:2] = 255
            if max_label is not None:
                mask[0, 0] = max_label
            sample = {"mask": mask}
            if "rgb" in modalities:
                sample["rgb"] = torch.cat([a, torch.rand(2, size, size, generator=g)]) - 0.5
            if "depth" in modalities:
                sample["depth"] = torch.cat([b, b, b]) - 0.5 + 0.1 * torch.rand(3, size, size, generator=g)
            self.items.append(sample)
        self.augment = augment

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        s = {k: v.clone() for k, v in self.items[i].items()}
        if self.augment:
            if random.random() < 0.5:
                s = {k: v.flip(-1) for k, v in s.items()}
            for k in s:
                if k != "mask":
                    s[k] = s[k] + 0.05 * torch.randn_like(s[k])
        return s


def fake_datasets(n_train=8, n_eval=4, **kw):
    return {
        "train": FakeScenes(n_train, augment=True, seed=1, **kw),
        "val": FakeScenes(n_eval, seed=2, **kw),
        "test": FakeScenes(n_eval, seed=3, **kw),
    }


def tiny_overrides(tmp_path, *extra):
    return [
        "model.name=tiny",
        "data.num_classes=3",
        "train.batch_size=4",
        "train.progress=false",
        "train.device=cpu",
        "train.log_every=1",
        "eval.num_images=0",
        "optim.stages=[{epochs: 2, encoder_lr: 0.05, decoder_lr: 0.05}]",
        f"run.dir={tmp_path}",
        "run.name=run",
        *extra,
    ]


def spy_on_loaded_models(monkeypatch) -> list[tuple[bool, bool]]:
    """Patch ``cen.train.checkpoint.load_model_with_config`` so that every model it loads records, at each
    forward, ``(CPU autocast on, first conv weight channels-last)``; returns the list it appends to."""
    import cen.train.checkpoint as checkpoint

    seen: list[tuple[bool, bool]] = []
    load = checkpoint.load_model_with_config

    def spying_load(path, *args, **kwargs):
        model, cfg = load(path, *args, **kwargs)

        def hook(module, inputs):
            conv = next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d))
            seen.append(
                (torch.is_autocast_enabled("cpu"), conv.weight.is_contiguous(memory_format=torch.channels_last))
            )

        model.register_forward_pre_hook(hook)
        return model, cfg

    monkeypatch.setattr(checkpoint, "load_model_with_config", spying_load)
    return seen


def cen_predict(checkpoint, *args) -> int:
    """Exit code of ``cen predict --checkpoint CHECKPOINT ARGS...`` (paths may be ``Path``s)."""
    from cen.cli.main import main

    return main(["predict", "--checkpoint", str(checkpoint), *map(str, args)])


def evaluate_segmenter(model, loader, num_classes, *, modalities=None, upsample="bilinear", **kwargs):
    """The engine's evaluation loop (:func:`cen.train.evaluation.evaluate`) of a segmentation ``model`` with
    ``num_classes`` classes over ``loader`` (``kwargs``: its options, e.g. ``flip``, ``image_dir``)."""
    from cen.tasks import build_task
    from cen.train.config import load_config
    from cen.train.evaluation import evaluate

    names = list(getattr(model, "names", None) or ["rgb", "depth"])
    cfg = load_config(
        None,
        [f"modalities=[{','.join(names)}]", f"data.num_classes={num_classes}", f"eval.upsample={upsample}"],
    )
    kwargs.setdefault("progress", False)
    return evaluate(build_task(cfg), {"model": model}, loader, device=torch.device("cpu"), modalities=modalities,
                    **kwargs)  # fmt: skip
