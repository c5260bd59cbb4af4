"""The watch across a sweep: each run's series from its metrics.jsonl, curves per ratio, the guard and keep records.

    series = load_watch_series(run_dir)     # one row per watched step: step and every watch/... key
    curves = watch_curves(runs)             # per ratio, group and step: seeds, mean, band across seeds, paired CI
    table = guard_table(runs)               # per run: where the guard fired (values, test), the step kept, overhead
    lines = watch_section(curves, table)    # the report.md section

A curve is a group's change from base (`watch/<group>/delta_gold_ll`: lang/<language>, a set, worst_lang) against
the training step, one per ratio: the mean over the seeds that finished, a band from the lowest to the highest seed,
and the mean of the runs' own paired intervals (with one seed, the band the plot draws).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from medtune.eval.stats import format_level

METRIC = "delta_gold_ll"
CURVE_COLUMNS = ["ratio", "en_share", "group", "step", "n_seeds", "mean", "seed_low", "seed_high", "ci_low", "ci_high"]
GUARD_KEYS = ("guard/step", "guard/group", "guard/delta", "guard/ci_low", "guard/ci_high", "guard/margin")


def load_watch_series(run_dir: Path) -> pd.DataFrame:
    """The watched steps of one run (metrics.jsonl lines that carry watch/step); empty when it did not watch."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return pd.DataFrame()
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if '"watch/step"' in line:
            row = json.loads(line)
            rows.append({k: v for k, v in row.items() if k == "step" or k.startswith("watch/")})
    return pd.DataFrame(rows)


def _long(series: pd.DataFrame) -> pd.DataFrame:
    """(group, step, value, ci_low, ci_high) rows of one run's change from base."""
    out = []
    for key in series.columns:
        if not (key.startswith("watch/") and key.endswith(f"/{METRIC}")):
            continue
        group = key.removeprefix("watch/").removesuffix(f"/{METRIC}")
        low, high = series.get(f"{key}_ci_low"), series.get(f"{key}_ci_high")
        nan = pd.Series(math.nan, index=series.index)
        part = pd.DataFrame({"step": series["step"], "value": series[key]})
        out.append(part.assign(group=group, ci_low=nan if low is None else low, ci_high=nan if high is None else high))
    return pd.concat(out) if out else pd.DataFrame(columns=["step", "value", "group", "ci_low", "ci_high"])


def watch_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """Per ratio, group and watched step: the seeds that have it, their mean, lowest and highest, mean paired CI."""
    ok = runs[(runs["status"] == "ok") & runs["en_share"].notna()] if len(runs) else runs
    frames = []
    for _, run in ok.iterrows():
        series = load_watch_series(Path(run["path"]))
        if not series.empty:
            seed = run.get("seed", run["path"])  # a run without a recorded seed counts as one of its own
            frames.append(_long(series).assign(ratio=run["ratio"], en_share=run["en_share"], seed=seed))
    if not frames:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    grouped = pd.concat(frames).groupby(["ratio", "en_share", "group", "step"])
    curves = grouped.agg(
        n_seeds=("seed", "nunique"),  # distinct seeds (two runs of one seed count once)
        mean=("value", "mean"),
        seed_low=("value", "min"),
        seed_high=("value", "max"),
        ci_low=("ci_low", "mean"),
        ci_high=("ci_high", "mean"),
    ).reset_index()
    return curves.sort_values(["group", "en_share", "step"]).reset_index(drop=True)[CURVE_COLUMNS]


def guard_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per run that watched: the guard's record (when it fired: step, group, change, interval, margin, test), the
    step keep=best kept, and the watch's share of the training time."""
    cols = ["run", "ratio", "seed", "guard/fired", *GUARD_KEYS, "guard/level", "guard/action", "guard/test"]
    cols += ["keep/step", "keep/by", "keep/value", "keep/last_step", "keep/last_value", "watch/overhead_frac"]
    if "watch/total_s" not in runs:
        return pd.DataFrame(columns=cols)
    watched = runs[runs["watch/total_s"].notna()]
    return watched.reindex(columns=cols).reset_index(drop=True)


def _cell(value: object, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return fmt.format(value) if isinstance(value, int | float) else str(value)


def _trajectory_rows(curves: pd.DataFrame) -> list[list[str]]:
    """Per ratio and group: the change at the first and last watched step and the lowest one, with its step."""
    rows = []
    for (group, ratio), c in curves.groupby(["group", "ratio"], sort=False):
        c = c.sort_values("step")
        low = c.loc[c["mean"].idxmin()]
        first, last = c.iloc[0], c.iloc[-1]
        rows.append([
            group, str(ratio), str(int(c["n_seeds"].max())),
            f"{first['mean']:+.3f} (step {int(first['step'])})", f"{low['mean']:+.3f} (step {int(low['step'])})",
            f"{last['mean']:+.3f} [{_cell(last['ci_low'], '{:+.3f}')}, {_cell(last['ci_high'], '{:+.3f}')}] "
            f"(step {int(last['step'])})",
        ])  # fmt: skip
    return rows


def _guard_rows(table: pd.DataFrame) -> list[list[str]]:
    rows = []
    for _, r in table.iterrows():
        fired = r["guard/fired"]
        guard = "off" if pd.isna(fired) else ("fired: " + _cell(r["guard/test"], "{}") if fired else "did not fire")
        where = _cell(r["guard/step"], "{:.0f}") if fired == 1 else "-"
        kept = "-" if pd.isna(r["keep/step"]) else f"{r['keep/step']:.0f} ({r['keep/by']} {r['keep/value']:+.3f})"
        last = "-" if pd.isna(r["keep/last_step"]) else f"{r['keep/last_step']:.0f} ({r['keep/last_value']:+.3f})"
        rows.append([f"`{r['run']}`", str(r["ratio"]), str(r["seed"]), guard, where, kept, last])
        rows[-1].append(_cell(100 * r["watch/overhead_frac"], "{:.1f}"))
    return rows


def watch_section(curves: pd.DataFrame, table: pd.DataFrame, confidence: float, mix_label: str = "en:ko") -> list[str]:
    """The report.md section: the curves' figure, when and how far each ratio moved, the guard and keep records.
    `mix_label` heads the ratio columns ('en:ko', 'en:ko:ja')."""
    if curves.empty and table.empty:
        return []
    level = format_level(confidence)
    header = ["group", mix_label, "seeds", "first watched", "lowest (step)", f"last [{level} paired CI]"]
    note = (
        "Change of the mean gold-letter log-likelihood from the base model on the same watch questions (nats; "
        "negative = the run puts less probability on the right answer than the base did), mean over seeds; the "
        "interval is the mean of the runs' own paired bootstrap intervals. In the figure the band spans the seeds "
        "(with one seed: the run's paired interval)."
    )
    lines = ["## Forgetting as it happens (watch)", "", "![watch curves](watch_curves.png)", "", note, ""]
    lines += markdown_table(header, _trajectory_rows(curves)) if not curves.empty else []
    if not table.empty:
        guard_header = ["run", mix_label, "seed", "guard", "stopped/marked at step", "kept step (criterion)"]
        lines += ["", "Guard, kept step and the watch's cost (its time over the rest of the training loop's):", ""]
        lines += markdown_table([*guard_header, "last step (criterion)", "watch overhead %"], _guard_rows(table))
    return [*lines, ""]


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines (the report's tables all go through here)."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]
