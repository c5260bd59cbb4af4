"""This process in a torchrun launch: its rank and device, the process group, and the collectives every command uses.

    dist = init(cfg.sharding, cfg.trainer.device)          # DistInfo(rank, world_size, local_rank, device)
    total = all_reduce_sum(tokens, dist.device)            # a no-op in one process
    cleanup()                                              # leave the group

Rank 0 picks the run directory and shares it (`launch.shared_run_stamp`), only rank 0 logs and writes files, and
metrics that are sums (tokens, losses) are all-reduced. How a model is sharded over the ranks (FSDP2) is in
runtime/shards.py; training's loss module under DDP or FSDP2 in training/distributed.py.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist

from medtune.config import ShardingConfig
from medtune.runtime.launch import env_world
from medtune.runtime.watchdog import process_group_timeout


@dataclass
class DistInfo:
    """Where this process sits: rank, world size and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(requested: str, local_rank: int) -> torch.device:
    """auto -> cuda:<local_rank> when a GPU is visible, else cpu; cuda without a GPU is an error."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("trainer.device=cuda but no CUDA GPU is visible; use trainer.device=auto or cpu.")
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def ensure_process_group(backend: str = "auto", timeout: dt.timedelta | None = None) -> None:
    """Join the torchrun process group if not joined yet (auto: gloo for CPU tensors, nccl for CUDA ones).

    `timeout` bounds every collective; the run's watchdog (medtune.runtime.watchdog) fires a little earlier and records
    where the run was. The first call decides: the run stamp is shared before the config is read.
    """
    _, world, _ = env_world()
    if world > 1 and not tdist.is_initialized():
        if backend == "auto":
            backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        tdist.init_process_group(backend=backend, timeout=timeout or dt.timedelta(minutes=30))


def init(sharding: ShardingConfig, device: str, replicas_ok: bool = False) -> DistInfo:
    """Set up this process for `sharding.strategy`; checks that the launch matches it.

    `replicas_ok`: several processes with sharding=none are allowed (evaluation: every rank holds the whole model).
    """
    rank, world, local_rank = env_world()
    if sharding.strategy == "none" and world > 1 and not replicas_ok:
        raise RuntimeError(f"launched with {world} processes but sharding=none; add sharding=ddp or sharding=fsdp.")
    info = DistInfo(rank, world, local_rank, resolve_device(device, local_rank))
    if world > 1:
        ensure_process_group(sharding.backend, process_group_timeout(sharding.timeout_min * 60))
    if sharding.strategy == "fsdp" and info.device.type != "cuda" and sharding.cpu_offload:
        raise RuntimeError("sharding.cpu_offload=true needs CUDA devices; set sharding.cpu_offload=false on CPU.")
    return info


def all_reduce_sum(value: torch.Tensor | int | float, device: torch.device) -> torch.Tensor:
    """Sum over ranks (a no-op in one process); returns a tensor on `device`."""
    tensor = value.detach().clone() if torch.is_tensor(value) else torch.tensor(float(value), device=device)
    if tdist.is_initialized():
        tdist.all_reduce(tensor)
    return tensor


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` in rank order (one process: [obj])."""
    if not tdist.is_initialized():
        return [obj]
    out: list[Any] = [None] * tdist.get_world_size()
    tdist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if tdist.is_initialized():
        tdist.barrier()


def cleanup() -> None:
    """Leave the process group."""
    if tdist.is_initialized():
        tdist.destroy_process_group()
