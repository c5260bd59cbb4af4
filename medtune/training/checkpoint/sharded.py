"""The checkpoint of FSDP2: every rank writes its shard of the trainable weights and optimizer state
(torch.distributed.checkpoint), rank 0 the scheduler, every rank's RNG state and the loop state.

    <checkpoint>/{sharded/, scheduler.pt, rng.pt, state.json}
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from medtune.runtime import process_group
from medtune.training.checkpoint import common
from medtune.training.checkpoint.base import Checkpointer, Pending
from medtune.training.checkpoint.layout import SHARDED_DIR, read_state


class ShardedCheckpointer(Checkpointer):
    """torch.distributed.checkpoint for the weights and optimizer; every rank calls save and load."""

    def write(self, pending: Pending, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        """Every rank writes its shard into one directory that rank 0 commits; keep the newest `keep`."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.api import CheckpointException

        final = pending.final
        tmp = final.parent / f"{final.name}.tmp-shared"
        try:
            if self.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            process_group.barrier()
            dcp.save(_sharded_state(model, optimizer), checkpoint_id=str(tmp / SHARDED_DIR))
            if self.is_main:
                common.save_torch(scheduler.state_dict(), tmp / common.SCHEDULER_FILE)
                state = pending.state | {"sharded": True}
                common.commit(tmp, final, state, pending.keep, pending.rng_states)
        except (OSError, RuntimeError, CheckpointException) as err:  # dcp raises CheckpointException on every rank
            raise common.write_failed(tmp, final, err, model, optimizer, remove=self.is_main) from err

    def load(
        self, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
    ) -> dict[str, Any]:
        """Every rank loads its shard; then the scheduler, this rank's RNG and the loop state."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        state = _sharded_state(model, optimizer)
        dcp.load(state, checkpoint_id=str(path / SHARDED_DIR))
        set_model_state_dict(model, state["model"], options=StateDictOptions(strict=False))
        set_optimizer_state_dict(model, optimizer, state["optim"])
        scheduler.load_state_dict(common.load_torch(path / common.SCHEDULER_FILE))
        common.restore_rng(path)
        return read_state(path)


def _sharded_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    weights = {k: v for k, v in get_model_state_dict(model).items() if k in trainable}
    return {"model": weights, "optim": get_optimizer_state_dict(model, optimizer)}
