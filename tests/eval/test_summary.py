"""Per-task and per-language accuracy tables: the level they print is the level their intervals were computed at."""

from __future__ import annotations

import pytest

from medtune.eval.stats import wilson_interval
from medtune.eval.summary import format_table, summarise


def _rows(n_right: int, n: int) -> list[dict]:
    return [
        {"task": "medqa_4opt", "id": f"q{i}", "language": "en", "correct": i < n_right, "n_choices": 4,
         "gold_ll_letter": -1.0, "gold_ll_text": -5.0}
        for i in range(n)
    ]  # fmt: skip


@pytest.mark.parametrize(("confidence", "label"), [(0.9, "90%"), (0.95, "95%"), (0.975, "97.5%"), (0.999, "99.9%")])
def test_table_prints_the_level_it_was_computed_at(confidence: float, label: str) -> None:
    metrics = summarise(_rows(30, 40), "eval", confidence)
    assert metrics["eval/lang/en/confidence"] == confidence  # recorded beside the interval
    assert (metrics["eval/lang/en/acc_ci_low"], metrics["eval/lang/en/acc_ci_high"]) == wilson_interval(
        30, 40, confidence
    )
    header = format_table(metrics, "eval").splitlines()[0]
    assert f"| {label} CI |" in header
    if label != "95%":
        assert "95%" not in header  # the old header said 95% whatever eval.confidence was


def test_table_refuses_a_level_its_metrics_were_not_computed_at() -> None:
    metrics = summarise(_rows(30, 40), "base/eval", 0.9)
    with pytest.raises(ValueError, match="cannot be labelled"):
        format_table(metrics, "base/eval", confidence=0.95)
    legacy = {k: v for k, v in metrics.items() if not k.endswith("/confidence")}  # a summary from before the keys
    assert "| 90% CI |" in format_table(legacy, "base/eval", confidence=0.9)
    with pytest.raises(ValueError, match="do not record"):
        format_table(legacy, "base/eval")
