"""The README's speed figures against peers are the committed H200 measurements (experiments/results/efficiency_h200):
a figure typed by hand that drifts from its run fails here."""

from __future__ import annotations

import ast
import json

from conftest import REPO

RESULTS = REPO / "experiments" / "results" / "efficiency_h200"


def _rows(run: str) -> dict[str, dict]:
    """name -> measured row of every results.json of a run folder (peers as peer:NAME)."""
    rows = {}
    for path in sorted((RESULTS / run).glob("*/results.json")):
        for row in json.loads(path.read_text())["configurations"]:
            rows[f"{path.parent.name}/{row['name']}"] = row
    return rows


def _logged(run: str, name: str) -> dict:
    """A configuration's row as the bench logged it (the first `fast` process ended before writing results.json)."""
    line = next(
        x
        for x in (RESULTS / run / f"{name}.log").read_text().splitlines()
        if x.startswith(f"INFO medtune.bench: {name}: ")
    )
    return ast.literal_eval(line.split(": ", 2)[2])


def _fmt(value: float) -> str:
    return f"{value:,.0f}"


def test_readme_peer_table_is_the_committed_runs() -> None:
    e, f = _rows("e_peers"), _rows("f_direct_dequant")
    first = _logged("e_peers", "fast")
    trl = json.loads((RESULTS / "e_peers" / "fast" / "peers" / "trl_liger.json").read_text())
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Speed against peers") : readme.index("Evaluation fits inside the training")]
    figures = {
        "medtune 8 rows, unsloth's call": e["fast_unsloth/fast"]["useful_tokens_per_s"],
        "unsloth 8 rows": e["fast_unsloth/peer:unsloth"]["useful_tokens_per_s"],
        "medtune 8 rows, first call": first["useful_tokens_per_s"],
        "TRL + Liger 8 rows": trl["useful_tokens_per_s"],
        "medtune 4 rows": e["fast_mb4/fast_mb4"]["useful_tokens_per_s"],
        "unsloth 4 rows": e["fast_mb4/peer:unsloth"]["useful_tokens_per_s"],
        "medtune 4 rows, direct dequantisation": f["fast_mb4/fast_mb4"]["useful_tokens_per_s"],
        "previous 4 rows, second machine": f["prev_mb4/prev_mb4"]["useful_tokens_per_s"],
        "previous 8 rows": e["prev/prev"]["useful_tokens_per_s"],
        "fused_base without reentrant": e["fast_hooks/fast_hooks"]["useful_tokens_per_s"],
        "reentrant without fused_base": e["fast_addmm/fast_addmm"]["useful_tokens_per_s"],
    }
    for what, value in figures.items():
        assert _fmt(value) in section, f"{what}: {_fmt(value)} is not in README's peer section"
    unsloth8 = e["fast_unsloth/peer:unsloth"]
    assert f"{unsloth8['peak_alloc_gib']:.2f} | {_fmt(unsloth8['useful_tokens_per_s'])}" in section
    ratio = e["fast_unsloth/fast"]["useful_tokens_per_s"] / unsloth8["useful_tokens_per_s"]
    assert ratio > 1 and f"**{ratio:.2f}x**" in section  # medtune faster at 8 rows, in the same call
    assert e["fast_mb4/peer:unsloth"]["useful_tokens_per_s"] > f["fast_mb4/fast_mb4"]["useful_tokens_per_s"]
    assert "at 4 rows unsloth is faster" in section  # and the README says so
