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


def _runs(folder: str, calls: tuple[str, ...]) -> dict[str, dict]:
    return {f"{call}/{k}": v for call in calls for k, v in _rows(f"{folder}/{call}").items()}


def _section() -> str:
    readme = (REPO / "README.md").read_text()
    return readme[readme.index("### Speed against peers") : readme.index("Evaluation fits inside the training")]


def test_readme_peer_table_is_the_committed_runs() -> None:
    h = _runs("h_session9", ("d_peers",))
    section = _section()
    for key, bold in (("tnorm/tnorm", True), ("tnorm_mb4/tnorm_mb4", True), ("tnorm/peer:trl_liger", False),
                      ("tnorm/peer:unsloth", False), ("tnorm_mb4/peer:unsloth", False)):  # fmt: skip
        row, mark = h[f"d_peers/{key}"], "**" if bold else ""
        cells = f"| {row['peak_alloc_gib']:.2f} | {mark}{_fmt(row['useful_tokens_per_s'])}{mark} |"
        assert cells in section, f"the table row of {key} is not the run's: {cells}"
        first = f"| {row['first_step_s']:.1f} ({row['process_to_first_step_s']:.1f}) |"
        hundredth = f" {row['process_to_first_step_s'] + 99 * row['step_s']:.0f} |"
        assert first + hundredth in section, f"{key}: first / 100th step not the run's: {first}{hundredth}"
    for rows, peers in (("tnorm", ("unsloth", "trl_liger")), ("tnorm_mb4", ("unsloth",))):
        ours = h[f"d_peers/{rows}/{rows}"]
        for peer in peers:  # a peer missing from the run fails here
            theirs = h[f"d_peers/{rows}/peer:{peer}"]
            ratio = ours["useful_tokens_per_s"] / theirs["useful_tokens_per_s"]
            assert ratio > 1 and f"{ratio:.2f}x" in section  # faster than every peer at the same rows, same call
            assert ours["process_to_first_step_s"] < theirs["process_to_first_step_s"]
            assert ours["step_s"] < theirs["step_s"]  # so the 100th step too
    best = h["d_peers/tnorm/tnorm"]
    assert best["useful_tokens_per_s"] >= 20_000 and best["peak_alloc_gib"] <= 10  # the target, this run


def test_readme_says_what_each_change_bought_from_its_runs() -> None:
    e, f = _rows("e_peers"), _rows("f_direct_dequant")
    g = _runs("g_torch_norm", ("a_fp32_weight", "b_bf16_weight"))
    h = _runs("h_session9", ("a_qk_layout", "c_each_change"))
    figures = {
        "Liger's norm, session 9": h["a_qk_layout/fast/fast"]["useful_tokens_per_s"],
        "q/k norms in place": h["a_qk_layout/tnorm/tnorm"]["useful_tokens_per_s"],
        "before the loss kernel, 8 rows": h["c_each_change/C_tnorm/tnorm_tloss"]["useful_tokens_per_s"],
        "loss kernel, 8 rows": h["c_each_change/B_tnorm/tnorm"]["useful_tokens_per_s"],
        "addmm_ in place, 8 rows": h["c_each_change/A_tnorm/tnorm"]["useful_tokens_per_s"],
        "before the loss kernel, 4 rows": h["c_each_change/C_tnorm_mb4/tnorm_mb4_tloss"]["useful_tokens_per_s"],
        "loss kernel, 4 rows": h["c_each_change/B_tnorm_mb4/tnorm_mb4"]["useful_tokens_per_s"],
        "addmm_ in place, 4 rows": h["c_each_change/A_tnorm_mb4/tnorm_mb4"]["useful_tokens_per_s"],
        "rms_norm=torch 4 rows": g["b_bf16_weight/tnorm_mb4/tnorm_mb4"]["useful_tokens_per_s"],
        "Liger's norm 4 rows": g["b_bf16_weight/fast_mb4/fast_mb4"]["useful_tokens_per_s"],
        "rms_norm=torch 8 rows": g["b_bf16_weight/tnorm/tnorm"]["useful_tokens_per_s"],
        "Liger's norm 8 rows": g["b_bf16_weight/fast/fast"]["useful_tokens_per_s"],
        "Liger's norm 4 rows, another machine": g["a_fp32_weight/fast_mb4/fast_mb4"]["useful_tokens_per_s"],
        "medtune 4 rows, direct dequantisation": f["fast_mb4/fast_mb4"]["useful_tokens_per_s"],
        "previous 4 rows, second machine": f["prev_mb4/prev_mb4"]["useful_tokens_per_s"],
        "previous 8 rows": e["prev/prev"]["useful_tokens_per_s"],
        "fused_base without reentrant": e["fast_hooks/fast_hooks"]["useful_tokens_per_s"],
        "reentrant without fused_base": e["fast_addmm/fast_addmm"]["useful_tokens_per_s"],
    }
    section = _section()
    for what, value in figures.items():
        assert _fmt(value) in section, f"{what}: {_fmt(value)} is not in README's peer section"


def test_the_4_row_unsloth_mean_hides_one_slow_step() -> None:
    """What the README says of unsloth's 4-row row, from its log: ten timed steps in ~10 s, one of them ~6 s."""
    log = (RESULTS / "g_torch_norm" / "c_peers" / "tnorm_mb4" / "peers" / "unsloth.log").read_text()
    clock = [line.split("[", 1)[1][:5] for line in log.replace("\r", "\n").splitlines() if "/13 [0" in line]
    assert "03:29" in clock and "03:35" in clock  # step 11 ended at 03:29, step 12 at 03:35
    row = json.loads((RESULTS / "g_torch_norm" / "c_peers" / "tnorm_mb4" / "peers" / "unsloth.json").read_text())
    assert round(row["step_s"] * 10) == 10  # the mean of 10 steps, ~1 s
