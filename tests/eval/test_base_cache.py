"""The base-score cache under concurrent sweep jobs: scored once, never half a file, never a failed evaluation."""

from __future__ import annotations

import functools
import json
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
        assert sorted(p.name for p in entry.iterdir()) == ["entry.json", "predictions.jsonl"]  # no temporary left


def test_an_unwritable_cache_costs_a_rescore_not_the_evaluation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "eval_base"
    blocked.write_text("a file where the cache folder should be")
    score = functools.partial(cache_writers.fake_score, 0)
    rows = score_base(object(), score, tmp_path / "run" / "base", blocked / "key", 8, cache_writers.OneProcess())
    assert len(rows) == cache_writers.BASE_ROWS
    assert "base model scores not cached" in caplog.text


def _scorer(calls: list[int], n: int = 10):
    def score(model: object, out_dir: Path) -> list[dict]:
        calls.append(1)
        rows = [{"task": "fx", "id": f"q{i}", "correct": i % 2 == 0, "choice_lls": [-1.5, -0.25]} for i in range(n)]
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return rows

    return score


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        ("lines lost", "does not match the checksum in entry.json"),
        ("torn line", "does not match the checksum in entry.json"),
        ("a value changed", "does not match the checksum in entry.json"),
        ("cached before entry.json, lines lost", "5 rows for the 10 questions asked"),
        ("cached before entry.json, torn line", "line 4 of predictions.jsonl is torn"),
    ],
)
def test_a_damaged_entry_is_scored_again_and_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str, why: str
) -> None:
    """Issue 32, item 5: an entry with lines missing was reused (base n 5 against the adapter's 10) and a torn line
    failed every later run with a JSONDecodeError naming no file."""
    entry, calls, asked = tmp_path / "eval_base" / "key", [], [f"q{i}" for i in range(10)]

    def run(job: str) -> list[dict]:
        out = tmp_path / job / "base"
        return score_base(object(), _scorer(calls), out, entry, 8, cache_writers.OneProcess(), asked)

    assert len(run("first")) == 10 and len(run("second")) == 10 and len(calls) == 1  # scored once, then reused
    lines = (entry / "predictions.jsonl").read_text().splitlines(keepends=True)
    if damage.startswith("cached before"):
        (entry / "entry.json").unlink()
    if damage.endswith("lines lost"):
        (entry / "predictions.jsonl").write_text("".join(lines[:5]))
    elif damage.endswith("torn line"):
        (entry / "predictions.jsonl").write_text("".join(lines[:3]) + lines[3][:20])
    else:
        (entry / "predictions.jsonl").write_text("".join(lines).replace("-0.25", "-0.5", 1))
    caplog.clear()
    rows = run("third")
    assert len(rows) == 10 and len(calls) == 2  # scored again
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(entry) in warnings[0] and why in warnings[0], warnings
    assert (entry / "predictions.jsonl").read_text() == "".join(lines)  # replaced by a whole one
    assert len(run("fourth")) == 10 and len(calls) == 2  # and reused again
