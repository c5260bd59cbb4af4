"""The checkpoint of one process or of DDP: rank 0 writes every file, since every rank holds the same weights.

    <checkpoint>/{trainable.pt, optimizer.pt, scheduler.pt, rng.pt, state.json}

Only trainable tensors (the adapter) are saved: the frozen base is rebuilt from its config, which keeps a checkpoint
of a 4B QLoRA run to megabytes. rng.pt holds every rank's RNG state (LoRA dropout draws differ by rank).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from medtune.training.checkpoint import common
from medtune.training.checkpoint.base import Checkpointer, Pending
from medtune.training.checkpoint.layout import read_state

TRAINABLE_FILE = "trainable.pt"
OPTIMIZER_FILE = "optimizer.pt"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (LoRA adapters), by name, on CPU."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


class LocalCheckpointer(Checkpointer):
    """Whole-tensor files from rank 0; every rank calls save (the RNG states are gathered) and load."""

    def write(self, pending: Pending, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        """Rank 0 writes every file: every rank holds the same weights."""
        if not self.is_main:
            return
        final = pending.final
        tmp = final.parent / f"{final.name}.tmp-{os.getpid()}"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            common.save_torch(trainable_state(model), tmp / TRAINABLE_FILE)
            common.save_torch(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
            common.save_torch(scheduler.state_dict(), tmp / common.SCHEDULER_FILE)
            common.commit(tmp, final, pending.state, pending.keep, pending.rng_states)
        except (OSError, RuntimeError) as err:  # torch's zip writer reports a full disk as RuntimeError
            raise common.write_failed(tmp, final, err, model, optimizer) from err

    def load(
        self, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
    ) -> dict[str, Any]:
        """Restore trainable weights, optimizer, scheduler and RNG from `path`; returns the loop state."""
        trainable = common.load_torch(path / TRAINABLE_FILE)
        params = dict(model.named_parameters())
        missing = sorted(set(trainable) - set(params))
        if missing:
            raise KeyError(f"checkpoint {path} has tensors the model lacks (was lora config changed?): {missing[:3]}")
        with torch.no_grad():
            for name, value in trainable.items():
                params[name].copy_(value.to(params[name].device, params[name].dtype))
        optimizer.load_state_dict(common.load_torch(path / OPTIMIZER_FILE))
        scheduler.load_state_dict(common.load_torch(path / common.SCHEDULER_FILE))
        common.restore_rng(path)
        return read_state(path)
