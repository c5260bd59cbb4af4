"""One save/load interface over the two ways a run checkpoints; the recipe asks for its implementation here.

    store = for_run(cfg.sharding.strategy, dist.is_main)  # FSDP: ShardedCheckpointer, else LocalCheckpointer
    store.save(ckpt_root, step, model, optimizer, scheduler, loop_state, keep)  # every rank calls it
    loop_state = load(path, model, optimizer, scheduler)  # read by the implementation that wrote `path`

A checkpoint is read by the implementation that wrote it, whatever the run's strategy now (a change of
sharding.strategy is refused before anything loads: checkpoint/resume.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from medtune.training.checkpoint.layout import is_sharded
from medtune.training.checkpoint.local import LocalCheckpointer
from medtune.training.checkpoint.sharded import ShardedCheckpointer


class Checkpointer(Protocol):
    """Writes and reads a resumable checkpoint: trainable weights, optimizer, scheduler, RNG and the loop state."""

    def save(
        self,
        ckpt_root: Path,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        loop_state: dict[str, Any],
        keep: int,
    ) -> Path:
        """Write step `step` atomically under ckpt_root, keep the newest `keep`; returns the checkpoint."""
        ...

    def load(
        self, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
    ) -> dict[str, Any]:
        """Restore the checkpoint at `path` into model, optimizer, scheduler and the RNGs; returns the loop state."""
        ...


def for_run(strategy: str, is_main: bool) -> Checkpointer:
    """The implementation a run with sharding.strategy=`strategy` writes with."""
    return ShardedCheckpointer(is_main) if strategy == "fsdp" else LocalCheckpointer(is_main)


def load(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
    """Restore the checkpoint at `path` with the implementation that wrote it; returns the loop state."""
    reader: Checkpointer = ShardedCheckpointer() if is_sharded(path) else LocalCheckpointer()
    return reader.load(path, model, optimizer, scheduler)
