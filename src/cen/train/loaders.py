"""Data loaders of the engine: reproducible by construction.

The training sampler yields ``(epoch, index)`` pairs and :class:`SeededDataset`
seeds python, numpy and torch from ``(seed, epoch, index)`` around each sample's
transform, so a sample's augmentation does not depend on the worker, the number
of workers, the number of processes, or where a resumed run restarts.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cen.errors import UserError


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

    def __init__(
        self, size: int, batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True
    ) -> None:
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
            for index in order[lo : lo + self.batch_size]:
                yield (self.epoch, index)


class ShardSampler(Sampler):
    """Indices ``rank, rank + world_size, ...``: each sample evaluated by exactly one process."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, size, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


@dataclass(frozen=True)
class LoaderSettings:
    """How every loader of a run reads: this process's shard of each split and the worker options.

    ``rank`` / ``world_size``: the process and the number of processes (each reads its shard);
    ``num_workers``: loader worker processes (0: in this process); ``pin_memory``: for a CUDA
    device; ``collate_fn``: the task's (None: PyTorch's default collation).
    """

    rank: int = 0
    world_size: int = 1
    num_workers: int = 0
    pin_memory: bool = False
    collate_fn: Callable[[list], object] | None = None

    @classmethod
    def of_run(cls, cfg, info, device: torch.device, collate_fn: Callable[[list], object] | None) -> LoaderSettings:
        """The settings of a run: ``info``'s rank and world size, ``cfg.data.num_workers``, pinned on CUDA."""
        return cls(info.rank, info.world_size, int(cfg.data.num_workers), device.type == "cuda", collate_fn)

    def _options(self) -> dict:
        return {"num_workers": self.num_workers, "pin_memory": self.pin_memory, "collate_fn": self.collate_fn}


def train_loader(dataset: Dataset, batch_size: int, settings: LoaderSettings, *, seed: int) -> DataLoader:
    """Batches of ``batch_size`` from this process's share of each epoch's permutation (seeded by ``seed``)."""
    sampler = EpochSampler(len(dataset), batch_size, rank=settings.rank, world_size=settings.world_size, seed=seed)
    if sampler.batches_per_epoch() == 0:
        raise UserError(
            f"the training set has {len(dataset)} samples, fewer than one global batch of "
            f"{batch_size * settings.world_size}; lower train.batch_size"
        )
    return DataLoader(
        SeededDataset(dataset, seed),
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),  # keeps the global RNG untouched
        persistent_workers=False,
        **settings._options(),
    )


def eval_loader(dataset: Dataset, batch_size: int, settings: LoaderSettings) -> DataLoader:
    """Batches of ``batch_size`` of this process's shard of ``dataset``, in order."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), settings.rank, settings.world_size),
        generator=torch.Generator().manual_seed(0),
        **settings._options(),
    )
