"""The scorer's batches: longest first, within the row and token limits, every prompt exactly once, and under a
token budget the cheapest cuts (padded tokens plus a fixed cost per forward)."""

from __future__ import annotations

import itertools
import random

import pytest

from medtune.eval.logprobs import FORWARD_TOKENS, length_batches


def _cost(lengths: list[int], batches: list[list[int]]) -> int:
    return sum(len(b) * lengths[b[0]] + FORWARD_TOKENS for b in batches)


def _valid(lengths: list[int], batches: list[list[int]], rows: int | None, tokens: int | None) -> bool:
    flat = [i for b in batches for i in b]
    assert flat == sorted(range(len(lengths)), key=lambda k: (-lengths[k], k))  # longest first, each once
    for b in batches:
        assert rows is None or len(b) <= rows
        assert tokens is None or len(b) == 1 or len(b) * lengths[b[0]] <= tokens
    return True


def test_rows_alone_fill_each_batch_in_order() -> None:
    lengths = [10, 30, 10, 20, 10, 10, 10]
    assert length_batches(lengths, 3, None) == [[1, 3, 0], [2, 4, 5], [6]]  # equal lengths keep their order
    assert length_batches([], 4, None) == []


def test_padding_that_costs_more_than_a_forward_is_cut_off() -> None:
    """One long prompt among short ones gets a forward of its own; near-equal ones share one."""
    assert length_batches([1000] + [100] * 7, None, 8192) == [[0], list(range(1, 8))]
    assert length_batches([110] + [100] * 7, None, 8192) == [list(range(8))]
    assert length_batches([9000, 5, 5], None, 8192) == [[0], [1, 2]]  # over the budget: alone
    assert sorted(map(len, length_batches([100] * 5, 2, 8192))) == [1, 2, 2]  # the row cap binds


def test_cuts_are_the_cheapest_of_all_contiguous_ones() -> None:
    """Against every partition of the sorted prompts into contiguous batches within the limits (brute force)."""
    rng = random.Random(0)
    for _ in range(40):
        lengths = [rng.choice([rng.randint(20, 300), rng.randint(1000, 4000)]) for _ in range(rng.randint(1, 9))]
        rows, tokens = rng.choice([None, 3]), rng.choice([2000, 8192])
        got = length_batches(lengths, rows, tokens)
        assert _valid(lengths, got, rows, tokens)
        order = sorted(range(len(lengths)), key=lambda k: (-lengths[k], k))
        best = None
        for mask in itertools.product([0, 1], repeat=len(order) - 1):
            cuts = [0, *[i + 1 for i, m in enumerate(mask) if m], len(order)]
            batches = [order[a:b] for a, b in itertools.pairwise(cuts)]
            ok = all((rows is None or len(b) <= rows) and (len(b) == 1 or len(b) * lengths[b[0]] <= tokens)
                     for b in batches)  # fmt: skip
            if ok and (best is None or _cost(lengths, batches) < best):
                best = _cost(lengths, batches)
        assert _cost(lengths, got) == best


def test_no_limit_at_all_is_refused() -> None:
    with pytest.raises(ValueError, match="batch_size or max_tokens"):
        length_batches([3, 4], None, None)
