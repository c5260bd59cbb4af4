"""search.md and search.png: the runs, the Pareto front, the recommended shares and how sure, predicted vs measured.

text = search_markdown(result)          # result: search.run.Result
plot_search(result, out / "search.png")  # when matplotlib is there (it is optional, as for medtune.report)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from medtune.search.fit import pareto
from medtune.search.scores import UNITS

log = logging.getLogger("medtune.search")
WHAT = {"gold_ll": "gold-letter log-likelihood", "acc": "letter accuracy"}


def _f(x: float) -> str:
    return f"{x:+.4f}"


def runs_table(result: Any) -> list[str]:
    """Per share tried: seeds that finished, the varied language's trained share, each group's measured change."""
    metric, groups = result.scfg.metric, [*result.scfg.target, *result.scfg.protect]
    lines = [
        f"| {result.scfg.vary} share | seeds ok | trained share | "
        + " | ".join(f"{g} {metric}" for g in groups)
        + " | "
        + " | ".join(f"{g} acc (pp)" for g in groups)
        + " | Pareto |",
        "|" + "---|" * (4 + 2 * len(groups)),
    ]
    front = pareto([(row["target"], row["protect"]) for row in result.by_share])
    for row, best in zip(result.by_share, front, strict=True):
        cells = [f"{row['share']:.3f}", str(row["n"]), f"{row['trained_share']:.3f}"]
        cells += [_f(row["means"][g][metric]) for g in groups]
        cells += [f"{row['means'][g]['acc']:+.1f}" for g in groups]
        lines.append("| " + " | ".join(cells) + f" | {'yes' if best else ''} |")
    return lines


def recommendation_lines(result: Any) -> list[str]:
    """The recommended shares (or 'no safe share'), the target's gain, each protected group's change and P(safe)."""
    scfg, rec = result.scfg, result.rec
    unit, pct = UNITS[scfg.metric], f"{100 * scfg.level:g}%"
    if rec.share is None:
        lines = [
            f"**No safe share**: at no {scfg.vary} share between {scfg.shares[0]:g} and {scfg.shares[-1]:g} does every "
            f"protected group stay above -{scfg.margin:g} {unit} with {pct} confidence. Closest: {scfg.vary} share "
            f"{rec.closest_share:.3f}, which a margin of {rec.needed_margin:.4f} {unit} would allow.",
            "",
            f"At that share ({pct} intervals):",
        ]
    else:
        lines = [
            f"**Recommended**: {result.ratio_at(rec.share)} ({scfg.vary} share {rec.share:.3f}): the highest "
            f"fitted target gain among the shares whose protected change stays above -{scfg.margin:g} {unit} with "
            f"{pct} confidence (one-sided bootstrap bound).",
            "",
            f"How sure ({pct} bootstrap intervals over seeds and questions):",
        ]
    t = rec.target
    lines.append(f"- target {', '.join(scfg.target)}: {_f(t['point'])} {unit} [{_f(t['low'])}, {_f(t['high'])}]")
    for group, d in rec.protect.items():
        lines.append(
            f"- protected {group}: {_f(d['point'])} {unit} [{_f(d['low'])}, {_f(d['high'])}]; one-sided lower "
            f"bound {_f(d['lower'])}; above -{scfg.margin:g} in {100 * d['p_above']:.1f}% of the draws"
        )
    safe = result.grid[rec.safe]
    if len(safe):
        lines.append(
            f"- safe {scfg.vary} shares on the grid: {safe.min():.3f} to {safe.max():.3f} "
            f"({len(safe)} of {len(result.grid)})"
        )
    if len(scfg.seeds) == 1:
        lines.append("- one seed per share: the intervals hold the questions' noise only, not the seeds'.")
    return lines


def confirm_lines(result: Any) -> list[str]:
    """Predicted (the proxies' fit) against measured (the full run), per group."""
    c = result.confirmed
    if c is None:
        return []
    unit = UNITS[result.scfg.metric]
    lines = ["", "## Confirming run", "", f"{c['name']} ({c['status']}), {c['steps']} steps:", ""]
    if c["status"] != "ok":
        return [*lines, f"the run failed: {c.get('error', '')} (log: {c['log']})"]
    lines += ["| group | predicted | measured | measured interval |", "|---|---|---|---|"]
    for group, (pred, meas, low, high) in c["groups"].items():
        lines.append(f"| {group} | {_f(pred)} | {_f(meas)} | [{_f(low)}, {_f(high)}] |")
    lines += ["", f"In {unit}; predicted at {result.scfg.steps} proxy steps, measured at {c['steps']} steps."]
    return lines


def search_markdown(result: Any) -> str:
    """The whole search.md."""
    scfg = result.scfg
    lines = [
        f"# Share search: {scfg.vary} (`{' '.join(result.overrides)}`)",
        "",
        f"{len(result.jobs)} proxy runs ({len(scfg.shares)} shares x {len(scfg.seeds)} seeds, {scfg.steps} steps "
        f"each): {result.n_ok} finished, {len(result.failed)} failed. Target: {', '.join(scfg.target)}; protected: "
        f"{', '.join(scfg.protect)} (margin {scfg.margin:g} {UNITS[scfg.metric]}). Change = run minus base model on "
        f"the same questions ({WHAT[scfg.metric]}).",
        "",
        "## Recommendation",
        "",
        *recommendation_lines(result),
        "",
        "## Runs by share (mean over seeds; Pareto: no other share is better in both target and worst protected)",
        "",
        *runs_table(result),
        "",
        f"Fit: a polynomial of degree {result.degree} in the {scfg.vary} share per group (the other languages' shares "
        f"move with it), {scfg.bootstrap_samples} bootstrap draws resampling seeds within each share and questions.",
    ]
    if result.failed:
        lines += ["", "## Failed runs", ""] + [f"- {name}: {why}" for name, why in result.failed.items()]
    return "\n".join([*lines, *confirm_lines(result)]) + "\n"


def plot_search(result: Any, path: Path) -> Path | None:
    """Fitted curves with bands and measured means against the share, and the Pareto plane; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib not installed: no search.png")
        return None
    scfg = result.scfg
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for group, curve in result.curves.items():
        low, high = curve.interval(scfg.level)
        (line,) = left.plot(result.grid, curve.point, label=group)
        left.fill_between(result.grid, low, high, alpha=0.2, color=line.get_color())
        shares = [row["share"] for row in result.by_share]
        left.plot(shares, [row["means"][group][scfg.metric] for row in result.by_share], "o", color=line.get_color())
    left.axhline(-scfg.margin, color="k", ls="--", lw=1, label=f"-margin ({scfg.margin:g})")
    if result.rec.share is not None:
        left.axvline(result.rec.share, color="g", lw=1, label="recommended")
    left.set(xlabel=f"{scfg.vary} share", ylabel=f"change from base ({UNITS[scfg.metric]})")
    left.legend(fontsize=7)
    points = np.array([(row["target"], row["protect"]) for row in result.by_share])
    right.plot(points[:, 0], points[:, 1], "o-")
    for row, (x, y) in zip(result.by_share, points, strict=True):
        right.annotate(f"{row['share']:.2f}", (x, y), fontsize=7)
    right.axhline(-scfg.margin, color="k", ls="--", lw=1)
    right.set(xlabel="target gain", ylabel="worst protected change", title="tried shares")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
