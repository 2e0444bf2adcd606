"""One process or many: ``torchrun`` sets the environment, this module reads it.

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) everything runs in
one process and no process group is created. With it, each process joins a
group (NCCL on CUDA, gloo on the CPU), trains its share of the global batch and
DistributedDataParallel averages the gradients.

SyncBatchNorm: ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` converts only
``nn.BatchNorm*`` modules, and cen's private norms are not those: a
:class:`~cen.nn.ModalityBatchNorm2d` is one batch norm over the ``(B, M*C, H, W)``
view, so synchronising it needs the same all-gather of per-channel statistics
on that view. :func:`convert_sync_batchnorm` swaps each one for
:class:`SyncModalityBatchNorm2d`, which does exactly that with torch's own
sync-BN kernel (CUDA only, as torch's). On the CPU (gloo) plain per-process
statistics are used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from cen.core.norms import ModalityBatchNorm2d


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_info() -> DistInfo:
    """Rank and world size as set by ``torchrun`` (one process when unset)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a device, with a clear error if it is not there."""
    spec = str(spec).strip().lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"train.device={spec!r} asks for CUDA, but torch.cuda.is_available() is False on this machine "
                f"(torch {torch.__version__}); use train.device=cpu or train.device=auto"
            )
        count = torch.cuda.device_count()
        try:
            first = 0 if spec == "cuda" else int(spec.split(":", 1)[1])
        except ValueError:
            raise RuntimeError(f"train.device={spec!r} is not understood; expected auto, cpu, cuda or cuda:N") from None
        index = first + local_rank  # under torchrun, process i uses the i-th device from the first
        if not 0 <= index < count:
            raise RuntimeError(f"train.device={spec!r} (process {local_rank}) needs cuda:{index}, but only {count} CUDA device(s) exist")
        return torch.device("cuda", index)
    raise RuntimeError(f"train.device={spec!r} is not understood; expected auto, cpu, cuda or cuda:N")


def init(device_spec: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group if launched by torchrun; return the process's info and device."""
    info = env_info()
    device = resolve_device(device_spec, info.local_rank)
    if info.distributed and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of ``value`` over processes (itself in one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / dist.get_world_size()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every process."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


class SyncModalityBatchNorm2d(ModalityBatchNorm2d):
    """A :class:`~cen.nn.ModalityBatchNorm2d` whose batch statistics are computed over all processes."""

    process_group = None

    def _normalize(self, x, weight, bias, running_mean, running_var, update_stats):
        need_sync = self.training and dist.is_available() and dist.is_initialized() and x.device.type != "cpu"
        if need_sync:
            group = self.process_group or dist.group.WORLD
            world = dist.get_world_size(group)
            need_sync = world > 1
        if not need_sync:
            return super()._normalize(x, weight, bias, running_mean, running_var, update_stats)
        from torch.nn.modules._functions import SyncBatchNorm as sync_batch_norm

        momentum = self._momentum() if update_stats else 0.0
        return sync_batch_norm.apply(x, weight, bias, running_mean, running_var, self.eps, momentum, group, world)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Synchronise every batch norm of ``model``: cen's modality norms and plain ``nn.BatchNorm*``.

    The modality norms keep their parameters, buffers and exchange settings
    (only the class changes, so state dicts stay the same).
    """
    for module in model.modules():
        if type(module) is ModalityBatchNorm2d:
            module.__class__ = SyncModalityBatchNorm2d
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (itself otherwise)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
