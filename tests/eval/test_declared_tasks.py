"""A declared multiple-choice dataset is an lm-eval task; its rows pool per language with any other language."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from medtune.config import ConfigError, DataConfig, compose
from medtune.eval.forgetting import forgetting, forgetting_metrics
from medtune.eval.summary import summarise
from medtune.eval.tasks import TASKS, all_tasks, build_task_data, write_task_files
from medtune.runtime.preflight import check_tasks

ROWS = [{"id": f"q{i}", "q": f"質問{i}?", "o": ["あ", "い", "う"], "a": "ABC"[i % 3]} for i in range(10)]


@pytest.fixture
def cfg(tmp_path: Path) -> DataConfig:
    (tmp_path / "exam.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS))
    (tmp_path / "notes.jsonl").write_text(json.dumps({"question": "何?", "answer": "これ"}, ensure_ascii=False) + "\n")
    exam = {"format": "mcq", "language": "ja", "path": "exam.jsonl", "holdout": {"fraction": 0.3, "seed": 0},
            "columns": {"id": "id", "question": "q", "options": "o", "answer": "a"}}  # fmt: skip
    trivia = {**exam, "domain": "general"}
    notes = {"format": "qa", "language": "ja", "path": "notes.jsonl"}
    words = {"ja": {"answer": "答え"}}
    return DataConfig(data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), prompt_words=words,
                      datasets={"exam": exam, "trivia": trivia, "notes": notes})  # fmt: skip


def test_a_declared_mcq_set_is_a_task_with_its_own_fewshot(cfg: DataConfig, tmp_path: Path) -> None:
    tasks = all_tasks(cfg)
    assert set(tasks) - set(TASKS) == {"exam", "trivia"}  # the qa set is no task
    spec = tasks["exam"]
    assert (spec.language, spec.source, spec.split, spec.fewshot, spec.domain) == ("ja", "exam", "test", "exam:train",
                                                                                      "medical")  # fmt: skip
    (task,) = build_task_data(["exam"], cfg, num_fewshot=2)
    assert len(task.docs) == 3 and len(task.fewshot_docs) == 7
    assert not {d["id"].split(":")[-1] for d in task.docs} & {d["id"].split(":")[-1] for d in task.fewshot_docs}
    assert task.docs[0]["prompt"].startswith("Question: 質問") and task.docs[0]["prompt"].endswith("\n答え:")
    write_task_files([task], tmp_path / "tasks", "letter", num_fewshot=2)
    main = yaml.safe_load((tmp_path / "tasks" / "exam.yaml").read_text())
    assert main["tag"] == ["lang_ja"] and main["fewshot_split"] == "fewshot"


def row(task: str, qid: str, language: str, correct: bool, domain: str | None = None) -> dict:
    out = {"task": task, "id": qid, "language": language, "correct": correct, "n_choices": 4}
    out |= {"gold_ll_letter": -1.0 - correct, "gold_ll_text": -2.0}
    return out | ({"domain": domain} if domain else {})


def test_every_language_pools_and_a_general_set_stays_apart() -> None:
    base = [row("exam", f"j{i}", "ja", i < 2, "medical") for i in range(4)]
    base += [row("trivia", "t0", "ja", False, "general"), row("sample_ko", "k0", "ko", True)]
    base += [row("sample_en", "e0", "en", False), row("vi_exam", "v0", "vi", True, "medical")]
    tuned = [{**r, "correct": not r["correct"]} for r in base]
    metrics = summarise(tuned)
    assert metrics["eval/lang/ja/n"] == 4 and metrics["eval/lang/ja/acc"] == 0.5  # trivia is not in the pool
    assert {k.split("/")[2] for k in metrics if k.startswith("eval/lang/")} == {"ja", "ko", "en", "vi"}
    assert metrics["eval/trivia/acc"] == 1.0
    flat = forgetting_metrics(forgetting(base, tuned, n_boot=200))
    assert flat["forgetting/ja/n"] == 4 and flat["forgetting/vi/delta_pp"] == -100.0
    assert flat["forgetting/en/delta_pp"] == 100.0 and "forgetting/trivia/delta_pp" in flat


def test_preflight_names_a_task_that_cannot_be(cfg: DataConfig) -> None:
    run = compose([])
    run.data = cfg
    run.eval.tasks = ["sample_ko", "notes"]
    with pytest.raises(ConfigError, match=r"eval\.tasks names \{'notes': 'qa'\}: only a multiple-choice dataset"):
        check_tasks(run)
    run.eval.tasks = ["exams"]
    with pytest.raises(ConfigError, match=r"unknown tasks \['exams'\] \(exams -> exam\?\)"):
        check_tasks(run)
    run.eval.tasks = ["exam"]
    check_tasks(run)
    run.data.datasets["exam"].holdout = None  # no test split any more
    with pytest.raises(ConfigError, match=r"eval\.tasks \(exam\): exam has no split 'test'; its splits: \['train'\]"):
        check_tasks(run)
