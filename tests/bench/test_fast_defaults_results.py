"""Issue 30's H200 call (experiments/results/fast_defaults_h200): the README's figures are the committed runs, and
every configuration's predicted peak is within 10% of its measured one."""

from __future__ import annotations

import json

import pytest
from conftest import REPO

RESULTS = REPO / "experiments" / "results" / "fast_defaults_h200"


def _rows() -> dict[str, dict]:
    """folder/name -> measured row of every results.json of the call (peers as peer:NAME)."""
    rows = {}
    for path in sorted(RESULTS.glob("*/results.json")):
        for row in json.loads(path.read_text())["configurations"]:
            rows[f"{path.parent.name}/{row['name']}"] = row
    return rows


MEDTUNE = ["defaults_8", "defaults_4", "auto_rows_20", "budget_20_8", "ckpt_all_8", "budget_peer_8"]


@pytest.mark.parametrize("name", MEDTUNE)
def test_every_prediction_within_ten_percent_of_the_measured_peak(name: str) -> None:
    row = _rows()[f"{name}/{name}"]
    assert row["status"] == "ok"
    assert abs(row["predicted_gib"] / row["peak_alloc_gib"] - 1) <= 0.10


def test_the_plan_uses_the_memory_it_is_given() -> None:
    rows = _rows()
    for name in ("defaults_8", "defaults_4"):  # the whole GPU: nothing recomputed
        assert rows[f"{name}/{name}"]["plan"]["checkpointed_layers"] == 0
    twenty, six = rows["budget_20_8/budget_20_8"], rows["budget_peer_8/budget_peer_8"]
    assert 0 < twenty["plan"]["checkpointed_layers"] < 34 and twenty["plan"]["predicted_peak_gib"] <= 20
    assert six["plan"]["offload_activations"] is True and six["peak_alloc_gib"] < 6.0
    auto = rows["auto_rows_20/auto_rows_20"]
    assert auto["micro_batch_size"] == 28 and auto["plan"]["budget_gib"] == 20  # the most rows with every layer


def test_readme_figures_are_the_committed_runs() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Fast by default") : readme.index("### Speed against peers")]
    rows = _rows()
    for key, rows_label in [("defaults_8/defaults_8", "8"), ("defaults_4/defaults_4", "4"),
                            ("auto_rows_20/auto_rows_20", "28")]:  # fmt: skip
        r = rows[key]
        cells = (f"| {rows_label} | {r['plan']['checkpointed_layers']}/34 | {r['peak_alloc_gib']:.2f} | "
                 f"{r['predicted_gib']:.2f} ({r['error_pct']:+.1f}%) |")  # fmt: skip
        assert cells in section, cells
        assert f"{r['useful_tokens_per_s']:,.0f}" in section
        assert f"{100 * r['mfu']:.1f}% | {100 * r['mfu_nemo']:.1f}% |" in section
    trl = rows["defaults_8/peer:trl_liger"]
    assert f"| {trl['peak_alloc_gib']:.2f} | | {trl['useful_tokens_per_s']:,.0f} |" in section
    ratio = rows["defaults_8/defaults_8"]["useful_tokens_per_s"] / rows["ckpt_all_8/ckpt_all_8"]["useful_tokens_per_s"]
    assert f"{ratio:.2f}x checkpointing every layer" in section
