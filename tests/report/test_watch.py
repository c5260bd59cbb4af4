"""The report draws each ratio's watch curve (mean over seeds, band across them) from the runs' metrics.jsonl and
lists where the guard fired and which step was kept; a sweep without a watch gets no such section."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, TINY_MODEL

from medtune.report.cli import main
from medtune.report.watch import load_watch_series
from medtune.report.write import write

STEPS = (10, 20, 30)


def _slide(ratio: str, seed: int, step: int) -> float:
    """Korean change from base: 1:0 slides by 0.01 nats per step, 1:1 holds; seeds differ by 0.02."""
    return (-0.01 * step if ratio == "1:0" else 0.05) + 0.02 * seed


def _run(sweep: Path, ratio: str, seed: int, guard_at: int | None = None) -> None:
    run_dir = sweep / f"{ratio.replace(':', '-')}_seed{seed}"
    run_dir.mkdir(parents=True)
    config = {"seed": seed, "data_mix": {"ratio": ratio}, "model": TINY_MODEL}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    lines = [{"step": 5, "train/loss": 2.0}]
    for step in STEPS:
        ko = _slide(ratio, seed, step)
        watch = {"watch/step": step, "watch/lang/ko/delta_gold_ll": ko, "watch/lang/en/delta_gold_ll": 0.3}
        watch |= {"watch/lang/ko/delta_gold_ll_ci_low": ko - 0.1, "watch/lang/ko/delta_gold_ll_ci_high": ko + 0.1}
        lines += [{"step": step, "train/loss": 1.0}, {"step": step, **watch}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    summary = {"run/status": "ok", "watch/total_s": 3.0, "watch/overhead_frac": 0.05, "guard/fired": 0}
    if guard_at is not None:
        test = "lang:ko gold_ll change from base -0.2 nats [-0.3, -0.1] (95% ...): upper end below -0.05 nats"
        summary |= {"guard/fired": 1, "guard/step": guard_at, "guard/group": "lang:ko", "guard/test": test}
        summary |= {"keep/step": 10, "keep/by": "worst_lang", "keep/value": -0.1, "keep/last_step": guard_at}
        summary |= {"keep/last_value": -0.2}
    (run_dir / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    for ratio in ("1:1", "1:0"):
        for seed in (0, 1):
            _run(root, ratio, seed, guard_at=20 if (ratio, seed) == ("1:0", 1) else None)
    return root


def test_curves_are_seed_means_with_a_band_across_seeds(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    rep = write(sweep, out)
    assert (out / "watch_curves.png").is_file() and (out / "watch_curves.csv").is_file()
    ko = rep.watch[rep.watch["group"] == "lang/ko"]
    for ratio in ("1:1", "1:0"):
        curve = ko[ko["ratio"] == ratio].sort_values("step")
        assert curve["step"].tolist() == list(STEPS) and (curve["n_seeds"] == 2).all()
        for _, point in curve.iterrows():
            seeds = [_slide(ratio, s, int(point["step"])) for s in (0, 1)]
            assert point["mean"] == pytest.approx(sum(seeds) / 2)
            assert (point["seed_low"], point["seed_high"]) == pytest.approx((min(seeds), max(seeds)))
            assert point["ci_low"] == pytest.approx(point["mean"] - 0.1)
    assert pd.read_csv(out / "watch_curves.csv").shape[0] == len(rep.watch)
    text = (out / "report.md").read_text()
    assert "## Forgetting as it happens (watch)" in text and "![watch curves](watch_curves.png)" in text
    assert "| lang/ko | 1:0 | 2 | -0.090 (step 10) | -0.290 (step 30) |" in text  # first and lowest, seed means
    assert "fired: lang:ko gold_ll change from base -0.2 nats" in text and "| 20 | 10 (worst_lang -0.100) |" in text


def test_a_sweep_without_a_watch_has_no_watch_section(tmp_path: Path) -> None:
    sweep = Path(shutil.copytree(REPO / "tests" / "fixtures" / "sweep", tmp_path / "sweep"))
    rep = write(sweep, tmp_path / "report")
    assert rep.watch.empty and rep.guard.empty
    assert "(watch)" not in (tmp_path / "report" / "report.md").read_text()
    assert not (tmp_path / "report" / "watch_curves.csv").exists()
    assert load_watch_series(sweep / "1_data_mix.ratio=1:1,seed=0").empty


def test_a_repeated_seed_counts_once(sweep: Path, tmp_path: Path) -> None:
    """A rerun of 1:1 seed 0 (another directory, same seed) adds a run, not a seed."""
    shutil.copytree(sweep / "1-1_seed0", sweep / "1-1_seed0_rerun")
    rep = write(sweep, tmp_path / "report")
    ko = rep.watch[(rep.watch["group"] == "lang/ko") & (rep.watch["ratio"] == "1:1")]
    assert (ko["n_seeds"] == 2).all()


def test_a_languages_only_set_gets_no_panel_of_its_own() -> None:
    """A set that is its language's only one has the language's curve point for point: one panel, not two."""
    from medtune.report.plots import plot_watch_curves

    rows = []
    for step in STEPS:
        rows += [(step, "lang/ko", -0.01 * step), (step, "kormed_law", -0.01 * step), (step, "lang/en", 0.1)]
        rows += [(step, "medqa", 0.2), (step, "mmlu", 0.0), (step, "worst_lang", -0.01 * step)]
    curves = pd.DataFrame(rows, columns=["step", "group", "mean"]).assign(ratio="1:1", en_share=0.5, n_seeds=1)
    curves = curves.assign(seed_low=curves["mean"], seed_high=curves["mean"], ci_low=-1.0, ci_high=1.0)
    titles = [ax.get_title() for ax in plot_watch_curves(curves).axes if ax.get_visible()]
    assert titles == ["English (en)", "Korean (ko)", "set medqa", "set mmlu"]


def test_committed_mix_watch_report_equals_its_run_directories(tmp_path: Path) -> None:
    """experiments/results/mix_watch/report (two stage=train runs on an H200) comes from its committed runs."""
    results = REPO / "experiments" / "results" / "mix_watch"
    assert main([str(results / "runs"), "--out", str(tmp_path), "--reference", "1:1"]) == 0
    for name in ("watch_curves.csv", "watch_guard.csv", "runs.csv", "efficiency.csv"):
        committed, fresh = pd.read_csv(results / "report" / name), pd.read_csv(tmp_path / name)
        pd.testing.assert_frame_equal(fresh, committed, check_exact=False, rtol=1e-9, obj=name)
    assert (tmp_path / "report.md").read_text().split("\n", 1)[1] == (
        results / "report" / "report.md"
    ).read_text().split("\n", 1)[1]
