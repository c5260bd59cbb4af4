"""The one save/load interface of a checkpoint, and the part of saving both implementations share.

    class MyCheckpointer(Checkpointer):
        def write(self, pending, model, optimizer, scheduler): ...  # the files of one step (a Pending)
        def load(self, path, model, optimizer, scheduler): ...                            # returns the loop state

`save` is the same for every implementation: every rank's RNG state is gathered (in rank order: LoRA dropout
draws differ by rank), the implementation writes step `step` into its directory, and every rank waits for it.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medtune.runtime import process_group
from medtune.training.checkpoint import common
from medtune.training.checkpoint.layout import step_dir


@dataclass(frozen=True)
class Pending:
    """One step's checkpoint about to be written: its directory, the loop state (with its step), how many
    checkpoints to keep, and every rank's RNG state in rank order."""

    final: Path
    state: dict[str, Any]
    keep: int
    rng_states: list[dict[str, Any]]


class Checkpointer(abc.ABC):
    """Writes and reads a resumable checkpoint: trainable weights, optimizer, scheduler, RNG and the loop state.
    Every rank calls `save` and `load`; `is_main` says whether this rank owns the checkpoint directory."""

    def __init__(self, is_main: bool = True) -> None:
        self.is_main = is_main

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
        """Write step `step` atomically under ckpt_root and keep the newest `keep`; returns the checkpoint."""
        rng_states = process_group.all_gather_objects(common.rng_state())  # rank order
        final = step_dir(ckpt_root, step)
        self.write(Pending(final, loop_state | {"step": step}, keep, rng_states), model, optimizer, scheduler)
        process_group.barrier()
        return final

    @abc.abstractmethod
    def write(self, pending: Pending, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        """This rank's part of the checkpoint `pending.final`, committed atomically by the directory's owner."""

    @abc.abstractmethod
    def load(
        self, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
    ) -> dict[str, Any]:
        """Restore the checkpoint at `path` into model, optimizer, scheduler and the RNGs; returns the loop state."""
