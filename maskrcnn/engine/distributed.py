"""Process-group helpers for DDP. One process per GPU (or several CPU processes), launched by
torchrun, which sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything here is a
no-op for a single process."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


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
    """What torchrun told this process (rank 0 of 1 when not launched by it)."""
    try:
        return DistInfo(
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )
    except ValueError as e:
        raise RuntimeError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers: {e}") from None


def init(device: torch.device, info: DistInfo) -> None:
    """Join the process group: NCCL for CUDA devices, gloo for CPU."""
    if not info.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...]; [obj] without a process group."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over processes (a NaN on any process makes the result NaN everywhere, which is
    what lets every process stop together on a non-finite loss)."""
    if not is_initialized():
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor / dist.get_world_size()


def sync_batch_norm(model: torch.nn.Module, device: torch.device, info: DistInfo) -> int:
    """Under DDP, turn the norm layers configured as "sync_bn" (ModelConfig.backbone_norm /
    head_norm) into torch.nn.SyncBatchNorm, so their batch statistics are taken over every
    process's images; in one process they stay plain batch norm. Parameters and statistics are
    kept (the optimizer's references stay valid). Returns how many layers were converted."""
    from ..modeling.layers import SyncableBatchNorm2d, convert_sync_batch_norm

    if not info.distributed or not any(isinstance(m, SyncableBatchNorm2d) for m in model.modules()):
        return 0
    if device.type != "cuda":
        raise ValueError(f"norm 'sync_bn' with {info.world_size} processes needs CUDA devices (torch.nn.SyncBatchNorm "
                         f"has no {device.type} implementation); use 'bn' (per-process statistics) or 'gn' here")
    return convert_sync_batch_norm(model)
