"""The checkpoint interface's shared `save`: what every implementation is handed, and what it must implement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from medtune.training.checkpoint import common
from medtune.training.checkpoint.base import Checkpointer, Pending
from medtune.training.checkpoint.layout import step_dir


class _Recording(Checkpointer):
    def __init__(self) -> None:
        super().__init__(is_main=True)
        self.pending: list[Pending] = []

    def write(self, pending: Pending, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> None:
        self.pending.append(pending)

    def load(self, path: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> dict[str, Any]:
        return {}


def test_save_hands_the_step_directory_the_loop_state_and_every_ranks_rng(tmp_path: Path) -> None:
    writer, model = _Recording(), torch.nn.Linear(2, 2)
    torch.manual_seed(7)
    expected_rng = common.rng_state()["torch"]
    path = writer.save(tmp_path, 12, model, None, None, {"data_position": {"batch": 3}}, keep=2)
    (pending,) = writer.pending
    assert path == pending.final == step_dir(tmp_path, 12)
    assert pending.state == {"data_position": {"batch": 3}, "step": 12} and pending.keep == 2
    assert len(pending.rng_states) == 1  # one process: one rank's state
    assert torch.equal(pending.rng_states[0]["torch"], expected_rng)


def test_an_implementation_without_write_or_load_is_refused() -> None:
    class NoWrite(Checkpointer):
        def load(self, path: Path, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
            return {}

    with pytest.raises(TypeError, match="write"):
        NoWrite()
