"""One process or many: ``torchrun`` sets the environment, this module reads it.

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) everything runs in
one process and no process group is created. With it, each process joins a
group (NCCL on CUDA, gloo on the CPU), trains its share of the global batch and
DistributedDataParallel averages the gradients.

SyncBatchNorm: ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` converts only
``nn.BatchNorm*`` modules, and cen's private norms are not those: a
:class:`~cen.nn.ModalityBatchNorm2d` is one batch norm over the ``(B, M*C, H, W)``
view, so synchronising it needs torch's sync-BN kernel on that view, which
:func:`cen.convert_sync_batchnorm` switches on. :func:`convert_sync_batchnorm`
here applies both converters; the trainer uses it on CUDA. Torch's sync-BN has
no CPU kernel, so on the CPU (gloo) statistics stay per process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cen.errors import UserError


class DeviceError(UserError, RuntimeError):
    """A requested device that this machine does not have."""


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # processes on this machine (they share its cores)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_info() -> DistInfo:
    """Rank and world size as set by ``torchrun`` (one process when unset)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1"))),
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
            raise DeviceError(
                f"train.device={spec!r} asks for CUDA, but torch.cuda.is_available() is False on this machine "
                f"(torch {torch.__version__}); use train.device=cpu or train.device=auto"
            )
        count = torch.cuda.device_count()
        try:
            first = 0 if spec == "cuda" else int(spec.split(":", 1)[1])
        except ValueError:
            raise DeviceError(f"train.device={spec!r} is not understood; expected auto, cpu, cuda or cuda:N") from None
        index = first + local_rank  # under torchrun, process i uses the i-th device from the first
        if not 0 <= index < count:
            raise DeviceError(
                f"train.device={spec!r} (process {local_rank}) needs cuda:{index}, but only {count} CUDA device(s) exist"
            )
        return torch.device("cuda", index)
    raise DeviceError(f"train.device={spec!r} is not understood; expected auto, cpu, cuda or cuda:N")


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
