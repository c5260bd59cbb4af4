"""Adapters, quirks, prepared cache, CLI and bad rows of medtune.data, on the made-up files in tests/fixtures/data."""

from __future__ import annotations

import collections
import os
import shutil
from pathlib import Path

import pytest
from conftest import FIXTURES as TEST_FIXTURES

from medtune.config import DataConfig
from medtune.data import Record, assert_trainable, load_records, prepare
from medtune.data.cli import main as cli_main
from medtune.data.prepare import prepared_dir
from medtune.data.sources.registry import SOURCES

FIXTURES = TEST_FIXTURES / "data"


@pytest.fixture
def cfg(tmp_path: Path) -> DataConfig:
    """A DataConfig over a private copy of the fixture files (tests may edit them)."""
    data = tmp_path / "raw"
    shutil.copytree(FIXTURES, data)
    return DataConfig(data_dir=str(data), cache_dir=str(tmp_path / "cache"))


def by_id(records: list[Record]) -> dict[str, Record]:
    return {r.id: r for r in records}


def test_fixture_counts_per_source_and_split(cfg: DataConfig) -> None:
    counts = {name: m["counts"] for name, m in prepare(cfg).items()}
    assert counts["kormedmcqa"] == {"train": 8, "valid": 4, "test": 8, "fewshot": 4}
    assert counts["kormed_law"] == {"train": 1, "valid": 0, "test": 2}
    assert counts["kormed_law_all"] == {"train": 2, "valid": 0, "test": 2}
    assert counts["medqa_4opt"] == counts["medqa_5opt"] == {"dev": 2, "test": 2}
    assert counts["pubmedqa"] == {"train": 2, "test": 2}
    assert counts["mmlu"] == {"dev": 3, "val": 3, "test": 4}
    assert counts["kmmlu_criminal_law"] == {"dev": 1, "train": 2, "test": 2}
    assert counts["genmedgpt_ko"] == counts["chatdoctor_en"] == counts["medquad"] == {"train": 2}
    assert counts["sample_ko"] == counts["sample_en"] == {"train": 80, "test": 40}


def test_kormedmcqa_letter_answers_integer_fewshot_and_index_column(cfg: DataConfig) -> None:
    train = by_id(load_records("kormedmcqa", "train", cfg))
    first = train["kormedmcqa:train:doctor-2019-1-70"]
    assert first.answer_index == 2 and first.answer_letter == "C" and first.answer_text == first.choices[2]
    assert first.question.count("\n") == 2  # the quoted multi-line question survives
    assert len(first.choices) == 5 and first.language == "ko" and first.subject == "doctor"
    fewshot = by_id(load_records("kormedmcqa", "fewshot", cfg))
    assert fewshot["kormedmcqa:fewshot:doctor-2021-1-5"].answer_index == 2  # the integer 3 is 1-based
    assert not any("Unnamed" in r.question or r.question.isdigit() for r in train.values())


def test_kormedmcqa_pharmacy_subject_is_pharm(cfg: DataConfig) -> None:
    test = by_id(load_records("kormedmcqa", "test", cfg))
    assert test["kormedmcqa:test:pharm-2023-4-71"].subject == "pharm"
    assert {r.subject for r in test.values()} == {"doctor", "nurse", "pharm", "dentist"}
    assert [r.subject for r in load_records("kormedmcqa_pharm", "test", cfg)] == ["pharm", "pharm"]


def test_law_subset_block_rows_and_exclusion_from_kormedmcqa_training(cfg: DataConfig) -> None:
    assert [r.id for r in load_records("kormed_law", "train", cfg)] == ["kormed_law:train:nurse-2019-3-70"]
    assert len(load_records("kormed_law_all", "train", cfg)) == 2  # the regex-only row too
    report: dict = {}
    kept = {r.id for r in load_records("kormedmcqa", "train", cfg, report=report)}
    assert "kormedmcqa:train:nurse-2019-3-70" not in kept and "kormedmcqa:train:nurse-2019-3-71" not in kept
    assert report["data/kormedmcqa:train/dropped_law"] == 2 and report["data/kormedmcqa:train/kept"] == 6
    allowed = DataConfig(data_dir=cfg.data_dir, cache_dir=cfg.cache_dir, exclude_law_from_train=False)
    assert len(load_records("kormedmcqa", "train", allowed)) == 8
    assert len(load_records("kormedmcqa", "test", cfg)) == 8  # eval splits are never filtered


def test_medqa_letter_options_and_five_options(cfg: DataConfig) -> None:
    four = load_records("medqa_4opt", "test", cfg)[0]
    five = load_records("medqa_5opt", "test", cfg)[0]
    assert four.answer_text == "Right coronary artery" and four.answer_index == 1 and len(four.choices) == 4
    assert len(five.choices) == 5 and five.subject == "step1"


def test_medmcqa_cop_is_one_based_locally(cfg: DataConfig) -> None:
    rows = by_id(load_records("medmcqa", "dev", DataConfig(**{**vars(cfg), "exclude_eval_overlap": False})))
    assert rows["medmcqa:dev:mm-1"].answer_text == "Phrenic"  # cop=1 -> A
    assert rows["medmcqa:dev:mm-2"].answer_text == "Femur"  # cop=4 -> D


def test_pubmedqa_official_test_pmids_and_context(cfg: DataConfig) -> None:
    test = by_id(load_records("pubmedqa", "test", cfg))
    assert set(test) == {"pubmedqa:test:222", "pubmedqa:test:333"}
    assert test["pubmedqa:test:333"].answer_text == "maybe" and test["pubmedqa:test:333"].answer_index == 2
    assert test["pubmedqa:test:222"].context == "Background of study 222.\nResults of study 222."
    assert {r.id for r in load_records("pubmedqa", "train", cfg)} == {"pubmedqa:train:111", "pubmedqa:train:444"}


