"""The report's figures, drawn on plain matplotlib Figures (no pyplot state, no GUI backend needed).

    fig = plot_vs_share(runs, "acc", base, ylabel="accuracy (%)", title="...", scale=100)
    fig.savefig("accuracy_vs_share.png")

Every figure reads without the report's text: titled panels, axis labels with units, the base model as a labelled
dashed line, single runs with their own intervals, and the mean across seeds with its interval across seeds. There
is one panel per language evaluated, each in its own colour (Korean red and English blue as in the paper's
figures; any other language a colour of its own from PALETTE).
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from medtune.config import language_name
from medtune.eval.stats import format_alpha, format_level
from medtune.report.sweep import TRAIN_ALLOC, TRAIN_RESERVED

MEAN_COLOR = {"ko": "#c0392b", "en": "#1f5fa8"}  # the paper's two languages keep their colours
RUN_COLOR = {"ko": "#e6a39b", "en": "#9dbbe0"}
# every other language, in order of appearance: hues well apart from each other and from Korean red and English blue
PALETTE = ("#2a9d3f", "#e07b10", "#7b3fa0", "#138d90", "#8c564b", "#c2417f", "#9a9a1a", "#4d4d4d", "#111111")
GOLDEN = 0.618033988749895  # beyond the palette: hue steps that land consecutive languages far apart


def lang_label(lang: str) -> str:
    """'Japanese (ja)': a panel title."""
    return f"{language_name(lang)} ({lang})"


def lang_colors(lang: str, langs: Sequence[str]) -> tuple[str, str]:
    """(mean colour, lighter run colour) of `lang`: ko and en keep the paper's, the others take the palette."""
    if lang in MEAN_COLOR:
        return MEAN_COLOR[lang], RUN_COLOR[lang]
    others = [x for x in langs if x not in MEAN_COLOR]
    index = others.index(lang) if lang in others else len(others)
    if index < len(PALETTE):
        mean = tuple(int(PALETTE[index][i : i + 2], 16) / 255 for i in (1, 3, 5))
    else:
        mean = colorsys.hsv_to_rgb((0.33 + GOLDEN * index) % 1.0, 0.8, 0.45 + 0.3 * (index % 2))

    def hexed(rgb: Sequence[float]) -> str:
        return "#" + "".join(f"{round(255 * c):02x}" for c in rgb)

    return hexed(mean), hexed([0.45 * c + 0.55 for c in mean])


def x_label(mix_langs: Sequence[str]) -> str:
    """The share axis: 'English share of the training mix (%)  [en / (en + ko) by weight]'."""
    return f"English share of the training mix (%)  [en / ({' + '.join(mix_langs)}) by weight]"


def _share_ticks(ax: object, runs: pd.DataFrame, mix_langs: Sequence[str] = ("en", "ko")) -> None:
    """Ticks at the swept shares, labelled with the ratio and the share in %."""
    ticks = runs.drop_duplicates("en_share").sort_values("en_share")
    labels = [f"{r}\n{100 * s:.0f}%" for r, s in zip(ticks["ratio"], ticks["en_share"], strict=True)]
    ax.set_xticks(100 * ticks["en_share"], labels)
    ax.set_xlim(-6, 106)
    ax.set_xlabel(x_label(mix_langs))
    ax.grid(alpha=0.3)


def _jitter(seeds: pd.Series) -> np.ndarray:
    """Spread the runs of one ratio sideways (by seed rank) so their intervals do not hide each other."""
    rank = seeds.rank(method="dense").to_numpy() - 1
    n = max(1, int(rank.max()) + 1) if len(rank) else 1
    return (rank - (n - 1) / 2) * 2.5


def _runs_with_ci(ax: object, sub: pd.DataFrame, key: str, scale: float, color: str, label: str) -> None:
    x = 100 * sub["en_share"].to_numpy() + _jitter(sub["seed"])
    y = scale * sub[key].to_numpy(dtype=float)
    low, high = f"{key}_ci_low", f"{key}_ci_high"
    if low in sub and high in sub and sub[low].notna().any():
        err = np.vstack([y - scale * sub[low].to_numpy(float), scale * sub[high].to_numpy(float) - y])
        ax.errorbar(x, y, yerr=np.clip(err, 0, None), fmt="o", ms=4, color=color, elinewidth=1, capsize=2, label=label)
    else:
        ax.plot(x, y, "o", ms=4, color=color, label=label)


