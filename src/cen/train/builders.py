"""From a config to the objects a run needs: the model, the data sets, their loaders.

Data loading is made reproducible by construction: the sampler yields
``(epoch, index)`` pairs and :class:`SeededDataset` seeds python, numpy and
torch from ``(seed, epoch, index)`` around each sample's transform, so a sample's
augmentation does not depend on the worker, the number of workers, the number
of processes, or where a resumed run restarts.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torchvision.models.resnet import BasicBlock

from cen.core.convert import convert
from cen.core.multimodal import MultiModal


# -- model -------------------------------------------------------------------
class TinySegNet(MultiModal):
    """A small CEN segmenter for smoke tests: stem, one exchanging BasicBlock, a 1x1 head, 1/4 resolution.

    Same interface as :class:`cen.models.RefineNetCEN` (``{name: Tensor(B, 3, H, W)}`` ->
    logits by name, ``encoder_parameters`` / ``decoder_parameters``), no dropout.
    """

    def __init__(self, num_classes: int, modalities: Sequence[str], threshold: float = 2e-2, *,
                 exchange: bool = True, ensemble: bool = True, width: int = 8) -> None:
        encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            BasicBlock(width, width),
        )
        convert(encoder, len(modalities), threshold=threshold, exchange="auto" if exchange else False)
        head = nn.Conv2d(width, num_classes, 1)
        super().__init__(nn.Sequential(encoder, head), modalities, ensemble=ensemble and len(modalities) > 1)
        self.num_classes = num_classes

    def encoder_parameters(self):
        return self.model[0].parameters()

    def decoder_parameters(self):
        enc = {id(p) for p in self.model[0].parameters()}
        return (p for p in self.parameters() if id(p) not in enc)


def build_model(cfg) -> nn.Module:
    m, mods, k = cfg.model, list(cfg.modalities), int(cfg.data.num_classes)
    if m.name == "tiny":
        return TinySegNet(k, mods, m.threshold, exchange=m.exchange, ensemble=m.ensemble)
    if m.name == "refinenet":
        from cen.models import RefineNetCEN

        return RefineNetCEN(
            backbone=m.backbone, num_classes=k, modalities=mods, threshold=m.threshold,
            pretrained=m.pretrained, exchange=m.exchange, ensemble=m.ensemble,
            **({"decoder_widths": list(m.decoder_widths)} if m.decoder_widths else {}),
        )
    raise ValueError(f"model.name={m.name!r}; expected refinenet or tiny")


def model_meta(cfg) -> dict:
    """What a checkpoint must agree on with the config to be loaded into its model."""
    return {
        "model": cfg.model.name,
        "backbone": cfg.model.backbone if cfg.model.name == "refinenet" else None,
        "modalities": list(cfg.modalities),
        "num_classes": int(cfg.data.num_classes),
    }


def freeze_norm_stats(model: nn.Module) -> None:
    """Put every norm in eval mode (running statistics frozen) while its gamma and beta still train.

    The reference code trains its segmentation model this way.
    """
    from cen.core.norms import _ModalityNorm

    for module in model.modules():
        if isinstance(module, (_ModalityNorm, nn.modules.batchnorm._NormBase)):
            module.eval()


# -- data ------------------------------------------------------------------
class SeededDataset(Dataset):
    """Wrap a data set so item ``(epoch, index)`` is drawn with RNGs seeded from ``(seed, epoch, index)``.

    The caller's RNG states are restored afterwards. A plain ``index`` means epoch 0.
    """

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        seed = ((self.seed * 1_000_003 + epoch) * 1_000_003 + index) % (2**62)
        py, npst = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % (2**32))
            try:
                return self.dataset[index]
            finally:
                random.setstate(py)
                np.random.set_state(npst)


class EpochSampler(Sampler):
    """Shuffled ``(epoch, index)`` pairs for one process of ``world_size``, resumable mid-epoch.

    Every epoch draws one permutation from ``(seed, epoch)`` and cuts it into global
    batches of ``world_size * batch_size``; process ``rank`` takes the ``rank``-th
    contiguous part of each, so the union over processes is the batch one process
    would see with the same global batch. Incomplete global batches are dropped.
    ``start_batch`` skips the batches already done (resume).
    """

    def __init__(self, size: int, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True) -> None:
        self.size, self.batch_size = int(size), int(batch_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.seed, self.shuffle = int(seed), shuffle
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def batches_per_epoch(self) -> int:
        return self.size // (self.batch_size * self.world_size)

    def __len__(self) -> int:
        return (self.batches_per_epoch() - self.start_batch) * self.batch_size

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        glob = self.batch_size * self.world_size
        for b in range(self.start_batch, self.batches_per_epoch()):
            lo = b * glob + self.rank * self.batch_size
            for index in order[lo: lo + self.batch_size]:
                yield (self.epoch, index)


class ShardSampler(Sampler):
    """Indices ``rank, rank + world_size, ...``: each sample evaluated by exactly one process."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, size, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


