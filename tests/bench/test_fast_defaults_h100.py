"""Issue 30's H100 call (experiments/results/fast_defaults_h100): every prediction within 10% of its measured peak,
the plan's choices, and the short paper run's speed within 5% of the bench's 4-row row."""

from __future__ import annotations

import json
import statistics

import pytest
from conftest import REPO

RESULTS = REPO / "experiments" / "results" / "fast_defaults_h100"
NAMES = ["defaults_8", "defaults_4", "ckpt_all_8", "budget_peer_8", "auto_rows_10"]


def _row(name: str) -> dict:
    rows = json.loads((RESULTS / name / "results.json").read_text())["configurations"]
    return next(r for r in rows if r["name"] == name)


@pytest.mark.parametrize("name", NAMES)
def test_every_prediction_within_ten_percent_of_the_measured_peak(name: str) -> None:
    row = _row(name)
    assert row["status"] == "ok" and "H100" in json.loads((RESULTS / name / "results.json").read_text())["device"]
    assert abs(row["predicted_gib"] / row["peak_alloc_gib"] - 1) <= 0.10


def test_the_plan_and_the_readme_figures() -> None:
    assert [_row(n)["plan"]["checkpointed_layers"] for n in ("defaults_8", "defaults_4")] == [0, 0]
    auto = _row("auto_rows_10")
    assert auto["micro_batch_size"] == 11 and auto["plan"]["predicted_peak_gib"] <= 10
    assert _row("budget_peer_8")["plan"]["offload_activations"] is True
    ratio = _row("defaults_8")["useful_tokens_per_s"] / _row("ckpt_all_8")["useful_tokens_per_s"]
    readme = (RESULTS / "README.md").read_text()
    assert f"**{ratio:.2f}x** checkpointing every" in readme
    for name in NAMES:
        assert f"{_row(name)['useful_tokens_per_s']:,.0f}" in readme


def test_the_paper_command_runs_within_five_percent_of_the_bench() -> None:
    lines = [json.loads(x) for x in (RESULTS / "train_paper" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    windows = [x["train/useful_tokens_per_s"] for x in lines if "train/useful_tokens_per_s" in x]
    assert len(windows) == 12
    median, bench = statistics.median(windows), _row("defaults_4")["useful_tokens_per_s"]
    assert abs(median / bench - 1) <= 0.05
    assert f"median\n  **{median:,.0f}: {100 * (median / bench - 1):+.1f}%**" in (RESULTS / "README.md").read_text()
    summary = json.loads((RESULTS / "train_paper" / "summary.json").read_text())
    assert summary["run/status"] == "ok" and summary["plan/checkpointed_layers"] == 0
    assert "attention=medtune_varlen" in summary["run/fast_paths"] and summary["run/fast_paths_refused"] == "none"