def _mean_line(ax: object, mean: pd.DataFrame, scale: float, color: str, confidence: float) -> None:
    n_max = int(mean["n_seeds"].max())
    label = f"mean of {n_max} seeds" if n_max > 1 else "run (1 seed)"
    ax.plot(100 * mean["en_share"], scale * mean["mean"], "-D", ms=6, lw=2, color=color, label=label)
    if mean["ci_low"].notna().any():
        ax.fill_between(
            100 * mean["en_share"],
            scale * mean["ci_low"],
            scale * mean["ci_high"],
            color=color,
            alpha=0.15,
            label=f"{format_level(confidence)} interval across seeds",
        )


def _language_axes(means: dict[str, pd.DataFrame]) -> tuple[Figure, Any, list[str]]:
    """One panel per language that has results, side by side with a shared y axis."""
    langs = [lang for lang in means if not means[lang].empty]
    fig = Figure(figsize=(6.2 * max(1, len(langs)), 4.8), layout="constrained")
    return fig, fig.subplots(1, max(1, len(langs)), sharey=True, squeeze=False)[0], langs


def plot_vs_share(
    runs: pd.DataFrame,
    metric: str,
    base: dict[str, float | None],
    means: dict[str, pd.DataFrame],
    *,
    ylabel: str,
    title: str,
    scale: float = 1.0,
    unit: str = "",
    confidence: float = 0.95,
    failed_shares: tuple[float, ...] = (),
    ticks: pd.DataFrame | None = None,
    mix_langs: Sequence[str] = ("en", "ko"),
) -> Figure:
    """One panel per language: eval/lang/<lang>/<metric> of each run and the seed mean against the English share."""
    fig, axes, langs = _language_axes(means)
    level = format_level(confidence)
    for ax, lang in zip(axes, langs, strict=False):
        key = f"eval/lang/{lang}/{metric}"
        sub = runs[runs[key].notna()]
        run_label = f"single run ({level} Wilson CI)" if f"{key}_ci_low" in sub else "single run"
        mean_color, run_color = lang_colors(lang, langs)
        _runs_with_ci(ax, sub, key, scale, run_color, run_label)
        _mean_line(ax, means[lang], scale, mean_color, confidence)
        if base.get(lang) is not None and math.isfinite(base[lang]):
            value = scale * base[lang]
            ax.axhline(value, ls="--", lw=1.5, color="0.3", label=f"base model (no fine-tuning): {value:.2f}{unit}")
            ax.annotate(f"base {value:.2f}{unit}", (1.0, value), xycoords=("axes fraction", "data"), xytext=(-4, 3),
                        textcoords="offset points", ha="right", va="bottom", fontsize=8, color="0.3")  # fmt: skip
        if failed_shares:  # a job that died still shows where the curve has a hole
            ax.plot([100 * x for x in failed_shares], [0.04] * len(failed_shares), "x", ms=9, mew=2, color="black",
                    transform=ax.get_xaxis_transform(), label="failed run (no result)")  # fmt: skip
        ax.set_title(lang_label(lang))
        _share_ticks(ax, runs if ticks is None else ticks, mix_langs)
        ax.legend(fontsize=8, loc="best")
    axes[0].set_ylabel(ylabel)
    fig.suptitle(title, fontsize=12)
    return fig


def plot_forgetting(
    table: pd.DataFrame,
    means: dict[str, pd.DataFrame],
    confidence: float = 0.95,
    mix_langs: Sequence[str] = ("en", "ko"),
) -> Figure:
    """Change in accuracy vs the base model (pp) per language; filled markers are significant (McNemar)."""
    fig, axes, langs = _language_axes(means)
    level = format_level(confidence)
    for ax, lang in zip(axes, langs, strict=False):
        sub = table[table["lang"] == lang]
        x = 100 * sub["en_share"].to_numpy() + _jitter(sub["seed"])
        y = sub["delta_pp"].to_numpy(float)
        err = np.vstack([y - sub["ci_low_pp"].to_numpy(float), sub["ci_high_pp"].to_numpy(float) - y])
        mean_color, run_color = lang_colors(lang, langs)
        ax.errorbar(x, y, yerr=np.clip(np.nan_to_num(err), 0, None), fmt="none", color=run_color, capsize=2)
        sig = sub["significant"].fillna(False).astype(bool).to_numpy()
        ax.plot(
            x[sig],
            y[sig],
            "o",
            ms=7,
            color=mean_color,
            label=f"run, significant (McNemar p < {format_alpha(confidence)})",
        )
        ax.plot(x[~sig], y[~sig], "o", ms=7, mfc="white", color=mean_color, label="run, not significant")
        _mean_line(ax, means[lang], 1.0, mean_color, confidence)
        ax.axhline(0, ls="--", lw=1.5, color="0.3", label="base model (no change)")
        ax.set_title(f"{lang_label(lang)}: bars = {level} paired bootstrap CI")
        _share_ticks(ax, table, mix_langs)
        ax.legend(fontsize=8, loc="best")
    axes[0].set_ylabel("accuracy change vs base model (percentage points)")
    fig.suptitle("Forgetting: fine-tuned minus base accuracy, same questions (negative = forgotten)", fontsize=12)
    return fig


