"""Generated lm-eval task files: they load offline, carry the language tags, and use the project's prompt."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from fixtures.eval.lm import fixture_loader, fixture_records, register_fixture_tasks

from medtune.config import DataConfig
from medtune.data.prompts import render_mcq_prompt
from medtune.eval.tasks import TASKS, build_task_data, record_to_doc, write_task_files


@pytest.fixture
def fixture_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    register_fixture_tasks(monkeypatch)


def test_task_files_load_offline_with_language_tags(tmp_path: Path, fixture_tasks: None) -> None:
    from lm_eval.tasks import TaskManager

    tasks = build_task_data(["fx_ko", "fx_en"], DataConfig(), num_fewshot=1, loader=fixture_loader)
    names = write_task_files(tasks, tmp_path, "letter", num_fewshot=1)
    assert names["fx_ko"] == {"main": "fx_ko", "aux": "fx_ko_gold_text"}
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    assert {"lang_ko", "lang_en", "fx_ko", "fx_en_gold_text"} <= set(manager.all_tasks)
    loaded = manager.load(["lang_ko"])["tasks"]  # the tag resolves to the Korean task only
    assert [getattr(t.config, "task", None) for t in loaded.values()] == ["fx_ko"]
    task = next(iter(loaded.values()))
    doc = task.test_docs()[0]
    assert task.doc_to_text(doc) == render_mcq_prompt(fixture_records("fx_ko", "test")[0])
    assert task.doc_to_choice(doc) == ["A", "B", "C", "D", "E"]  # continuations " A" .. " E"
    assert task.config.fewshot_split == "fewshot" and len(task.fewshot_docs()) == 6


def test_cloze_variant_scores_option_texts(tmp_path: Path, fixture_tasks: None) -> None:
    from lm_eval.tasks import TaskManager

    tasks = build_task_data(["fx_en"], DataConfig(), loader=fixture_loader)
    names = write_task_files(tasks, tmp_path, "cloze", num_fewshot=0)
    assert names["fx_en"]["aux"] == "fx_en_letters"
    task = next(iter(TaskManager(include_path=str(tmp_path), include_defaults=False).load(["fx_en"])["tasks"].values()))
    doc = task.test_docs()[0]
    assert task.doc_to_choice(doc) == list(fixture_records("fx_en", "test")[0].choices)


def test_limit_is_a_seeded_subset(fixture_tasks: None) -> None:
    def ids(seed: int) -> list[str]:
        return [d["id"] for d in build_task_data(["fx_en"], DataConfig(), 8, seed=seed, loader=fixture_loader)[0].docs]

    assert ids(0) == ids(0) and len(ids(0)) == 8 and ids(0) != ids(1)


def test_task_limits_override_limit_for_named_tasks_only(fixture_tasks: None) -> None:
    full = {t.name: len(t.docs) for t in build_task_data(["fx_ko", "fx_en"], DataConfig(), loader=fixture_loader)}
    tasks = build_task_data(["fx_ko", "fx_en"], DataConfig(), None, loader=fixture_loader, task_limits={"fx_en": 5})
    assert {t.name: len(t.docs) for t in tasks} == {"fx_ko": full["fx_ko"], "fx_en": 5}
    same = build_task_data(["fx_en"], DataConfig(), 5, loader=fixture_loader)[0].docs
    assert [d["id"] for d in tasks[1].docs] == [d["id"] for d in same]  # the same seeded subset as limit=5


def test_bad_inputs_name_the_problem(fixture_tasks: None) -> None:
    with pytest.raises(ValueError, match="unknown tasks"):
        build_task_data(["nope"], DataConfig(), loader=fixture_loader)
    with pytest.raises(ValueError, match="6 few-shot examples"):
        build_task_data(["fx_ko"], DataConfig(), num_fewshot=7, loader=fixture_loader)
    record = fixture_records("fx_en", "test")[0]
    with pytest.raises(ValueError, match="kind='open'"):
        record_to_doc(dataclasses.replace(record, kind="open", answer_index=None), "here")
    with pytest.raises(ValueError, match="no few-shot split"):
        build_task_data(["medmcqa"], DataConfig(), num_fewshot=1, loader=fixture_loader)


def test_every_registered_task_names_a_known_data_source() -> None:
    from medtune.data.sources.registry import resolve

    for name, spec in TASKS.items():
        resolve(spec.source)  # raises KeyError for an unknown source or view
        assert spec.language in ("ko", "en"), name


def test_builtin_sample_tasks_from_load_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDTUNE_CACHE_DIR", str(tmp_path / "cache"))
    data_cfg = DataConfig(cache_dir=str(tmp_path / "cache" / "data"))
    tasks = build_task_data(["sample_ko", "sample_en"], data_cfg, num_fewshot=1)
    assert [t.spec.language for t in tasks] == ["ko", "en"]
    assert all(t.docs and t.fewshot_docs for t in tasks)
    assert tasks[0].docs[0]["prompt"].endswith("정답:") and tasks[1].docs[0]["prompt"].endswith("Answer:")
