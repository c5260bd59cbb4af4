"""The adapters over the real datasets (../shared/data): counts must equal the data README's."""

from __future__ import annotations

from pathlib import Path

import pytest

from medtune.config import DataConfig
from medtune.data import load_records, prepare


@pytest.fixture(scope="session")
def real_cfg(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> DataConfig:
    """A DataConfig over the real data with one prepared cache for the whole test session."""
    cfg = DataConfig(data_dir=str(data_dir), cache_dir=str(tmp_path_factory.mktemp("real_data_cache")))
    prepare(cfg)
    return cfg


EXPECTED = {
    "kormedmcqa": {"train": 3401, "valid": 1059, "test": 3009, "fewshot": 20},
    "kormed_law": {"train": 100, "valid": 60, "test": 239},
    "kormed_law_all": {"train": 115, "valid": 62, "test": 247},
    "medqa_4opt": {"dev": 1272, "test": 1273},
    "medqa_5opt": {"dev": 1272, "test": 1273},
    "medmcqa": {"dev": 4183},
    "pubmedqa": {"train": 500, "test": 500},
    "mmlu": {"dev": 285, "val": 1531, "test": 14042},
    "kmmlu_criminal_law": {"dev": 5, "train": 85, "test": 200},
    "genmedgpt_ko": {"train": 5451},
    "chatdoctor_en": {"train": 5452},
    "medquad": {"train": 16407},
}


def test_counts_equal_the_data_readme(real_cfg: DataConfig) -> None:
    manifests = prepare(real_cfg)
    assert {name: manifests[name]["counts"] for name in EXPECTED} == EXPECTED
    assert all(m["up_to_date"] and not m["skipped"] for m in manifests.values())


def test_views_and_subjects(real_cfg: DataConfig) -> None:
    assert len(load_records("mmlu_medical", "test", real_cfg)) == 1089
    subjects = {"doctor": 435, "nurse": 878, "pharm": 885, "dentist": 811}
    for subject, count in subjects.items():
        assert len(load_records(f"kormedmcqa_{subject}", "test", real_cfg)) == count
    general = load_records("mmlu_general", "test", real_cfg)
    assert not {"anatomy", "virology", "nutrition"} & {r.subject for r in general} and len(general) > 9000
    languages = {r.language for r in load_records("kormed_law", "test", real_cfg)}
    assert languages == {"ko"}


def test_training_loads_drop_law_rows_and_eval_duplicates(real_cfg: DataConfig) -> None:
    report: dict = {}
    train = load_records("kormedmcqa", "train", real_cfg, report=report)
    assert report["data/kormedmcqa:train/dropped_law"] == 115  # every law row of train (block and regex)
    law_test_questions = {r.question for r in load_records("kormed_law", "test", real_cfg)}
    assert not law_test_questions & {r.question for r in train}
    load_records("mmlu", "val", real_cfg, report=report)
    assert report["data/mmlu:val/dropped_exact"] > 0  # MMLU's known val/test repeats are caught
