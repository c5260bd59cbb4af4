"""The checkpoint interface: a run's strategy picks the writer, a checkpoint's layout picks the reader."""

from __future__ import annotations

from pathlib import Path

import torch

from medtune.training.checkpoint import store
from medtune.training.checkpoint.local import LocalCheckpointer
from medtune.training.checkpoint.sharded import ShardedCheckpointer


def _toy() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def test_the_strategy_picks_the_writer() -> None:
    assert isinstance(store.for_run("fsdp", is_main=True), ShardedCheckpointer)
    for strategy in ("none", "ddp"):
        writer = store.for_run(strategy, is_main=False)
        assert isinstance(writer, LocalCheckpointer) and writer.is_main is False


def test_a_checkpoint_is_read_by_what_wrote_it(tmp_path: Path) -> None:
    model, opt, sched = _toy()
    saved = store.for_run("none", is_main=True).save(tmp_path, 5, model, opt, sched, {"data_position": {}}, keep=1)
    other, opt2, sched2 = _toy()
    assert store.load(saved, other, opt2, sched2)["step"] == 5
    assert torch.equal(other.weight, model.weight)


def test_a_rank_that_is_not_main_writes_nothing(tmp_path: Path) -> None:
    """DDP: every rank holds the same weights, so only rank 0 writes; the others are told where it went."""
    model, opt, sched = _toy()
    root = tmp_path / "checkpoints"
    path = LocalCheckpointer(is_main=False).save(root, 1, model, opt, sched, {}, keep=1)
    assert path == root / "step_000001" and not root.exists()
