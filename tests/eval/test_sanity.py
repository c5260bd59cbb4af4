"""The broken-evaluation checks: identical letter logits, one letter everywhere, below the chance floor."""

from __future__ import annotations

import logging

import pytest

from medtune.eval.sanity import EvalSanityError, check_predictions, problems


def _rows(n: int, pred: str | None = None, lls: list[float] | None = None, correct_every: int = 4) -> list[dict]:
    rows = []
    for i in range(n):
        gold = "ABCD"[i % 4]
        p = pred or "ABCD"[(i * 3) % 4]
        rows.append(
            {
                "task": "t",
                "gold": gold,
                "pred": p,
                "correct": i % correct_every == 0 if correct_every else False,
                "n_choices": 4,
                "letter_lls": lls or [-1.0 - 0.1 * j for j in range(4)],
            }
        )
    return rows


def test_healthy_predictions_pass() -> None:
    assert problems(_rows(40)) == []
    assert check_predictions(_rows(40), "error", "x") == []


def test_identical_letter_logits_stop_the_evaluation() -> None:
    with pytest.raises(EvalSanityError, match="same log-likelihood"):
        check_predictions(_rows(5, lls=[-2.0, -2.0, -2.0, -2.0]), "error", "base")


def test_one_letter_everywhere_needs_enough_questions() -> None:
    assert any("predicts 'A'" in p for _, p in problems(_rows(20, pred="A")))
    assert problems(_rows(19, pred="A")) == []  # too few questions to call it


def test_one_letter_collapse_stops_the_base_but_only_warns_for_an_adapter(caplog: pytest.LogCaptureFixture) -> None:
    """A fine-tuned small model may collapse onto one letter: a finding about training, not a broken eval."""
    with pytest.raises(EvalSanityError, match="predicts 'C'"):
        check_predictions(_rows(30, pred="C"), "error", "base")
    with caplog.at_level(logging.ERROR, logger="medtune.eval.sanity"):
        found = check_predictions(_rows(30, pred="C"), "error", "adapter")
    assert any("predicts 'C'" in p for p in found) and "predicts 'C'" in caplog.text


def test_somewhat_below_chance_warns_far_below_stops(caplog: pytest.LogCaptureFixture) -> None:
    """21% on 1,273 four-option questions (the real 270M base on MedQA) warns; 0% stops."""
    rows = [dict(r, correct=i < 267) for i, r in enumerate(_rows(1273, correct_every=0))]  # 267/1273 = 21.0%
    with caplog.at_level(logging.ERROR, logger="medtune.eval.sanity"):
        found = check_predictions(rows, "error", "base")
    assert any("below the random-guess floor" in p for p in found)
    with pytest.raises(EvalSanityError, match="random-guess floor"):
        check_predictions(_rows(200, correct_every=0), "error", "base")


def test_below_chance_floor() -> None:
    assert any("below the random-guess floor" in p for _, p in problems(_rows(80, correct_every=0)))
    with pytest.raises(EvalSanityError, match="random-guess floor"):
        check_predictions(_rows(80, correct_every=0), "error", "adapter")
    assert problems(_rows(10, correct_every=0)) == []  # 0/10 is still compatible with chance


def test_warn_mode_logs_loudly_and_off_mode_is_silent(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="medtune.eval.sanity"):
        found = check_predictions(_rows(30, pred="C"), "warn", "adapter")
    assert found and "sanity check for 'adapter'" in caplog.text
    assert check_predictions(_rows(30, pred="C"), "off", "adapter") == []
