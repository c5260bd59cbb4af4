"""Each mixing ratio against a reference ratio (the paper compares 10:3 with 1:1): difference of seed means.

Every run of a sweep scores the same questions, but seeds move accuracy more than the question sample does (in the
270M sweep the English accuracy of one ratio spans 3.0-4.3 pp across three seeds), so the unit here is the run: the
difference of the two ratios' means across seeds, with a Welch t interval and p-value (unequal variances,
Welch-Satterthwaite degrees of freedom). With three seeds a side the interval is wide; that width is the finding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from medtune.eval.power import POWER
from medtune.eval.stats import format_level
from medtune.report.power import mde_cell, welch_power_columns
from medtune.report.sweep import languages
from medtune.report.watch import markdown_table

CONTRAST_COLUMNS = [
    "ratio", "reference", "metric", "unit", "n_seeds", "n_seeds_ref", "mean", "mean_ref", "diff", "ci_low",
    "ci_high", "p_welch", "sd_pooled", "mde",
]  # fmt: skip


def welch(values: Sequence[float], reference: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """mean(values) - mean(reference) with a Welch t interval and two-sided p; NaN interval under two values a side."""
    from scipy import stats

    a, b = np.asarray(values, dtype=float), np.asarray(reference, dtype=float)
    diff = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    out = {"diff": diff, "ci_low": math.nan, "ci_high": math.nan, "p_welch": math.nan}
    if len(a) < 2 or len(b) < 2:
        return out
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return {**out, "ci_low": diff, "ci_high": diff, "p_welch": 1.0 if diff == 0 else 0.0}
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    p = float(2 * stats.t.sf(abs(diff) / se, df))
    return {"diff": diff, "ci_low": diff - half, "ci_high": diff + half, "p_welch": p}


def default_metrics(runs: pd.DataFrame) -> list[tuple[str, str, float]]:
    """(summary key, unit, scale): per-language accuracy and gold-letter LL, plus the law block when it was run."""
    langs = languages(runs)
    keys = [(f"eval/lang/{lang}/acc", "pp", 100.0) for lang in langs] + [("eval/kormed_law/acc", "pp", 100.0)]
    keys += [(f"eval/lang/{lang}/gold_ll_letter", "nats", 1.0) for lang in langs]
    return [k for k in keys if k[0] in runs]


def contrast_table(
    runs: pd.DataFrame,
    reference: str,
    metrics: Sequence[tuple[str, str, float]] | None = None,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Per ratio other than `reference` and per metric: seed means of both, their difference and its Welch interval.

    Raises ValueError naming the ratios present when the reference has no finished run.
    """
    ok = runs[(runs["status"] == "ok") & runs["ratio"].notna()]
    ratios = ok.sort_values("en_share", kind="stable")["ratio"].unique().tolist()
    if reference not in ratios:
        raise ValueError(
            f"--reference {reference!r}: no finished run has that data_mix.ratio; ratios present: {ratios or 'none'}"
        )
    ref = ok[ok["ratio"] == reference]
    rows = []
    for ratio in (r for r in ratios if r != reference):
        grp = ok[ok["ratio"] == ratio]
        for key, unit, scale in metrics if metrics is not None else default_metrics(ok):
            a, b = grp[key].dropna().astype(float) * scale, ref[key].dropna().astype(float) * scale
            if a.empty or b.empty:
                continue
            stats = welch(a.to_numpy(), b.to_numpy(), confidence)
            power = welch_power_columns(a.to_numpy(), b.to_numpy(), confidence)
            rows.append([ratio, reference, key, unit, len(a), len(b), a.mean(), b.mean(), *stats.values()])
            rows[-1] += [power["sd_pooled"], power["mde"]]
    return pd.DataFrame(rows, columns=CONTRAST_COLUMNS)


def contrast_section(
    table: pd.DataFrame, confidence: float, mix_label: str = "en:ko", reference: str | None = None, why: str = ""
) -> list[str]:
    """The report.md section for a contrast table; with a `reference` but nothing to compare, a section that says
    so and `why` (no section without a reference)."""
    if table.empty:
        if reference is None:
            return []
        note = (
            f"Not computed: the contrast compares the final-evaluation metrics (accuracy, gold-letter log-likelihood) "
            f"of each ratio's runs with those of {reference}, and {why or 'no other ratio has such metrics'}."
        )
        return [f"## Against the {reference} mix", "", note, ""]
    reference = table["reference"].iloc[0]
    level = format_level(confidence)
    note = (
        f"diff = mean over the seeds of a ratio minus the mean over the seeds of {reference}, on the same questions;"
        f" {level} Welch t interval and two-sided p with the seed as the unit (not corrected for the"
        f" {len(table)} comparisons). Accuracy in percentage points, gold-letter log-likelihood in nats. sd: the"
        f" seeds' sd pooled over both sides; MDE: the |diff| the Welch test at {level} detects with"
        f" {format_level(POWER)} power at these seed counts if that sd were the truth (n/a under two seeds a side)."
    )
    header = [mix_label, "metric", "seeds", f"mean ({reference} mean)", f"diff [{level} CI]", "Welch p", "sd"]
    header.append(f"MDE ({format_level(POWER)} power)")
    rows = []
    for _, r in table.iterrows():
        fmt = "{:+.2f}" if r["unit"] == "pp" else "{:+.3f}"
        plain = fmt.replace("+", "")
        ci = "n/a" if not math.isfinite(r["ci_low"]) else f"[{fmt.format(r['ci_low'])}, {fmt.format(r['ci_high'])}]"
        rows.append([
            str(r["ratio"]), f"{r['metric'].removeprefix('eval/')} ({r['unit']})",
            f"{r['n_seeds']} vs {r['n_seeds_ref']}", f"{plain.format(r['mean'])} ({plain.format(r['mean_ref'])})",
            f"{fmt.format(r['diff'])} {ci}", "n/a" if not math.isfinite(r["p_welch"]) else f"{r['p_welch']:.3g}",
            mde_cell(r["sd_pooled"], plain), mde_cell(r["mde"], plain),
        ])  # fmt: skip
    return [f"## Against the {reference} mix", "", note, "", *markdown_table(header, rows), ""]
