"""The base-score cache under concurrent sweep jobs: scored once, never half a file, never a failed evaluation."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from fixtures import cache_writers
from fixtures.race import race

from medtune.eval.base_cache import score_base

TRIALS = 20


@pytest.mark.timeout(120)
def test_two_jobs_scoring_one_base_at_once(tmp_path: Path) -> None:
    """Two one-process jobs reach the base scoring together: one scores, the other waits and reuses its file."""
    result = race(
        cache_writers.base_scores_writer,
        tmp_path,
        trials=TRIALS,
        reader=cache_writers.base_scores_reader,
        warmup=cache_writers.import_base_cache,
    )
    assert result.errors == []  # the old fixed `predictions.jsonl.tmp` raised FileNotFoundError here
    assert result.bad_reads == []  # ... and published files mixing both writers' lines
    assert result.complete_reads > 0
    for trial in range(TRIALS):
        entry = cache_writers.base_cache(tmp_path / f"trial_{trial:03d}")
        cached = (entry / "predictions.jsonl").read_bytes()
        winner = next(i for i in range(2) if cached == cache_writers.rows_text(i))
        # both jobs compare their adapter with the same base rows: the second did not score again
        for job in range(2):
            assert result.returned[(trial, job)] == {"writers": [winner], "n": cache_writers.BASE_ROWS}
        assert sorted(p.name for p in entry.iterdir()) == ["predictions.jsonl"]  # no temporary left behind


def test_an_unwritable_cache_costs_a_rescore_not_the_evaluation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "eval_base"
    blocked.write_text("a file where the cache folder should be")
    score = functools.partial(cache_writers.fake_score, 0)
    rows = score_base(object(), score, tmp_path / "run" / "base", blocked / "key", 8, cache_writers.OneProcess())
    assert len(rows) == cache_writers.BASE_ROWS
    assert "base model scores not cached" in caplog.text
