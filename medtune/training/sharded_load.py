"""The trainable model of a run, and FSDP2 loading that never holds more than a rank's share (sharding.load).

    built = build_trainable(cfg, dist)   # peft model, its DDP/FSDP-wrapped loss module, tokenizer, speedups

With sharding=fsdp and sharding.load=per_layer (the default) every rank builds the model on the meta device
(models/build.py build_skeleton), attaches the adapters there, then for each decoder layer in turn fills it (the
local checkpoint's safetensors or a GGUF's converted folder, or random weights seeded per module name), quantises
its linears, fills its adapters and hands it to `fully_shard`, which keeps only this rank's shard, before the next
layer is filled. The embeddings, final norm and head (the root unit, gathered in every forward anyway) come last.
A rank so holds its shard plus one layer (or the root's modules) while loading, not the whole model: the weights
equal the whole path's bit for bit, since both fill through models/materialize.py
(tests/training/test_sharded_load.py). The filling is runtime/shards.py's, which `python -m medtune.evaluate` uses
too. sharding.load=whole builds the whole model on every rank, then shards it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from medtune.config import TrainConfig
from medtune.models.anatomy import causal_lm_of, decoder_layers
from medtune.models.build import build_model, build_skeleton, load_tokenizer
from medtune.models.lora import apply_lora, peft_config, reentrant_checkpointing
from medtune.runtime.process_group import DistInfo
from medtune.runtime.shards import shard_per_layer
from medtune.training import distributed
from medtune.training.loss_module import LossModule
from medtune.training.offload import ActivationOffloader
from medtune.training.speed import apply_speedups

log = logging.getLogger(__name__)


@dataclass
class Trainable:
    """The adapted model, what trains it (LossModule under DDP/FSDP2 as configured) and what was applied to it."""

    model: nn.Module
    wrapped: nn.Module
    tokenizer: Any
    checkpointed: list[int]
    speedups: list[str] = field(default_factory=list)
    offloader: ActivationOffloader | None = None


def loads_per_layer(cfg: TrainConfig) -> bool:
    """True when the base is filled and sharded one decoder layer at a time (sharding=fsdp, load=per_layer)."""
    return cfg.sharding.strategy == "fsdp" and cfg.sharding.load == "per_layer"


def build_trainable(cfg: TrainConfig, dist: DistInfo) -> Trainable:
    """Base (quantised as configured), adapters, speedups, then the loss wrapper under DDP/FSDP2."""
    tc = cfg.trainer
    reentrant = reentrant_checkpointing(tc.grad_ckpt_style, tc.compile, cfg.sharding.strategy)
    if loads_per_layer(cfg):
        built = build_per_layer(cfg, dist, reentrant)
        built.speedups = apply_speedups(built.model, tc)  # they swap forwards only: sharded weights are fine
    else:
        if cfg.sharding.strategy == "fsdp":
            log.info("sharding.load=whole: every rank builds the whole model, then shards it")
        model, tokenizer = build_model(cfg.model, cfg.quantization, dist.device)
        checkpointed = tc.checkpointed_layers(len(decoder_layers(model)))
        model = apply_lora(model, cfg.lora, cfg.quantization, checkpointed, reentrant)
        built = Trainable(model, model, tokenizer, checkpointed, apply_speedups(model, tc))
    if tc.offload_activations is True and dist.device.type == "cuda":
        built.offloader = ActivationOffloader(built.model)  # the forward's inputs in pinned CPU memory
    if built.wrapped is built.model:
        built.wrapped = distributed.wrap_model(built.model, cfg.sharding, dist, tc)
    return built


def build_per_layer(cfg: TrainConfig, dist: DistInfo, reentrant: bool) -> Trainable:
    """The meta model with its adapters, filled and `fully_shard`-ed one decoder layer at a time, root last
    (runtime/shards.py shard_per_layer; the root is the LossModule)."""
    skeleton, reader = build_skeleton(cfg.model, cfg.quantization)
    checkpointed = cfg.trainer.checkpointed_layers(len(decoder_layers(skeleton)))
    model = apply_lora(skeleton.eval(), cfg.lora, cfg.quantization, checkpointed, reentrant)
    wrapped = LossModule(model, cfg.trainer.loss_chunk_size, cfg.trainer.loss_kernel)
    lora_init = peft_config(cfg.lora).init_lora_weights if cfg.lora.enabled else None
    shard_per_layer(model, wrapped, reader, cfg.model, cfg.quantization, cfg.sharding, dist, lora_init)
    source = str(reader.folder) if reader is not None else None
    return Trainable(model, wrapped, load_tokenizer(cfg.model, causal_lm_of(model).config, source), checkpointed)
