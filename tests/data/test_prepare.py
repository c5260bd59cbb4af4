"""The prepared-data cache under concurrent jobs: each source prepared once, no reader ever finds it half-written."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import pytest
from conftest import FIXTURES as TEST_FIXTURES
from fixtures import cache_writers
from fixtures.race import race

from medtune.config import DataConfig
from medtune.data.__main__ import cached_leakage
from medtune.data.prepare import prepare, prepare_source, prepared_dir
from medtune.data.sources.registry import SOURCES

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
