"""The model over several processes: one process, DDP, or FSDP2 (`fully_shard`, one unit per decoder layer), and
the plain scoring view of a wrapped model.

Launch several processes with torchrun; every rank composes the same Hydra config:

    torchrun --nproc-per-node 2 -m medtune.train sharding=fsdp quantization=nf4

The process group, the rank and device of this process, and the collectives live in runtime/process_group.py.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as tdist

from medtune.config import ShardingConfig, TrainerConfig
from medtune.models.anatomy import decoder_layers
from medtune.models.document_masks import unpacked_attention
from medtune.models.precision import TORCH_DTYPES
from medtune.runtime.process_group import DistInfo, all_gather_objects
from medtune.training.loss_module import LossModule
from medtune.training.speed import eager_layers
from medtune.training.step_metrics import memory_metrics, reset_peak_memory

log = logging.getLogger(__name__)


def wrap_model(model: torch.nn.Module, sharding: ShardingConfig, info: DistInfo, tc: TrainerConfig) -> torch.nn.Module:
    """LossModule around the (peft) model, then DDP or FSDP2 as configured."""
    module = LossModule(model, tc.loss_chunk_size, tc.loss_kernel)
    if sharding.strategy == "ddp":
        module.to(info.device)
        ids = [info.device.index] if info.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)
    if sharding.strategy == "fsdp":
        return _fully_shard(module, sharding, info)
    return module


def fsdp_kwargs(sharding: ShardingConfig, info: DistInfo) -> dict[str, Any]:
    """The keyword arguments of every `fully_shard` call of a run: mesh, mixed precision, resharding, offload."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

    mesh = tdist.device_mesh.init_device_mesh(info.device.type, (info.world_size,))
    policy = MixedPrecisionPolicy(
        param_dtype=TORCH_DTYPES[sharding.param_dtype], reduce_dtype=TORCH_DTYPES[sharding.reduce_dtype]
    )
    kwargs = {"mesh": mesh, "mp_policy": policy, "reshard_after_forward": sharding.reshard_after_forward}
    if sharding.cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    return kwargs


def _fully_shard(module: LossModule, sharding: ShardingConfig, info: DistInfo) -> torch.nn.Module:
    from torch.distributed.fsdp import fully_shard

    kwargs = fsdp_kwargs(sharding, info)
    layers = decoder_layers(module.model)
    for layer in layers:
        fully_shard(layer, **kwargs)
    fully_shard(module, **kwargs)
    log.info("FSDP2: %d decoder layers + root sharded over %d ranks", len(layers), info.world_size)
    return module


def is_fsdp(module: torch.nn.Module) -> bool:
    """True when `module` is an FSDP2 root: its forwards are collectives that every rank must join."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


@contextlib.contextmanager
def scoring_view(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The (peft) causal LM inside `module`, ready for plain forwards (lm-eval, probes, watch sets) on every rank:
    padded batches of any length, so sdpa instead of the packing kernel (unpacked_attention) and the decoder layers'
    eager forwards instead of compiled ones (eager_layers: a new length would recompile). Every scoring site goes
    through here, so none can forget either.

    Under FSDP the wrapper (LossModule) is the root unit and holds the embeddings, final norm and LM head; a forward
    through the causal LM alone would meet them sharded. They are gathered for the whole evaluation (the same
    memory training keeps for them) after one forward through the root, which FSDP needs first to know its root;
    each decoder layer still gathers itself in its own forward. Every rank must enter and leave together.
    """
    with _gathered_root(module) as inner, unpacked_attention(inner), eager_layers(inner):
        yield inner


@contextlib.contextmanager
def measured_scoring(module: torch.nn.Module, device: torch.device, phase: str) -> Iterator[tuple[Any, dict]]:
    """scoring_view, with the phase's memory: peaks from its start (earlier phases' cached blocks released) and, on
    a clean exit, `memory` filled with every rank's `sys/<phase>/...` (per_rank_memory: every rank must exit)."""
    reset_peak_memory(device, release_cache=True)
    memory: dict[str, float] = {}
    with scoring_view(module) as plain:
        yield plain, memory
    memory.update(per_rank_memory(memory_metrics(device, phase), device))


@contextlib.contextmanager
def _gathered_root(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    inner = unwrap(module)
    if not is_fsdp(module):
        yield inner
        return
    device = next(inner.parameters()).device
    one = torch.zeros((1, 2), dtype=torch.long, device=device)
    with torch.no_grad():  # no label: loss 0, nothing counted; it only runs the root's first-forward setup
        module(
            input_ids=one,
            position_ids=torch.arange(2, device=device)[None],
            document_ids=one,
            shift_labels=torch.full_like(one, -100),
        )
    module.unshard()
    try:
        yield inner
    finally:
        module.reshard()


def per_rank_memory(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Memory metrics of every rank: `sys/<phase>/<key>` becomes the busiest rank's value, and each rank's own
    value is kept as `sys/<phase>/rank<r>/<key>` (one process: returned as given). Every rank must call it."""
    everyone = all_gather_objects(values)
    if len(everyone) == 1:
        return values
    out = {k: max(r[k] for r in everyone) for k in values}
    for rank, theirs in enumerate(everyone):
        for key, value in theirs.items():
            phase, _, name = key.rpartition("/")
            out[f"{phase}/rank{rank}/{name}"] = value
    return out


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The peft/causal-LM model inside DDP and LossModule."""
    if isinstance(module, torch.nn.parallel.DistributedDataParallel):
        module = module.module
    return module.model if isinstance(module, LossModule) else module


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