def _bars(ax: object, labels: list[str], values: np.ndarray, fmt: str, color: str, **kwargs: object) -> None:
    bars = ax.bar(labels, values, color=color, **kwargs)
    ax.bar_label(bars, [fmt.format(v) if math.isfinite(v) else "n/a" for v in values], fontsize=8, padding=2)


def plot_efficiency(eff: pd.DataFrame) -> Figure:
    """Peak GPU memory (GiB) and useful tokens/s per configuration, mean over its runs."""
    fig = Figure(figsize=(max(8.0, 1.6 * len(eff) + 4), 4.8), layout="constrained")
    mem_ax, speed_ax = fig.subplots(1, 2)
    labels = eff["config"].tolist()
    if TRAIN_RESERVED in eff:
        _bars(mem_ax, labels, eff[TRAIN_RESERVED].to_numpy(float), "{:.2f}", "#d5dbe3", label="reserved")
    if TRAIN_ALLOC in eff:
        _bars(mem_ax, labels, eff[TRAIN_ALLOC].to_numpy(float), "{:.2f}", "#4a6fa5", label="allocated")
    if TRAIN_RESERVED in eff or TRAIN_ALLOC in eff:
        mem_ax.legend(fontsize=8)
    else:
        mem_ax.text(0.5, 0.5, "no GPU memory recorded (CPU runs)", ha="center", va="center", transform=mem_ax.transAxes)
    mem_ax.set_ylabel("training peak GPU memory per rank (GiB)")
    mem_ax.set_title("Peak memory per configuration (lower is better)")
    speed_key = "train/useful_tokens_per_s"
    if speed_key in eff:
        _bars(speed_ax, labels, eff[speed_key].to_numpy(float), "{:,.0f}", "#3c8d5a")
    speed_ax.set_ylabel("training throughput (useful, non-padding tokens/s)")
    speed_ax.set_title("Throughput per configuration (higher is better)")
    for ax in (mem_ax, speed_ax):
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.15)
    fig.suptitle("Efficiency: mean over the runs of each configuration", fontsize=12)
    return fig


def _watch_panels(curves: pd.DataFrame) -> list[str]:
    """The groups to draw: languages first, then each watch set that is not its language's only set (worst_lang
    and a language's single set would repeat a language panel point for point)."""

    def points(group: str) -> tuple:
        c = curves[curves["group"] == group].sort_values(["ratio", "step"])
        return tuple(zip(c["ratio"], c["step"], c["mean"], strict=True))

    groups = [g for g in curves["group"].unique() if g != "worst_lang"]
    langs = {points(g) for g in groups if g.startswith("lang/")}
    groups = [g for g in groups if g.startswith("lang/") or points(g) not in langs]
    return sorted(groups, key=lambda g: (not g.startswith("lang/"), g))


def plot_watch_curves(curves: pd.DataFrame, confidence: float = 0.95) -> Figure:
    """Change from base against the training step, one panel per language and watch set, one line per ratio."""
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    groups = _watch_panels(curves)
    shares = sorted(curves["en_share"].unique())
    palette = colormaps["tab10"]  # one distinct colour per ratio, in the order of the English share
    cols = min(3, max(1, len(groups)))
    rows = math.ceil(len(groups) / cols) if groups else 1
    fig = Figure(figsize=(5.6 * cols, 4.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, group in zip(axes, groups, strict=False):
        sub = curves[curves["group"] == group]
        for (ratio, share), c in sub.groupby(["ratio", "en_share"], sort=True):
            c = c.sort_values("step")
            seeds = int(c["n_seeds"].max())
            color = palette(shares.index(share) % 10)
            ax.plot(c["step"], c["mean"], "-o", ms=3, lw=1.8, color=color, label=f"{ratio} ({seeds} seed(s))")
            low, high = ("seed_low", "seed_high") if seeds > 1 else ("ci_low", "ci_high")
            ax.fill_between(c["step"], c[low], c[high], color=color, alpha=0.15)
        ax.axhline(0, ls="--", lw=1.2, color="0.3", label="base model (no change)")
        name = group.removeprefix("lang/")
        ax.set_title(lang_label(name) if group.startswith("lang/") else f"set {group}")
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in axes[len(groups) :]:
        ax.set_visible(False)
    axes[0].set_ylabel("gold-letter log-likelihood change vs base (nats)")
    band = f"band: lowest to highest seed (one seed: its {format_level(confidence)} paired bootstrap CI)"
    fig.suptitle(f"Change from base during training, one line per mixing ratio\n{band}", fontsize=11)
    return fig
