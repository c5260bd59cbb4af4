"""The model over several processes for training: the loss module under one process, DDP, or FSDP2, and what the
optimizer step needs from them (gradient sync, the full adapter state).

Launch several processes with torchrun; every rank composes the same Hydra config:

    torchrun --nproc-per-node 2 -m medtune.train sharding=fsdp quantization=nf4

The process group, the rank and device of this process, and the collectives live in runtime/process_group.py; the
FSDP2 sharding and the plain scoring view, which the evaluation command shares, in runtime/shards.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from medtune.config import ShardingConfig, TrainerConfig
from medtune.runtime.process_group import DistInfo
from medtune.runtime.shards import shard_whole, unwrap
from medtune.training.loss_module import LossModule


def wrap_model(model: torch.nn.Module, sharding: ShardingConfig, info: DistInfo, tc: TrainerConfig) -> torch.nn.Module:
    """LossModule around the (peft) model, then DDP or FSDP2 as configured."""
    module = LossModule(model, tc.loss_chunk_size, tc.loss_kernel)
    if sharding.strategy == "ddp":
        module.to(info.device)
        ids = [info.device.index] if info.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)
    if sharding.strategy == "fsdp":
        return shard_whole(module, sharding, info)
    return module


@contextlib.contextmanager
def no_sync_unless(module: torch.nn.Module, last: bool) -> Iterator[None]:
    """Skip gradient all-reduce on all but the last accumulation micro-batch (DDP and FSDP2)."""
    if last:
        yield
    elif isinstance(module, torch.nn.parallel.DistributedDataParallel):
        with module.no_sync():
            yield
    elif hasattr(module, "set_requires_gradient_sync"):
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    else:
        yield


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable tensors gathered to full size on CPU (every rank calls this; FSDP shards are all-gathered)."""
    out = {}
    for name, param in unwrap(module).named_parameters():
        if not param.requires_grad:
            continue
        full = param.full_tensor() if hasattr(param, "full_tensor") else param
        out[name] = full.detach().cpu()
    return out
