"""Process groups and model wrapping: one process, DDP, or FSDP2 (`fully_shard`, one unit per decoder layer).

Launch several processes with torchrun; every rank composes the same Hydra config:

    torchrun --nproc-per-node 2 -m medtune.train sharding=fsdp quantization=nf4

Rank 0 picks the run directory and shares it (`launch.shared_run_stamp`), only rank 0 logs and writes files,
and metrics that are sums (tokens, losses) are all-reduced.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist

from medtune.config import ShardingConfig, TrainerConfig
from medtune.models.anatomy import decoder_layers
from medtune.models.document_masks import unpacked_attention
from medtune.models.precision import TORCH_DTYPES
from medtune.training.launch import env_world
from medtune.training.loss_module import LossModule
from medtune.training.speed import eager_layers
from medtune.training.step_metrics import memory_metrics, reset_peak_memory

log = logging.getLogger(__name__)


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

    `timeout` bounds every collective; the run's watchdog (medtune.training.watchdog) fires a little earlier and records
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
        from medtune.training.watchdog import process_group_timeout

        ensure_process_group(sharding.backend, process_group_timeout(sharding.timeout_min * 60))
    if sharding.strategy == "fsdp" and info.device.type != "cuda" and sharding.cpu_offload:
        raise RuntimeError("sharding.cpu_offload=true needs CUDA devices; set sharding.cpu_offload=false on CPU.")
    return info


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


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable tensors gathered to full size on CPU (every rank calls this; FSDP shards are all-gathered)."""
    out = {}
    for name, param in unwrap(module).named_parameters():
        if not param.requires_grad:
            continue
        full = param.full_tensor() if hasattr(param, "full_tensor") else param
        out[name] = full.detach().cpu()
    return out


def cleanup() -> None:
    """Leave the process group."""
    if tdist.is_initialized():
        tdist.destroy_process_group()
