"""`python -m medtune.search` for real: proxy runs of medtune.train as subprocesses (tiny model, built-in sample),
search.md and search.json from their files; a second call skips the finished runs; a killed run reruns alone."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import TINY_RUN

from medtune.search.cli import main

SEARCH = ["search=ratio_ja", "search.train=[]", "search.vary=ko", "search.shares=[0.2,0.6]", "search.seeds=[0]",
          "search.steps=2", "search.target=[sample_ko]", "search.protect=[lang:en]",
          "search.bootstrap_samples=200"]  # fmt: skip
TRAIN = [*TINY_RUN, "logger=jsonl", "eval.limit=8", "eval.sanity=warn", "eval.watch_every=0"]


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two proxy runs of the demo mix (Korean at 0.2 and 0.6 of the examples): 80 s each on 2 CPU cores shared with
    other jobs (measured), under a minute on an idle machine."""
    root = tmp_path_factory.mktemp("search")
    saved = dict(os.environ)
    os.environ.update({"MEDTUNE_CACHE_DIR": str(root / "cache"), "WANDB_MODE": "offline"})
    try:
        assert main([*SEARCH, f"search.dir={root / 's'}", *TRAIN]) == 0
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return root


def test_the_search_runs_scores_and_recommends(searched: Path) -> None:
    out = searched / "s"
    for name in ("ko0.200_seed0", "ko0.600_seed0"):
        assert json.loads((out / "runs" / name / "summary.json").read_text())["run/status"] == "ok"
    record = json.loads((out / "search.json").read_text())
    assert record["ran"] == ["ko0.200_seed0", "ko0.600_seed0"] and record["finished"] == 2
    assert [row["share"] for row in record["by_share"]] == [0.2, 0.6]
    shares = [row["trained_share"] for row in record["by_share"]]
    assert shares[0] < shares[1]  # the realised Korean share follows the asked one
    text = (out / "search.md").read_text()
    assert ("**Recommended**: en:ko=" in text) != ("**No safe share**" in text)
    assert "| 0.200 | 1 |" in text and "protected lang:en" in text
    config = (out / "runs" / "ko0.600_seed0" / "config.yaml").read_text()
    assert "ratio: en:ko=0.4:0.6" in config and "max_steps: 2" in config


@pytest.mark.slow  # a third training run (70 s on 2 shared CPU cores); tests/search/test_run.py covers resume fast
def test_a_second_call_skips_finished_runs_and_reruns_a_killed_one(searched: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDTUNE_CACHE_DIR", str(searched / "cache"))
    out = searched / "s"
    assert main([*SEARCH, f"search.dir={out}", *TRAIN]) == 0
    assert json.loads((out / "search.json").read_text())["ran"] == []
    (out / "runs" / "ko0.200_seed0" / "summary.json").unlink()  # as if killed before its end
    kept = (out / "runs" / "ko0.600_seed0" / "summary.json").stat().st_mtime_ns
    assert main([*SEARCH, f"search.dir={out}", *TRAIN]) == 0
    assert json.loads((out / "search.json").read_text())["ran"] == ["ko0.200_seed0"]
    assert (out / "runs" / "ko0.600_seed0" / "summary.json").stat().st_mtime_ns == kept
