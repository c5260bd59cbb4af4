"""The prepared-data cache under concurrent jobs: each source prepared once, no reader ever finds it half-written."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES as TEST_FIXTURES
from fixtures import cache_writers
from fixtures.race import race

from medtune.config import DataConfig
from medtune.data.cli import cached_leakage
from medtune.data.prepare import (
    ADAPTER_VERSION,
    prepare,
    prepare_source,
    prepared_dir,
    read_prepared,
    source_splits,
    version_key,
)
from medtune.data.schema import Record, RowSink, open_qa
from medtune.data.sources.registry import SOURCES, resolve, sample_dir

FIXTURES = TEST_FIXTURES / "data"
SOURCE, SPLIT = "kormedmcqa", "train"
TRIALS = 20


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


@pytest.fixture
def data_dir(tmp_path: Path) -> str:
    return str(shutil.copytree(FIXTURES, tmp_path / "raw"))


def _race(data_dir: str, root: Path, force: bool) -> object:
    return race(
        functools.partial(cache_writers.prepare_writer, data_dir=data_dir, source=SOURCE, force=force),
        root,
        trials=TRIALS,
        reader=functools.partial(cache_writers.prepare_reader, data_dir=data_dir, source=SOURCE, split=SPLIT),
        warmup=cache_writers.import_data,
    )


@pytest.mark.timeout(120)
def test_two_jobs_preparing_one_source_prepare_it_once(data_dir: str, tmp_path: Path) -> None:
    result = _race(data_dir, tmp_path / "race", force=False)
    assert result.errors == [] and result.bad_reads == []
    for trial in range(TRIALS):
        # exactly one job read the raw files; the other waited for the lock and found the parquet ready
        assert sorted(result.returned[(trial, job)] for job in range(2)) == [False, True]
        cfg = DataConfig(data_dir=data_dir, cache_dir=str(tmp_path / "race" / f"trial_{trial:03d}" / "cache"))
        assert _leftovers(prepared_dir(SOURCES[SOURCE], cfg).parent) == []


@pytest.mark.timeout(120)
def test_forced_rewrites_never_break_a_reader(data_dir: str, tmp_path: Path) -> None:
    """`prepare --force` in two jobs while a third reads the split: the old code deleted the folder under it."""
    root = tmp_path / "race"
    for trial in range(TRIALS):
        prepare_source(
            SOURCES[SOURCE], DataConfig(data_dir=data_dir, cache_dir=str(root / f"trial_{trial:03d}" / "cache"))
        )
    result = _race(data_dir, root, force=True)
    assert result.errors == [] and result.bad_reads == []
    assert result.complete_reads > 0
    assert all(result.returned[(trial, job)] is False for trial in range(TRIALS) for job in range(2))


@pytest.mark.timeout(120)
def test_two_jobs_writing_the_leakage_report_at_once(data_dir: str, tmp_path: Path) -> None:
    sources = ("kormedmcqa", "medqa_4opt", "medmcqa")
    template = DataConfig(data_dir=data_dir, cache_dir=str(tmp_path / "template"))
    prepare(template, list(sources))  # as `python -m medtune.data prepare` does before its leakage report
    rows, cached = cached_leakage(list(sources), template)  # prepares the eval splits too, once for all trials
    assert not cached and rows
    for leak in Path(template.cache_dir, "prepared").glob("leakage-*.json"):
        leak.unlink()
    trials = 10
    root = tmp_path / "race"
    for trial in range(trials):
        shutil.copytree(template.cache_dir, root / f"trial_{trial:03d}" / "cache")
    result = race(
        functools.partial(cache_writers.leakage_writer, data_dir=data_dir, sources=sources),
        root,
        trials=trials,
        reader=functools.partial(cache_writers.leakage_reader, n_rows=len(rows)),
        warmup=cache_writers.import_data,
    )
    assert result.errors == [] and result.bad_reads == []
    assert all(sorted(result.returned[(t, job)] for job in range(2)) == [False, True] for t in range(trials))


@dataclasses.dataclass(frozen=True)
class InMemory:
    """A source that is neither built in nor in data.datasets: prepare may ask it only what the Source interface has."""

    question: str
    name: str = "in_memory"
    language: str = "en"
    split_hint: str = ""

    def is_hub(self, data_cfg: Any) -> bool:
        return False

    def splits(self, data_cfg: Any) -> None:
        return None  # its data decides

    def files(self, data_cfg: Any) -> list[Path]:
        return []

    def identity(self, data_cfg: Any) -> str:
        return self.question

    def read(self, data_cfg: Any, sink: RowSink) -> dict[str, list[Record]]:
        return {
            split: [open_qa(self.name, split, "a", "en", "t", f"{self.question} ({split})", "yes")]
            for split in ("train", "test")
        }


def test_prepare_asks_a_source_only_its_interface(tmp_path: Path) -> None:
    cfg = DataConfig(data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    source = InMemory("Is water wet?")
    manifest = prepare_source(source, cfg)
    assert manifest["counts"] == {"train": 1, "test": 1} and manifest["language"] == "en" and not manifest["hub"]
    assert source_splits(source, cfg) == ("train", "test")  # splits() is None: those of the prepared copy
    assert [r.question for r in read_prepared(source, "test", cfg)] == ["Is water wet? (test)"]
    changed = InMemory("Is fire hot?")
    assert prepared_dir(changed, cfg) != prepared_dir(source, cfg)  # its identity keys the prepared copy
    assert not prepare_source(changed, cfg)["up_to_date"] and prepare_source(source, cfg)["up_to_date"]


def _old_key(name: str, *parts: str, files: tuple[Path, ...] = ()) -> str:
    """The version key as medtune computed it before sources shared one interface."""
    digest = hashlib.sha256(f"adapter-v{ADAPTER_VERSION}".encode())
    for part in parts:
        digest.update(part.encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.name}:{path.parent.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return f"{name}-{digest.hexdigest()[:12]}"


def test_version_keys_stay_those_of_copies_prepared_before(data_dir: str, tmp_path: Path) -> None:
    """Built-in, hub and data.datasets sources key their prepared copies as before: existing caches stay valid."""
    (tmp_path / "exam.jsonl").write_text('{"q": "Q?", "a": "A"}\n')
    exam = {
        "format": "qa",
        "language": "ja",
        "path": str(tmp_path / "exam.jsonl"),
        "columns": {"question": "q", "answer": "a"},
    }
    hub_exam = {**exam, "path": "someone/vi-exam", "language": "vi"}
    cfg = DataConfig(data_dir=data_dir, cache_dir=str(tmp_path / "cache"), datasets={"exam": exam, "vi": hub_exam})
    hub = dataclasses.replace(cfg, hub=True)
    declarations = {name: json.dumps(dataclasses.asdict(ds), sort_keys=True) for name, ds in cfg.datasets.items()}
    kormed = tuple(sorted(Path(data_dir).glob("kormedmcqa/*/*.csv")))
    assert version_key(SOURCES["kormedmcqa"], cfg) == _old_key("kormedmcqa", files=kormed)
    assert version_key(SOURCES["sample_en"], cfg) == _old_key("sample_en", files=(sample_dir() / "sample_en.jsonl",))
    assert version_key(SOURCES["medmcqa"], hub) == _old_key("medmcqa", "hub:medmcqa:")
    assert version_key(resolve("exam", cfg)[0], cfg) == _old_key(
        "exam", declarations["exam"], files=(tmp_path / "exam.jsonl",)
    )
    assert version_key(resolve("vi", hub)[0], hub) == _old_key("vi", declarations["vi"], "hub:vi:someone/vi-exam")


def test_prepare_takes_run_keys_with_an_experiment_and_names_an_unknown_key(tmp_path: Path) -> None:
    """`prepare +experiment=X model.init=random` passes model.init to the run's config (it was prefixed with data.
    and Hydra raised a traceback); an unknown key is one ConfigError naming the key and its group."""
    import argparse

    import pytest

    from medtune.config import ConfigError
    from medtune.data.cli import build_config

    def args(*overrides: str) -> argparse.Namespace:
        return argparse.Namespace(overrides=list(overrides), data_dir=str(tmp_path), cache_dir=None, hub=None)

    cfg = build_config(args("+experiment=paper_medgemma_4b", "model.init=random", "near_dup_threshold=0.8"))
    assert cfg.near_dup_threshold == 0.8
    with pytest.raises(ConfigError, match=r"trainer\.nope.*'nope' not in 'TrainerConfig'"):
        build_config(args("+experiment=paper_medgemma_4b", "trainer.nope=1"))
