"""The scorer's batches: longest first, within the row and token limits, every prompt exactly once."""

from __future__ import annotations

import pytest

from medtune.eval.logprobs import length_batches


def test_batches_fill_a_token_budget_longest_first() -> None:
    lengths = [30, 100, 60, 61, 100, 5, 250, 29]
    batches = length_batches(lengths, None, 200)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches == [[6], [1, 4], [3, 2, 0], [7, 5]]  # 250 alone (over the budget); then 2 x 100; 3 x 61; 2 x 29
    for batch in batches:
        assert all(lengths[i] <= lengths[batch[0]] for i in batch)
        assert len(batch) == 1 or len(batch) * lengths[batch[0]] <= 200


def test_rows_cap_and_budget_together() -> None:
    lengths = [10] * 7
    assert length_batches(lengths, 3, None) == [[0, 1, 2], [3, 4, 5], [6]]  # equal lengths keep their order
    assert length_batches(lengths, 3, 20) == [[0, 1], [2, 3], [4, 5], [6]]  # the budget binds first
    assert length_batches(lengths, 2, 1000) == [[0, 1], [2, 3], [4, 5], [6]]  # the rows bind first
    assert length_batches([], None, 8) == []


def test_no_limit_at_all_is_refused() -> None:
    with pytest.raises(ValueError, match="batch_size or max_tokens"):
        length_batches([3, 4], None, None)
