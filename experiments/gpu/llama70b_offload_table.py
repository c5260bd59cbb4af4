"""The table of experiments/gpu/llama70b_offload.sh: each phase's measured peak beside the estimator's prediction.

    python experiments/gpu/llama70b_offload_table.py RUNS OUT VARIANT...

Reads RUNS/<variant>/summary.json and metrics.jsonl (the run) and RUNS/<variant>.predict.json (`python -m
medtune.memory <the same overrides> --json`); writes OUT/llama70b_offload.json and OUT/llama70b_offload.md. The
measured value is the phase's peak allocated GiB (`sys/<phase>/peak_alloc_gib`); a run on a CPU (the runbook's
DRY=1) has no allocator, so its process RSS stands in and the error column compares unlike things. The error is
(predicted - measured) / measured; a phase the estimator does not model has no prediction and says so.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

# (phase as the issue names it, its summary key, the estimator's JSON key or None)
PHASES = (
    ("load", "load", "load_peak_gib"),
    ("train", "train", "peak_gib"),
    ("held-out", "eval", "heldout_peak_gib"),
    ("eval", "lm_eval", None),
)
NOT_MODELLED = "not modelled: lm-eval's rows and lengths come from the task's questions, not from the config"
TOLERANCE_PCT = 10.0


def _read_json(path: Path) -> dict:
    """The file's object; {} when it is missing or not JSON (a failed estimate: its .log says why)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def measured(summary: dict, key: str) -> tuple[float | None, str]:
    """The phase's peak allocated GiB, or (a run on a CPU) the process RSS at the phase's end; and which it is."""
    if f"sys/{key}/peak_alloc_gib" in summary:
        return summary[f"sys/{key}/peak_alloc_gib"], "peak_alloc_gib"
    if f"sys/{key}/cpu_rss_gib" in summary:
        return summary[f"sys/{key}/cpu_rss_gib"], "cpu_rss_gib"
    return None, "missing"


def tokens_per_s(metrics_path: Path) -> dict[str, float | None]:
    """Useful tokens/s: the mean over every logged step, and over the steps after the first (warm)."""
    rates = []
    if metrics_path.is_file():
        for line in metrics_path.read_text().splitlines():
            row = json.loads(line) if line.strip() else {}
            if "train/useful_tokens_per_s" in row:
                rates.append(float(row["train/useful_tokens_per_s"]))
    return {
        "useful_tokens_per_s_mean": statistics.fmean(rates) if rates else None,
        "useful_tokens_per_s_warm": statistics.fmean(rates[1:]) if len(rates) > 1 else None,
        "steps_logged": len(rates),
    }


def variant_rows(runs: Path, variant: str) -> dict:
    """One variant: a row per phase, throughput, and the load peak above what loading left allocated."""
    summary = _read_json(runs / variant / "summary.json")
    predict = _read_json(runs / f"{variant}.predict.json")
    rows = []
    for phase, key, field in PHASES:
        value, measure = measured(summary, key)
        predicted = predict.get(field) if field else None
        row = {"phase": phase, "measured_gib": value, "measure": measure, "predicted_gib": predicted}
        if value and predicted is not None:
            row["error_pct"] = 100.0 * (predicted - value) / value
            row["within_10pct"] = abs(row["error_pct"]) <= TOLERANCE_PCT
        elif predicted is None:
            row["note"] = NOT_MODELLED if field is None else "the estimator's JSON has no " + field
        rows.append(row)
    load_state = summary.get("sys/load/alloc_gib")
    load_peak = summary.get("sys/load/peak_alloc_gib")
    out = {
        "status": summary.get("run/status", "no summary (running, or failed before it)"),
        "phases": rows,
        **tokens_per_s(runs / variant / "metrics.jsonl"),
        "mfu": summary.get("train/mfu"),
        "load_above_state_gib": None if load_state is None or load_peak is None else load_peak - load_state,
        "predicted_load_layer_gib": predict.get("load_layer_gib"),
        "predicted_load_root_gib": predict.get("load_root_gib"),
    }
    return out


def _fmt(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def markdown(table: dict[str, dict]) -> str:
    """The tables as markdown: phases per variant, then throughput and the load check."""
    lines = ["| variant | phase | measured GiB | measure | estimator GiB | error % | within 10% |", "|---" * 7 + "|"]
    for variant, res in table.items():
        for r in res["phases"]:
            ok = {True: "yes", False: "no"}.get(r.get("within_10pct"), r.get("note", ""))
            lines.append(
                f"| {variant} | {r['phase']} | {_fmt(r['measured_gib'])} | {r['measure']} | "
                f"{_fmt(r['predicted_gib'])} | {_fmt(r.get('error_pct'), 1)} | {ok} |"
            )
    lines += ["", "| variant | status | useful tokens/s (all steps) | (after the first) | MFU | load peak above the "
              "loaded state GiB | one decoder layer GiB (est.) | root GiB (est.) |", "|---" * 8 + "|"]  # fmt: skip
    for variant, res in table.items():
        lines.append(
            f"| {variant} | {res['status']} | {_fmt(res['useful_tokens_per_s_mean'], 0)} | "
            f"{_fmt(res['useful_tokens_per_s_warm'], 0)} | {_fmt(res['mfu'], 3)} | "
            f"{_fmt(res['load_above_state_gib'])} | "
            f"{_fmt(res['predicted_load_layer_gib'])} | {_fmt(res['predicted_load_root_gib'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """CLI: RUNS OUT VARIANT...; prints the markdown table."""
    if len(argv) < 3:
        print("usage: llama70b_offload_table.py RUNS OUT VARIANT...", file=sys.stderr)
        return 2
    runs, out = Path(argv[0]), Path(argv[1])
    table = {v: variant_rows(runs, v) for v in argv[2:]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "llama70b_offload.json").write_text(json.dumps(table, indent=1) + "\n")
    text = markdown(table)
    (out / "llama70b_offload.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
