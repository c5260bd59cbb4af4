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
    g = {f"{call}/{k}": v for call in ("a_fp32_weight", "b_bf16_weight", "c_peers", "d_profile_8rows")
         for k, v in _rows(f"g_torch_norm/{call}").items()}  # fmt: skip
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Speed against peers") : readme.index("Evaluation fits inside the training")]
    figures = {
        "medtune 8 rows, the peers' call": g["c_peers/tnorm/tnorm"]["useful_tokens_per_s"],
        "unsloth 8 rows": g["c_peers/tnorm/peer:unsloth"]["useful_tokens_per_s"],
        "TRL + Liger 8 rows": g["c_peers/tnorm/peer:trl_liger"]["useful_tokens_per_s"],
        "medtune 4 rows": g["c_peers/tnorm_mb4/tnorm_mb4"]["useful_tokens_per_s"],
        "rms_norm=torch 4 rows": g["b_bf16_weight/tnorm_mb4/tnorm_mb4"]["useful_tokens_per_s"],
        "Liger's norm 4 rows": g["b_bf16_weight/fast_mb4/fast_mb4"]["useful_tokens_per_s"],
        "rms_norm=torch 8 rows": g["b_bf16_weight/tnorm/tnorm"]["useful_tokens_per_s"],
        "Liger's norm 8 rows": g["b_bf16_weight/fast/fast"]["useful_tokens_per_s"],
        "Liger's norm 4 rows, another machine": g["a_fp32_weight/fast_mb4/fast_mb4"]["useful_tokens_per_s"],
        "best 8 rows": g["d_profile_8rows/profile_tnorm/tnorm"]["useful_tokens_per_s"],
        "medtune 4 rows, direct dequantisation": f["fast_mb4/fast_mb4"]["useful_tokens_per_s"],
        "previous 4 rows, second machine": f["prev_mb4/prev_mb4"]["useful_tokens_per_s"],
        "previous 8 rows": e["prev/prev"]["useful_tokens_per_s"],
        "fused_base without reentrant": e["fast_hooks/fast_hooks"]["useful_tokens_per_s"],
        "reentrant without fused_base": e["fast_addmm/fast_addmm"]["useful_tokens_per_s"],
        "unsloth 4 rows, previous session": e["fast_mb4/peer:unsloth"]["useful_tokens_per_s"],
    }
    for what, value in figures.items():
        assert _fmt(value) in section, f"{what}: {_fmt(value)} is not in README's peer section"
    for key, bold in (("tnorm/tnorm", True), ("tnorm_mb4/tnorm_mb4", True), ("tnorm/peer:trl_liger", False),
                      ("tnorm_mb4/peer:unsloth", False)):  # fmt: skip
        row, mark = g[f"c_peers/{key}"], "**" if bold else ""
        cells = f"| {row['peak_alloc_gib']:.2f} | {mark}{_fmt(row['useful_tokens_per_s'])}{mark} |"
        assert cells in section, f"the table row of {key} is not the run's: {cells}"
    unsloth8 = g["c_peers/tnorm/peer:unsloth"]
    assert f"{unsloth8['peak_alloc_gib']:.2f} | {_fmt(unsloth8['useful_tokens_per_s'])}" in section
    ratio = g["c_peers/tnorm/tnorm"]["useful_tokens_per_s"] / unsloth8["useful_tokens_per_s"]
    assert ratio > 1 and f"**{ratio:.2f}x**" in section  # medtune faster at 8 rows, in the same call
    best = max(r["useful_tokens_per_s"] for r in g.values() if not r["name"].startswith("peer:"))
    assert best < 20_000 and "**Not met: the\n20,000 tokens/s target**" in section  # and the README says so
    assert "The 4-row margin over unsloth is not settled" in section  # its mean hides one ~6 s step


def test_the_4_row_unsloth_mean_hides_one_slow_step() -> None:
    """What the README says of unsloth's 4-row row, from its log: ten timed steps in ~10 s, one of them ~6 s."""
    log = (RESULTS / "g_torch_norm" / "c_peers" / "tnorm_mb4" / "peers" / "unsloth.log").read_text()
    clock = [line.split("[", 1)[1][:5] for line in log.replace("\r", "\n").splitlines() if "/13 [0" in line]
    assert "03:29" in clock and "03:35" in clock  # step 11 ended at 03:29, step 12 at 03:35
    row = json.loads((RESULTS / "g_torch_norm" / "c_peers" / "tnorm_mb4" / "peers" / "unsloth.json").read_text())
    assert round(row["step_s"] * 10) == 10  # the mean of 10 steps, ~1 s
