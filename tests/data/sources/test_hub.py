"""Hub loading by id, with `datasets.load_dataset` mocked at the boundary (no network)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import FIXTURES as TEST_FIXTURES

from medtune.config import DataConfig
from medtune.data import load_records, prepare

datasets = pytest.importorskip("datasets")  # the GPU image has no datasets package

FIXTURES = TEST_FIXTURES / "data"


def kormed_row(year: int, period: int, q: int, answer: int) -> dict:
    return {"subject": "x", "year": year, "period": period, "q_number": q, "question": f"문제 {year}-{period}-{q}?",
            "A": "가", "B": "나", "C": "다", "D": "라", "E": "마", "answer": answer, "cot": ""}  # fmt: skip


HUB = {
    ("sean0042/KorMedMCQA", "doctor", "dev"): [kormed_row(2021, 1, 3, 5)],
    ("sean0042/KorMedMCQA", "doctor", "test"): [kormed_row(2023, 1, 4, 1), kormed_row(2023, 2, 4, 2)],
    ("GBaker/MedQA-USMLE-4-options-hf", None, "test"): [
        {
            "id": "q7",
            "sent1": "Which drug?",
            "sent2": "",
            "ending0": "a",
            "ending1": "b",
            "ending2": "c",
            "ending3": "d",
            "label": 2,
        }
    ],
    ("openlifescienceai/medmcqa", None, "validation"): [
        {
            "id": "m1",
            "question": "Which?",
            "opa": "w",
            "opb": "x",
            "opc": "y",
            "opd": "z",
            "cop": 0,
            "subject_name": "Anatomy",
        }
    ],
    ("openlifescienceai/medmcqa", None, "train"): [
        {
            "id": "m2",
            "question": "Why?",
            "opa": "w",
            "opb": "x",
            "opc": "y",
            "opd": "z",
            "cop": 3,
            "subject_name": "Anatomy",
        }
    ],
    ("cais/mmlu", "all", "validation"): [
        {"question": "Q1?", "subject": "anatomy", "choices": ["a", "b", "c", "d"], "answer": 1},
        {"question": "Q2?", "subject": "anatomy", "choices": ["a", "b", "c", "d"], "answer": 3},
    ],
    ("bigbio/pubmed_qa", "pubmed_qa_labeled_fold0_source", "train"): [
        {"QUESTION": "Does A work?", "CONTEXTS": ["ctx"], "final_decision": "no", "pubid": 5}
    ],
    ("bigbio/pubmed_qa", "pubmed_qa_labeled_fold0_source", "validation"): [
        {"QUESTION": "Does B work?", "CONTEXTS": ["ctx"], "final_decision": "maybe", "pubid": 6}
    ],
    ("HAERAE-HUB/KMMLU", "Criminal-Law", "test"): [
        {"question": "형법?", "answer": 4, "A": "a", "B": "b", "C": "c", "D": "d", "Category": "Criminal Law"}
    ],
}


@pytest.fixture
def hub_cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DataConfig:
    calls = []

    def fake_load_dataset(path: str, name: str | None = None, split: str | None = None, **kwargs):
        calls.append((path, name, split))
        return HUB.get((path, name, split), [])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = DataConfig(data_dir=str(FIXTURES), cache_dir=str(tmp_path / "cache"), hub=True, exclude_eval_overlap=False)
    cfg.calls = calls  # type: ignore[attr-defined]
    return cfg


def test_kormedmcqa_hub_integer_answers_and_dev_split(hub_cfg: DataConfig) -> None:
    valid = load_records("kormedmcqa", "valid", hub_cfg)
    assert [(r.id, r.answer_index, r.subject) for r in valid] == [("kormedmcqa:valid:doctor-2021-1-3", 4, "doctor")]
    assert ("sean0042/KorMedMCQA", "doctor", "dev") in hub_cfg.calls  # type: ignore[attr-defined]
    assert [r.answer_index for r in load_records("kormedmcqa", "test", hub_cfg)] == [0, 1]


def test_kormed_law_from_hub_by_position_rule(hub_cfg: DataConfig, tmp_path: Path) -> None:
    cfg = dataclasses.replace(hub_cfg, data_dir=str(tmp_path / "no_local_data"))
    law = load_records("kormed_law", "test", cfg)
    assert [r.id for r in law] == ["kormed_law:test:doctor-2023-1-4"]  # doctor period 1 q1-20 from 2022


def test_medqa_hub_sent1_endings_label(hub_cfg: DataConfig) -> None:
    (row,) = load_records("medqa_4opt", "test", hub_cfg)
    assert row.id == "medqa_4opt:test:q7" and row.question == "Which drug?" and row.answer_text == "c"


def test_medmcqa_hub_cop_is_zero_based_and_has_train(hub_cfg: DataConfig) -> None:
    (dev,) = load_records("medmcqa", "dev", hub_cfg)
    assert dev.answer_index == 0 and dev.answer_text == "w"
    (train,) = load_records("medmcqa", "train", hub_cfg)
    assert train.answer_text == "z"


def test_mmlu_hub_choices_list_and_validation_split(hub_cfg: DataConfig) -> None:
    rows = load_records("mmlu", "val", hub_cfg)
    assert [(r.id, r.answer_index) for r in rows] == [("mmlu:val:anatomy-0", 1), ("mmlu:val:anatomy-1", 3)]


def test_pubmedqa_hub_train_joins_train_and_validation(hub_cfg: DataConfig) -> None:
    rows = load_records("pubmedqa", "train", hub_cfg)
    assert [(r.id, r.answer_text) for r in rows] == [("pubmedqa:train:5", "no"), ("pubmedqa:train:6", "maybe")]


def test_kmmlu_hub_and_sources_without_hub_read_locally(hub_cfg: DataConfig) -> None:
    (row,) = load_records("kmmlu_criminal_law", "test", hub_cfg)
    assert row.answer_index == 3
    manifest = prepare(hub_cfg, ["medquad"])["medquad"]
    assert not manifest["hub"] and manifest["counts"] == {"train": 2}