def test_mmlu_views_select_subjects(cfg: DataConfig) -> None:
    assert {r.subject for r in load_records("mmlu", "test", cfg)} == {"anatomy", "virology", "philosophy"}
    assert {r.subject for r in load_records("mmlu_medical", "test", cfg)} == {"anatomy"}
    assert {r.subject for r in load_records("mmlu_general", "test", cfg)} == {"philosophy"}  # virology is health
    assert [r.answer_text for r in load_records("mmlu_philosophy", "test", cfg)] == ["Plato"]
    with pytest.raises(ValueError, match="selects no records"):
        load_records("mmlu_astrology", "test", cfg)
    with pytest.raises(KeyError, match="unknown data source"):
        load_records("nosuchsource", "test", cfg)


def test_kmmlu_answers_are_one_based(cfg: DataConfig) -> None:
    rows = load_records("kmmlu_criminal_law", "test", cfg)
    assert [r.answer_index for r in rows] == [3, 2] and rows[0].subject == "criminal_law"


def test_open_qa_sources(cfg: DataConfig) -> None:
    for source, language in (("genmedgpt_ko", "ko"), ("chatdoctor_en", "en"), ("medquad", "en")):
        rows = load_records(source, "train", cfg)
        assert len(rows) == 2 and all(r.kind == "open" and r.choices == () and r.answer_index is None for r in rows)
        assert all(r.language == language and r.answer_text for r in rows)
    assert len({r.id for r in load_records("medquad", "train", cfg)}) == 2  # repeated qid, unique ids


def test_prepare_is_idempotent_and_rebuilds_on_change(cfg: DataConfig) -> None:
    first = prepare(cfg, ["medmcqa"])["medmcqa"]
    again = prepare(cfg, ["medmcqa"])["medmcqa"]
    assert not first["up_to_date"] and again["up_to_date"]
    old_dir = prepared_dir(SOURCES["medmcqa"], cfg)
    path = Path(cfg.data_dir) / "medmcqa" / "dev.jsonl"
    path.write_text(path.read_text() + path.read_text().splitlines()[0].replace("mm-1", "mm-3") + "\n")
    changed = prepare(cfg, ["medmcqa"])["medmcqa"]
    assert not changed["up_to_date"] and changed["counts"] == {"dev": 3}
    assert prepared_dir(SOURCES["medmcqa"], cfg) != old_dir and (old_dir / "dev.parquet").is_file()


def test_cli_prints_counts_and_leakage_then_up_to_date(cfg: DataConfig, capsys: pytest.CaptureFixture) -> None:
    argv = ["prepare", "--data-dir", cfg.data_dir, "--cache-dir", cfg.cache_dir]
    assert cli_main([*argv, "--sources", "kormedmcqa", "medqa_4opt", "medmcqa"]) == 0
    out = capsys.readouterr().out
    assert "kormedmcqa" in out and "leakage guard" in out and "prepared" in out
    line = next(x for x in out.splitlines() if x.startswith("medqa_4opt:dev"))
    assert line.split()[1:] == ["2", "0", "0", "1", "1"]  # loaded, law, exact, near, kept
    assert cli_main([*argv, "--sources", "kormedmcqa", "medqa_4opt", "medmcqa"]) == 0
    assert "all sources up to date" in capsys.readouterr().out


def test_cli_reads_env_and_overrides(cfg: DataConfig, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("MEDTUNE_DATA_DIR", cfg.data_dir)
    monkeypatch.setenv("MEDTUNE_CACHE_DIR", str(Path(cfg.cache_dir).parent / "envcache"))
    assert cli_main(["prepare", "--sources", "medquad", "--no-leakage", "on_bad_row=skip"]) == 0
    assert (Path(cfg.cache_dir).parent / "envcache" / "data" / "prepared").is_dir()
    capsys.readouterr()
    assert cli_main(["prepare", "--sources", "medquad", "no_such_field=1"]) == 2  # the message, no traceback
    assert "error: override 'no_such_field=1' is not <data field>=<value>" in capsys.readouterr().err


def test_eval_splits_cannot_be_training_sources(cfg: DataConfig) -> None:
    with pytest.raises(ValueError, match="evaluation split"):
        assert_trainable("kormedmcqa_doctor:test", cfg)
    assert_trainable("kormedmcqa:train", cfg)


def test_sample_dataset_is_balanced_and_disjoint() -> None:
    cfg = DataConfig(data_dir="/nonexistent", cache_dir=os.devnull + "-unused")
    from medtune.data.prepare import read_source

    for language in ("ko", "en"):
        by_split, skipped = read_source(SOURCES[f"sample_{language}"], cfg)
        assert not skipped and {k: len(v) for k, v in by_split.items()} == {"train": 80, "test": 40}
        for split, rows in by_split.items():
            letters = collections.Counter(r.answer_letter for r in rows)
            assert max(letters.values()) - min(letters.values()) <= 1, (language, split, letters)
            assert all(r.language == language and 3 <= len(r.choices) <= 5 for r in rows)
        train_q = {r.question for r in by_split["train"]}
        assert not train_q & {r.question for r in by_split["test"]}
    law = [r for r in read_source(SOURCES["sample_ko"], cfg)[0]["test"] if r.subject == "medical_law"]
    assert law, "some Korean test questions cover medical law"
