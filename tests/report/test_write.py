"""Runs that only trained (stage=train: no final evaluation) get the watch's curves and guard table and a report
that says plainly that nothing was evaluated at the end: no empty accuracy columns, forgetting or contrast tables,
and no empty CSVs; a sweep where only some runs were evaluated marks those that were not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import yaml
from conftest import REPO, TINY_MODEL

from medtune.report.cli import main

STEPS = (10, 20)


def _train_only(sweep: Path, ratio: str) -> None:
    """A finished stage=train run with a watch: the summary has training, watch and guard keys, no eval/<x>/acc."""
    run_dir = sweep / ratio.replace(":", "-")
    run_dir.mkdir(parents=True)
    config = {"seed": 0, "stage": "train", "data_mix": {"ratio": ratio}, "model": TINY_MODEL}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    ko = -0.1 if ratio == "1:0" else 0.2
    lines = []
    for step in STEPS:
        watch = {"watch/step": step, "watch/seconds": 0.5, "watch/lang/ko/delta_gold_ll": ko}
        watch |= {"watch/lang/ko/delta_gold_ll_ci_low": ko - 0.05, "watch/lang/ko/delta_gold_ll_ci_high": ko + 0.05}
        lines += [{"step": step, "train/loss": 1.5}, {"step": step, "guard/below": 0.0, **watch}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    summary = {"run/status": "ok", "eval/loss": 1.7, "train/useful_tokens_per_s": 1000.0, "guard/fired": 0}
    summary |= {"watch/total_s": 1.0, "watch/base_s": 0.2, "watch/overhead_frac": 0.3}
    (run_dir / "summary.json").write_text(json.dumps(summary))


def test_train_only_runs_get_the_watch_and_say_there_is_no_final_evaluation(tmp_path: Path) -> None:
    sweep, out = tmp_path / "sweep", tmp_path / "report"
    for ratio in ("1:1", "1:0"):
        _train_only(sweep, ratio)
    assert main([str(sweep), "--out", str(out), "--reference", "1:1"]) == 0
    md = (out / "report.md").read_text()
    assert "**No final evaluation**" in md and "`stage=train`" in md
    runs_header = next(line for line in md.splitlines() if line.startswith("| run | status |"))
    assert "acc %" not in runs_header and "Wilson" not in md  # no column of n/a, no interval that does not exist
    assert "## Against the 1:1 mix" in md and "Not computed" in md
    assert "| lang/ko | 1:0 | 1 | -0.100 (step 10) |" in md and "did not fire" in md  # the watch is all there
    for name in ("forgetting.csv", "by_share.csv", "contrast.csv"):
        assert not (out / name).exists(), name  # an empty table would read as a result
    assert len(pd.read_csv(out / "watch_curves.csv")) == 4 and len(pd.read_csv(out / "watch_guard.csv")) == 2


def test_a_run_without_final_evaluation_beside_evaluated_ones_is_marked(tmp_path: Path) -> None:
    sweep = Path(shutil.copytree(REPO / "tests" / "fixtures" / "sweep", tmp_path / "sweep"))
    _train_only(sweep, "3:1")
    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| `3-1` | ok"))
    assert row.count("not evaluated") == 2  # ko and en
    assert "1 finished run has no final evaluation (`stage=train`)" in md and "Wilson" in md
    assert "3-1" not in set(pd.read_csv(out / "forgetting.csv")["run"])