def train_loader(dataset: Dataset, batch_size: int, *, rank: int, world_size: int, seed: int,
                 num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    sampler = EpochSampler(len(dataset), batch_size, rank=rank, world_size=world_size, seed=seed)
    if sampler.batches_per_epoch() == 0:
        raise ValueError(
            f"the training set has {len(dataset)} samples, fewer than one global batch of "
            f"{batch_size * world_size}; lower train.batch_size"
        )
    return DataLoader(
        SeededDataset(dataset, seed), batch_size=batch_size, sampler=sampler, drop_last=True,
        num_workers=num_workers, pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),  # keeps the global RNG untouched
        persistent_workers=False,
    )


def eval_loader(dataset: Dataset, batch_size: int, *, rank: int, world_size: int,
                num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), rank, world_size),
        num_workers=num_workers, pin_memory=pin_memory, generator=torch.Generator().manual_seed(0),
    )


DATASETS = {"nyudv2": "NYUDv2", "sunrgbd": "SUNRGBD", "scenes": "NYUDv2"}


def prepare_data(cfg) -> None:
    """Generate the scenes once (``data.dataset: scenes``); a no-op for real data sets."""
    if cfg.data.dataset != "scenes":
        return
    from cen.data import synth

    g = cfg.data.generate
    synth.ensure_generated(cfg.data.root, num=g.num, height=g.height, width=g.width, seed=g.seed,
                           progress=True, workers=g.workers)


def build_datasets(cfg, splits: Sequence[str] = ("train", "val", "test")) -> dict[str, Dataset]:
    """``{split: Dataset}`` read from ``data.root`` with the list files of the config."""
    import cen.data as cdata
    from cen.data import transforms as T

    d = cfg.data
    root = Path(d.root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.root={str(root)!r} is not a folder; point data.root at the {d.dataset} data")
    cls = getattr(cdata, DATASETS[d.dataset])
    mods = tuple(cfg.modalities)
    train_tf = train_transform(d)
    eval_tf = T.segmentation_eval(shorter_side=d.short_side)
    def read(list_name: str, key: str, transform):
        list_file = root / list_name
        if not list_file.is_file():
            raise FileNotFoundError(f"data.{key}: {list_file} does not exist")
        return cls(root, list_file, modalities=mods, transform=transform, num_classes=int(d.num_classes))

    out = {}
    held_out = d.val_list is None
    if "train" in splits or ("val" in splits and held_out):
        train_idx, val_idx = None, None
        if held_out:
            full = read(d.train_list, "train_list", None)
            train_idx, val_idx = holdout_split(len(full), d.val_fraction, d.val_seed)
        if "train" in splits:
            ds = read(d.train_list, "train_list", train_tf)
            out["train"] = Subset(ds, train_idx) if held_out else ds
        if "val" in splits and held_out:
            out["val"] = Subset(read(d.train_list, "train_list", eval_tf), val_idx)
    if "val" in splits and not held_out:
        out["val"] = read(d.val_list, "val_list", eval_tf)
    if "test" in splits:
        out["test"] = read(d.test_list, "test_list", eval_tf)
    return out


def train_transform(d):
    """The training pipeline of :mod:`cen.data.transforms` for the ``data`` config."""
    from torchvision.transforms import v2

    from cen.data import transforms as T

    scale = None if (d.scale_min, d.scale_max) == (1.0, 1.0) else (d.scale_min, d.scale_max)
    if d.crop_size is not None:
        crop = d.crop_size if isinstance(d.crop_size, int) else tuple(d.crop_size)
        return T.segmentation_train(crop, scale_range=scale, shorter_side=d.short_side, hflip_p=0.5 if d.flip else 0.0)
    if scale is not None:
        raise ValueError(
            f"data.scale_min/scale_max = {d.scale_min}/{d.scale_max} rescale every image differently, so a batch "
            "needs a common crop: set data.crop_size (e.g. the image height), or scale_min=scale_max=1"
        )
    steps = [v2.Resize(d.short_side, antialias=True)] if d.short_side else []
    steps.append(T.NormalizeModalities(T.default_normalization()))
    if d.flip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    return v2.Compose(steps)


def holdout_split(size: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """``(train indices, validation indices)``: a fixed random ``fraction`` held out (at least one)."""
    n_val = min(max(1, round(size * fraction)), size - 1)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[n_val:]), sorted(order[:n_val])
