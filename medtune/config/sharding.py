"""The `sharding` config group: one process, DDP, or FSDP2, and how an FSDP run loads its base model.

No torch here (see medtune/config/training.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from medtune.config.checks import DTYPES, ConfigError, check_choice

LOAD_CHOICES = ("per_layer", "whole")  # sharding.load (training/sharded_load.py)


@dataclass
class ShardingConfig:
    """Data parallelism: none, DDP, or FSDP2 (`fully_shard`, one unit per decoder layer)."""

    strategy: str = "none"  # none | ddp | fsdp
    param_dtype: str = "bfloat16"
    reduce_dtype: str = "float32"
    cpu_offload: bool = False
    reshard_after_forward: bool = True
    backend: str = "auto"  # auto (nccl on GPU, gloo on CPU) | nccl | gloo
    # Longest a rank may make no progress (a step, a held-out batch, a checkpoint, one scoring forward) before the
    # run is stopped on every rank and recorded as failed; the process group's own timeout is set a little longer.
    timeout_min: float = 10.0
    # fsdp only. per_layer: the model is built on the meta device and each decoder layer is loaded (or initialised),
    # quantised, given its adapter and sharded before the next one, so a rank never holds more than its shard plus
    # one layer. whole: every rank builds the whole model first, then shards it (the older path).
    load: str = "per_layer"

    def __post_init__(self) -> None:
        check_choice("sharding.strategy", self.strategy, ("none", "ddp", "fsdp"))
        if not self.timeout_min > 0:
            raise ConfigError(f"sharding.timeout_min={self.timeout_min} must be > 0 (minutes, fractions allowed).")
        check_choice("sharding.param_dtype", self.param_dtype, DTYPES)
        check_choice("sharding.reduce_dtype", self.reduce_dtype, DTYPES)
        check_choice("sharding.backend", self.backend, ("auto", "nccl", "gloo"))
        check_choice("sharding.load", self.load, LOAD_CHOICES)
