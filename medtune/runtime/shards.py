"""A model sharded with FSDP2 (`fully_shard`, one unit per decoder layer, the root last), and its plain scoring view:
what training and `python -m medtune.evaluate` share.

    shard_whole(root, cfg.sharding, dist)        # a built model: each decoder layer, then the root
    shard_per_layer(model, root, reader, ...)    # a meta model: each layer filled then sharded, root modules last
    with measured_scoring(root, dist.device, "eval") as (plain, memory): ...   # lm-eval on every rank

`root` is a wrapper around the (peft) causal LM whose own unit holds the embeddings, final norm and head: training's
LossModule, or ScoringRoot for the evaluation command. Scoring calls the LM inside, never the root (a forward through
an FSDP root would reshard its parameters after it, under the scorer's direct calls to the decoder and head). A root
tells the scoring view what it wraps and how to run its first forward through two members, so this layer needs no
knowledge of training: `scored_lm` (the causal LM inside) and `probe_()` (a forward that computes nothing).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn

from medtune.config import ModelConfig, QuantizationConfig, ShardingConfig
from medtune.models.anatomy import causal_lm_of, decoder_layers
from medtune.models.build import finish_base_
from medtune.models.document_masks import unpacked_attention
from medtune.models.materialize import Materializer, SafetensorsReader, fill_layer_, split_modules
from medtune.models.precision import TORCH_DTYPES
from medtune.models.regional_compile import eager_layers
from medtune.runtime.peak_memory import memory_metrics, per_rank_memory, reset_peak_memory
from medtune.runtime.process_group import DistInfo

log = logging.getLogger(__name__)


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


def shard_whole(root: nn.Module, sharding: ShardingConfig, info: DistInfo) -> nn.Module:
    """`fully_shard` each decoder layer of a built model, then `root` (which holds it); returns root."""
    from torch.distributed.fsdp import fully_shard

    kwargs = fsdp_kwargs(sharding, info)
    layers = decoder_layers(unwrap(root))
    for layer in layers:
        fully_shard(layer, **kwargs)
    fully_shard(root, **kwargs)
    log.info("FSDP2: %d decoder layers + root sharded over %d ranks", len(layers), info.world_size)
    return root


def shard_per_layer(
    model: nn.Module, root: nn.Module, reader: SafetensorsReader | None, model_cfg: ModelConfig,
    quant_cfg: QuantizationConfig, sharding: ShardingConfig, info: DistInfo, lora_init: bool | str | None = None,
    after_layer: Callable[[nn.Module, str], None] | None = None,
) -> None:  # fmt: skip
    """Fill the meta (peft) `model` (models/build.py build_skeleton, adapters attached) one decoder layer at a time
    and `fully_shard` each before the next is filled; then the modules outside the layers, then `root`.

    Weights come from `reader` (a local checkpoint) or are random, seeded per module name from the run's seed
    (models/materialize.py: the whole path's weights, bit for bit). `after_layer(layer, name)` runs on each filled
    layer before it is sharded (the evaluation command fills a saved adapter's tensors there)."""
    from torch.distributed.fsdp import fully_shard

    start_s = time.perf_counter()
    kwargs = fsdp_kwargs(sharding, info)
    lm = causal_lm_of(model)
    fill = Materializer(lm, info.device, torch.initial_seed(), reader)
    outside, layers_name = split_modules(lm)
    layers = decoder_layers(lm)
    for index, layer in enumerate(layers):
        name = f"{layers_name}.{index}"
        fill_layer_(fill, layer, name, quant_cfg, TORCH_DTYPES[model_cfg.dtype], lora_init)
        if after_layer is not None:
            after_layer(layer, name)
        fully_shard(layer, **kwargs)
    for name, module in outside:
        fill.module_(name, module)
    finish_base_(lm, model_cfg, quant_cfg.method)
    fully_shard(root, **kwargs)
    log.info(
        "sharding.load=per_layer: %d decoder layers filled (%s) and sharded one at a time over %d ranks, root last, "
        "in %.1f s",
        len(layers),
        str(reader.folder) if reader is not None else f"random, seed {fill.seed}",
        info.world_size,
        time.perf_counter() - start_s,
    )


class ScoringRoot(nn.Module):
    """The FSDP root of a model that is only scored (`python -m medtune.evaluate`): it holds the (peft) causal LM."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    @property
    def scored_lm(self) -> nn.Module:
        """The (peft) causal LM inside: what scoring_view yields."""
        return self.lm

    def forward(self, **inputs: Any) -> Any:
        return self.lm(**inputs)

    def probe_(self) -> None:
        """One forward of two token ids, for FSDP's first-forward setup."""
        self(input_ids=torch.zeros((1, 2), dtype=torch.long, device=next(self.lm.parameters()).device))


def is_fsdp(module: nn.Module) -> bool:
    """True when `module` is an FSDP2 root: its forwards are collectives that every rank must join."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def unwrap(module: nn.Module) -> nn.Module:
    """The (peft) causal LM inside DDP and a wrapper root (its `scored_lm`, e.g. training's LossModule)."""
    if isinstance(module, torch.nn.parallel.DistributedDataParallel):
        module = module.module
    return getattr(module, "scored_lm", module)  # a peft model forwards unknown names to its base: none has this one


@contextlib.contextmanager
def scoring_view(module: nn.Module) -> Iterator[nn.Module]:
    """The (peft) causal LM inside `module`, ready for plain forwards (lm-eval, probes, watch sets) on every rank:
    padded batches of any length, so sdpa instead of the packing kernel (unpacked_attention) and the decoder layers'
    eager forwards instead of compiled ones (eager_layers: a new length would recompile). Every scoring site goes
    through here, so none can forget either.

    Under FSDP the root unit holds the embeddings, final norm and LM head; a forward through the causal LM inside a
    wrapper root would meet them sharded. They are gathered for the whole evaluation (the same memory training keeps
    for them) after one forward through the root, which FSDP needs first to know its root; each decoder layer still
    gathers itself in its own forward. Every rank must enter and leave together.
    """
    with _gathered_root(module) as inner, unpacked_attention(inner), eager_layers(inner):
        yield inner


@contextlib.contextmanager
def measured_scoring(module: nn.Module, device: torch.device, phase: str) -> Iterator[tuple[Any, dict]]:
    """scoring_view, with the phase's memory: peaks from its start (earlier phases' cached blocks released) and, on
    a clean exit, `memory` filled with every rank's `sys/<phase>/...` (per_rank_memory: every rank must exit)."""
    reset_peak_memory(device, release_cache=True)
    memory: dict[str, float] = {}
    with scoring_view(module) as plain:
        yield plain, memory
    memory.update(per_rank_memory(memory_metrics(device, phase), device))


@contextlib.contextmanager
def _gathered_root(module: nn.Module) -> Iterator[nn.Module]:
    inner = unwrap(module)
    if not is_fsdp(module):
        yield inner
        return
    with torch.no_grad():  # it only runs the root's first-forward setup
        module.probe_()
    module.unshard()
    try:
        yield inner
    finally:
        module.reshard()
