"""Paired comparisons between two prediction sets: deltas, intervals, McNemar, the table and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from medtune.eval.forgetting import forgetting, forgetting_metrics, format_forgetting, main
from medtune.eval.summary import summarise


def _rows(task: str, language: str, correct: list[bool], ll: float) -> list[dict]:
    return [
        {
            "task": task,
            "id": f"{task}:{i}",
            "language": language,
            "correct": c,
            "n_choices": 4,
            "gold_ll_letter": ll + 0.01 * i,
            "gold_ll_text": 2 * ll,
            "gold": "A",
            "pred": "A" if c else "B",
        }
        for i, c in enumerate(correct)
    ]


def _pair() -> tuple[list[dict], list[dict]]:
    # Korean: the run loses 12 questions and gains none (real forgetting); English: 1 lost, 1 gained.
    base = _rows("kormed_law", "ko", [True] * 30 + [False] * 30, -2.0) + _rows(
        "medqa_4opt", "en", [True, False] * 20, -1
    )
    run_ko = [True] * 18 + [False] * 42
    run_en = [False, False] + [True, False] * 18 + [True, True]
    run = _rows("kormed_law", "ko", run_ko, -2.5) + _rows("medqa_4opt", "en", run_en, -1.0)
    return base, run


def test_forgetting_rows_and_verdicts() -> None:
    base, run = _pair()
    rows = {r["group"]: r for r in forgetting(base, run, n_boot=500)}
    ko, en = rows["lang/ko"], rows["lang/en"]
    assert ko["delta_pp"] == pytest.approx(-20.0) and (ko["b_base_only"], ko["c_run_only"]) == (12, 0)
    assert ko["p_mcnemar"] == pytest.approx(2 * 0.5**12) and ko["significant"]
    assert ko["delta_pp_ci_low"] < -20.0 < ko["delta_pp_ci_high"] < 0.0
    assert ko["gold_ll_letter_delta"] == pytest.approx(-0.5) and ko["gold_ll_letter_significant"]
    assert en["delta_pp"] == pytest.approx(0.0) and not en["significant"] and en["p_mcnemar"] == 1.0
    assert not en["gold_ll_letter_significant"]
    table = format_forgetting(list(rows.values()))
    assert "| lang/en |" in table and "not significant" in table


def test_flat_keys() -> None:
    base, run = _pair()
    flat = forgetting_metrics(forgetting(base, run, n_boot=200))
    for key in ("delta_pp", "delta_pp_ci_low", "delta_pp_ci_high", "p_mcnemar", "gold_ll_text_delta"):
        assert f"forgetting/ko/{key}" in flat and f"forgetting/en/{key}" in flat
    assert "forgetting/kormed_law/delta_pp" in flat  # per task too


def test_summary_pools_languages_but_not_general_probe() -> None:
    base, _ = _pair()
    general = _rows("mmlu_general", "en", [True] * 10, -1.0)
    metrics = summarise(base + general)
    assert metrics["eval/lang/en/n"] == 40 and metrics["eval/mmlu_general/n"] == 10
    assert metrics["eval/lang/ko/acc"] == pytest.approx(0.5)


def test_cli_compares_two_prediction_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base, run = _pair()
    for name, rows in (("a.jsonl", base), ("b.jsonl", run)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    main([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--n-boot", "100"])
    assert "lang/ko" in capsys.readouterr().out


def test_disjoint_sets_are_refused() -> None:
    base, run = _pair()
    for r in run:
        r["id"] += "x"
    with pytest.raises(ValueError, match="share no"):
        forgetting(base, run)


@pytest.mark.parametrize("bad", [float("nan"), float("-inf")])
def test_a_non_finite_log_likelihood_is_not_testable(bad: float) -> None:
    base, run = _pair()
    base[0]["gold_ll_letter"] = bad  # a Korean question whose gold letter could not be scored
    rows = {r["group"]: r for r in forgetting(base, run, n_boot=200)}
    ko = rows["lang/ko"]
    assert math.isnan(ko["gold_ll_letter_p"]) and not ko["gold_ll_letter_significant"]
    assert not ko["gold_ll_letter_testable"] and ko["gold_ll_text_testable"]
    assert ko["significant"] and ko["gold_ll_text_significant"]  # the finite measures keep their verdicts
    assert rows["lang/en"]["gold_ll_letter_testable"]
    flat = forgetting_metrics(list(rows.values()))
    assert (
        flat["forgetting/ko/gold_ll_letter_testable"] == 0.0 and flat["forgetting/ko/gold_ll_letter_significant"] == 0.0
    )
    line = next(x for x in format_forgetting(list(rows.values())).splitlines() if x.startswith("| lang/ko |"))
    assert "n/a not testable" in line and "nan" not in line
    assert line.count(" significant") == 2  # accuracy and gold LL text, not the untestable letter delta


def test_rows_record_their_level_and_bootstrap() -> None:
    base, run = _pair()
    rows = forgetting(base, run, confidence=0.9, n_boot=300, seed=7)
    assert all((r["confidence"], r["bootstrap_samples"], r["bootstrap_seed"]) == (0.9, 300, 7) for r in rows)
    flat = forgetting_metrics(rows)
    assert (flat["forgetting/ko/bootstrap_samples"], flat["forgetting/ko/bootstrap_seed"]) == (300.0, 7.0)
    assert flat["forgetting/ko/confidence"] == 0.9
    table = format_forgetting(rows)
    assert "[90% CI]" in table and "95%" not in table
    assert "300 resamples, seed 7" in table and "p < 0.1;" in table
    with pytest.raises(ValueError, match="cannot be labelled"):
        format_forgetting(rows, confidence=0.95)  # the rows are at 90%: no relabelling
    assert "[97.5% CI]" in format_forgetting(forgetting(base, run, confidence=0.975, n_boot=100))


def _exams(shift_by_exam: dict[str, int], size: int = 20) -> tuple[list[dict], list[dict]]:
    """Base right on every question; the run wrong on `shift` questions of each exam (KorMedMCQA-style ids)."""
    base, run = [], []
    for exam, shift in shift_by_exam.items():
        for q in range(size):
            row = {"task": "kormed_law", "id": f"kormedmcqa:test:{exam}-{q + 1}", "language": "ko", "subject": "doctor"}
            row |= {"n_choices": 4, "gold_ll_letter": -1.0, "gold_ll_text": -2.0, "gold": "A", "pred": "A"}
            base.append({**row, "correct": True})
            run.append({**row, "correct": q >= shift})
    return base, run


def test_cluster_by_exam_resamples_exams_and_says_so() -> None:
    # one exam year loses 10 of 20 questions, the others none: questions within an exam are correlated
    base, run = _exams({"doctor-2020-1": 10, "doctor-2021-1": 0, "doctor-2022-1": 0, "doctor-2023-1": 0})
    naive = forgetting(base, run, n_boot=1000)[0]
    clustered = forgetting(base, run, n_boot=1000, cluster_by="exam")[0]
    assert clustered["n_clusters"] == 4 and clustered["cluster_by"] == "exam" and "n_clusters" not in naive
    assert clustered["delta_pp"] == naive["delta_pp"] == pytest.approx(-12.5)
    width = {name: r["delta_pp_ci_high"] - r["delta_pp_ci_low"] for name, r in (("q", naive), ("c", clustered))}
    assert width["c"] > 1.5 * width["q"]  # the cluster interval admits that one exam carries all of the loss
    assert "forgetting/lang/ko/cluster_by" not in forgetting_metrics([clustered])  # a name, not a metric
    assert "over clusters of questions by exam" in format_forgetting([clustered])
    one = forgetting(base, run, n_boot=100, cluster_by="subject")[0]  # every question is subject "doctor"
    assert math.isnan(one["delta_pp_ci_low"]) and one["n_clusters"] == 1


def test_cluster_by_a_key_the_rows_lack_names_it() -> None:
    base, run = _pair()
    with pytest.raises(ValueError, match=r"eval\.cluster_by=subject: prediction rows have no 'subject'"):
        forgetting(base, run, cluster_by="subject")
    with pytest.raises(ValueError, match=r"eval.cluster_by=exam: question 'kormed_law:0' .* names no exam"):
        forgetting(base, run, cluster_by="exam")
