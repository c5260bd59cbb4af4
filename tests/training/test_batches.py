"""DataPipeline on N ranks: the micro-batches of one process, spread over ranks, with equal counts everywhere."""

from __future__ import annotations

import pytest
import torch

from medtune.training.batches import DataPipeline


def _batch(tag: int, n_labels: int = 3) -> dict[str, torch.Tensor]:
    """A one-row micro-batch whose first token names it; `n_labels` label tokens."""
    ids = torch.full((1, 4), tag)
    labels = torch.full((1, 4), -100)
    labels[0, :n_labels] = 1
    return {
        "input_ids": ids,
        "position_ids": torch.arange(4)[None],
        "document_ids": torch.zeros(1, 4, dtype=torch.long),
        "labels": labels.clone(),
        "shift_labels": labels,
    }


def _pipeline(n_train: int, n_heldout: int, rank: int, world: int, eval_batches: int = 20) -> DataPipeline:
    def make_batches(examples: list[dict], epoch: int) -> list[dict[str, torch.Tensor]]:
        return [_batch(100 * epoch + e["i"]) for e in examples]  # epoch e's batch i is tagged 100e + i

    train = [{"i": i} for i in range(n_train)]
    heldout = [{"i": i} for i in range(n_heldout)]
    return DataPipeline(make_batches, train, heldout, rank, world, eval_batches)


def _tags(stream, n: int) -> list[tuple[int, dict[str, int]]]:
    return [(int(b["input_ids"][0, 0]), pos) for b, pos in (next(stream) for _ in range(n))]


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("n_train", [1, 5, 6, 7])
def test_ranks_share_the_one_process_stream(world: int, n_train: int) -> None:
    """Round k of N ranks is micro-batches kN..kN+N-1 of one process, across epoch ends, with one position."""
    rounds = 4
    single = _tags(_pipeline(n_train, 0, 0, 1).train_stream({"epoch": 0, "batch": 0}), rounds * world)
    per_rank = [
        _tags(_pipeline(n_train, 0, r, world).train_stream({"epoch": 0, "batch": 0}), rounds) for r in range(world)
    ]
    for k in range(rounds):
        for r in range(world):
            assert per_rank[r][k][0] == single[k * world + r][0]
            assert per_rank[r][k][1] == single[k * world + world - 1][1]  # the position after the whole round


def test_resumed_stream_continues_where_the_round_ended() -> None:
    world, n_train = 2, 5
    first = [_pipeline(n_train, 0, r, world).train_stream({"epoch": 0, "batch": 0}) for r in range(world)]
    for stream in first:
        _tags(stream, 3)
    position = _tags(first[0], 1)[0][1]  # after round 4 (global batches 6 and 7: epoch 1, batches 1-2)
    assert position == {"epoch": 1, "batch": 3}
    resumed = [_tags(_pipeline(n_train, 0, r, world).train_stream(position), 1)[0][0] for r in range(world)]
    assert resumed == [103, 104]


@pytest.mark.parametrize("n_heldout", [1, 2, 3, 5])
@pytest.mark.parametrize("world", [2, 3])
def test_heldout_counts_are_equal_and_cover_the_one_process_rows(n_heldout: int, world: int) -> None:
    single = _pipeline(4, n_heldout, 0, 1).heldout_batches()
    shares = [_pipeline(4, n_heldout, r, world).heldout_batches() for r in range(world)]
    assert len({len(s) for s in shares}) == 1  # every rank runs the same number of forwards
    assert len(shares[0]) == -(-n_heldout // world)
    counted = sorted(int(b["input_ids"][0, 0]) for s in shares for b in s if int(b["n_label_tokens"]) > 0)
    assert counted == sorted(int(b["input_ids"][0, 0]) for b in single)
    assert sum(int(b["n_label_tokens"]) for s in shares for b in s) == sum(int(b["n_label_tokens"]) for b in single)
    for share in shares:
        for b in share:
            if int(b["n_label_tokens"]) == 0:  # the filler: nothing to count, a real forward to run
                assert (b["shift_labels"] == -100).all() and int(b["n_useful_tokens"]) == 0


def test_heldout_is_capped_in_all_not_per_rank() -> None:
    shares = [_pipeline(4, 10, r, 2, eval_batches=3).heldout_batches() for r in range(2)]
    assert [len(s) for s in shares] == [2, 2]
    assert sum(int(b["n_label_tokens"]) > 0 for s in shares for b in s) == 3


def test_empty_training_mix_is_an_error() -> None:
    with pytest.raises(ValueError, match="no micro-batches"):
        next(_pipeline(0, 0, 0, 2).train_stream({"epoch": 0, "batch": 0}))


def test_passes_over_the_data_are_counted_and_warned(caplog: pytest.LogCaptureFixture) -> None:
    from medtune.config import compose
    from medtune.training.batches import _say_what_training_reads

    cfg = compose(["trainer.max_steps=7", "trainer.micro_batch_size=1", "trainer.grad_accum_steps=2"])
    pipeline = _pipeline(5, 0, 0, 2)  # 5 micro-batches per pass; 7 steps x 2 accumulated x 2 ranks = 28
    with caplog.at_level("WARNING", logger="medtune.data"):
        _say_what_training_reads(cfg, pipeline, world_size=2)
    assert pipeline.report["data/epochs_planned"] == pytest.approx(28 / 5)
    assert pipeline.report["data/micro_batches_per_epoch"] == 5
    assert "makes 5.60 passes over the training set" in caplog.text and "trainer.max_steps=1 is one pass" in caplog.text
    assert pipeline.epochs(0, {"epoch": 2, "batch": 3}) == pytest.approx(2.6)


def test_a_micro_batch_larger_than_the_set_is_said(caplog: pytest.LogCaptureFixture) -> None:
    from medtune.config import compose
    from medtune.training.batches import _say_what_training_reads

    cfg = compose(["trainer.max_steps=1", "trainer.micro_batch_size=100000"])
    with caplog.at_level("WARNING", logger="medtune.data"):
        _say_what_training_reads(cfg, _pipeline(3, 0, 0, 1), world_size=1)
    assert "trainer.micro_batch_size=100000 but the training set makes only 3 rows" in caplog.text


def test_epoch_progress_does_not_repack_epoch_zero() -> None:
    """train/epoch is logged every few steps: past epoch 0 it must not rebuild epoch 0's batches to count them."""
    from medtune.training.batches import DataPipeline

    built = []

    def make(examples: list, epoch: int) -> list[dict]:
        built.append(epoch)
        return [{"i": i} for i in range(5)]

    pipeline = DataPipeline(make, [{}], [], rank=0, world_size=1, eval_batches=1)
    assert pipeline.epochs(10) == 2.0
    for epoch in (1, 2):
        pipeline.all_batches(epoch)
        assert pipeline.epochs(0, {"epoch": epoch, "batch": 2}) == epoch + 0.4
    assert built == [0, 1, 2]
