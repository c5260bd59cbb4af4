"""The two ways a run checkpoints, behind one interface (base.py); the recipe asks for its implementation here.

    store = for_run(cfg.sharding.strategy, dist.is_main)  # FSDP: ShardedCheckpointer, else LocalCheckpointer
    store.save(ckpt_root, step, model, optimizer, scheduler, loop_state, keep)  # every rank calls it
    loop_state = load(path, model, optimizer, scheduler)  # read by the implementation that wrote `path`

A checkpoint is read by the implementation that wrote it, whatever the run's strategy now (a change of
sharding.strategy is refused before anything loads: checkpoint/resume.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medtune.training.checkpoint.base import Checkpointer
from medtune.training.checkpoint.layout import is_sharded
from medtune.training.checkpoint.local import LocalCheckpointer
from medtune.training.checkpoint.sharded import ShardedCheckpointer


def for_run(strategy: str, is_main: bool) -> Checkpointer:
    """The implementation a run with sharding.strategy=`strategy` writes with."""
    return ShardedCheckpointer(is_main) if strategy == "fsdp" else LocalCheckpointer(is_main)


def load(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
    """Restore the checkpoint at `path` with the implementation that wrote it; returns the loop state."""
    reader: Checkpointer = ShardedCheckpointer() if is_sharded(path) else LocalCheckpointer()
    return reader.load(path, model, optimizer, scheduler)
