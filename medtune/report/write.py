"""Write a sweep's report: report.md, the PNG figures, CSVs of every number, and optionally a W&B report run.

Called by `python -m medtune.report DIR`; the data it shows comes from medtune.report.sweep's loaders.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from medtune.eval.forgetting import verdict
from medtune.eval.stats import format_alpha, format_level
from medtune.report import plots
from medtune.report.confidence import RECOMPUTED
from medtune.report.contrast import contrast_section, contrast_table
from medtune.report.power import PAIRED_HEADER, paired_cells, paired_note
from medtune.report.sweep import (
    across_seeds,
    base_metrics,
    efficiency_table,
    evaluated,
    forgetting_table,
    languages,
    load_sweep,
    mix_languages,
    stages,
)
from medtune.report.trained import trained_section
from medtune.report.watch import guard_table, markdown_table, watch_curves, watch_section

log = logging.getLogger("medtune.report")


@dataclass
class SweepReport:
    """Everything the report shows, as tables (also what the notebook draws from)."""

    runs: pd.DataFrame
    forgetting: pd.DataFrame
    efficiency: pd.DataFrame
    confidence: float
    means: dict[str, dict[str, pd.DataFrame]] = field(default_factory=dict)  # metric -> lang -> across_seeds
    base: dict[str, dict[str, float | None]] = field(default_factory=dict)  # metric -> lang -> base value
    contrast: pd.DataFrame = field(default_factory=pd.DataFrame)  # each ratio vs the reference ratio
    watch: pd.DataFrame = field(default_factory=pd.DataFrame)  # change from base per ratio, group and step
    guard: pd.DataFrame = field(default_factory=pd.DataFrame)  # per run: guard, kept step, watch overhead
    langs: list[str] = field(default_factory=lambda: ["ko", "en"])  # the languages evaluated, in table order
    mix_langs: list[str] = field(default_factory=lambda: ["en", "ko"])  # the mixes' languages, in ratio order
    reference: str | None = None  # --reference: the ratio the others are contrasted with

    @property
    def any_evaluated(self) -> bool:
        """Whether any run has final-evaluation scores (a sweep of stage=train runs has none, only its watch)."""
        return bool(evaluated(self.runs).any())

    @property
    def mix_label(self) -> str:
        """The header of a ratio column: 'en:ko', 'en:ko:ja'."""
        return ":".join(self.mix_langs)


METRICS = ("acc", "gold_ll_letter", "gold_ll_text")


def build(sweep_dir: Path, confidence: float = 0.95, reference: str | None = None) -> SweepReport:
    """Load the sweep and compute every table of the report; `reference`: the ratio the others are contrasted with."""
    runs = load_sweep(sweep_dir, confidence)  # every stored interval restated at this level, or an error
    ok = runs[runs["status"] == "ok"]
    table = forgetting_table(runs, confidence)
    rep = SweepReport(runs, table, efficiency_table(runs), confidence, langs=languages(runs))
    rep.mix_langs, rep.reference = mix_languages(runs), reference
    for metric in METRICS:
        rep.means[metric] = {lang: across_seeds(ok, f"eval/lang/{lang}/{metric}", confidence) for lang in rep.langs}
        rep.base[metric] = base_metrics(runs, metric)
    delta = {lang: across_seeds(table[table["lang"] == lang], "delta_pp", confidence) for lang in rep.langs}
    rep.means["delta_pp"] = delta
    if reference is not None:
        rep.contrast = contrast_table(runs, reference, confidence=confidence)
    rep.watch, rep.guard = watch_curves(runs), guard_table(runs)
    return rep


def figures(rep: SweepReport) -> dict[str, Any]:
    """{file stem: matplotlib Figure} for every plot the data supports."""
    figs: dict[str, Any] = {}
    runs = rep.runs[(rep.runs["status"] == "ok") & rep.runs["en_share"].notna()]
    failed = rep.runs[(rep.runs["status"] != "ok") & rep.runs["en_share"].notna()]
    ticks = pd.concat([runs, failed])  # the x axis shows every swept ratio, finished or not
    failed_shares = tuple(failed["en_share"].astype(float))
    if any(not m.empty for m in rep.means["acc"].values()):
        figs["accuracy_vs_share"] = plots.plot_vs_share(
            runs, "acc", rep.base["acc"], rep.means["acc"], ylabel="accuracy (%)", scale=100, unit="%",
            failed_shares=failed_shares, ticks=ticks, mix_langs=rep.mix_langs,
            title="Accuracy on the medical eval vs English share of the fine-tuning mix", confidence=rep.confidence,
        )  # fmt: skip
    for metric, what in (("gold_ll_letter", "letter"), ("gold_ll_text", "text (summed over its tokens)")):
        if any(not m.empty for m in rep.means[metric].values()):
            figs[f"{metric}_vs_share"] = plots.plot_vs_share(
                runs, metric, rep.base[metric], rep.means[metric], confidence=rep.confidence,
                failed_shares=failed_shares, ticks=ticks, mix_langs=rep.mix_langs,
                ylabel="mean gold-answer log-likelihood (nats)",
                title=f"Log-likelihood of the gold answer {what} vs English share (higher = more probability on "
                "the right answer)",
            )  # fmt: skip
    if not rep.forgetting.empty:
        figs["forgetting"] = plots.plot_forgetting(rep.forgetting, rep.means["delta_pp"], rep.confidence, rep.mix_langs)
    if not rep.efficiency.empty:
        figs["efficiency"] = plots.plot_efficiency(rep.efficiency)
    if not rep.watch.empty:
        figs["watch_curves"] = plots.plot_watch_curves(rep.watch, rep.confidence)
    return figs


def _num(value: Any, fmt: str = "{:.2f}", scale: float = 1.0) -> str:
    if value is None or isinstance(value, str) or not math.isfinite(float(value)):
        return "n/a" if not isinstance(value, str) else value
    return fmt.format(scale * float(value))


def _acc_cell(run: pd.Series, lang: str) -> str:
    key = f"eval/lang/{lang}/acc"
    if pd.isna(run.get(key)):
        return "n/a"
    low, high = run.get(f"{key}_ci_low"), run.get(f"{key}_ci_high")
    return f"{_num(run[key], scale=100)} [{_num(low, '{:.1f}', 100)}, {_num(high, '{:.1f}', 100)}]"


def _short(error: Any, limit: int = 90) -> str:
    """The first sentence of a failure message (runs.csv keeps all of it)."""
    text = str(error or "").split(". ")[0].replace("|", "/").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first(df: pd.DataFrame, key: str) -> float | None:
    """The first non-missing value of a column (the same in every run: a task's n, the base's score)."""
    values = df[key].dropna() if key in df else []
    return float(values.iloc[0]) if len(values) else None


def _task_names(runs: pd.DataFrame) -> list[str]:
    """Evaluation tasks present in the summaries (eval/<task>/acc, not the per-language pools)."""
    return sorted({c.split("/")[1] for c in runs.columns if c.startswith("eval/") and c.endswith("/acc")} - {"lang"})


def _task_section(rep: SweepReport) -> list[str]:
    """Per task: the base accuracy, then each ratio's mean accuracy and mean paired delta across seeds."""
    ok = rep.runs[rep.runs["status"] == "ok"]
    tasks = _task_names(ok)
    if not tasks:
        return []
    ratios = rep.means["acc"][rep.langs[0]]["ratio"].tolist() or sorted(ok["ratio"].dropna().unique())
    header = ["task", "n", "base acc %", *(f"{r}: acc % (delta pp)" for r in ratios)]
    rows = []
    for task in tasks:
        row = [task, _num(_first(ok, f"eval/{task}/n"), "{:.0f}"), _num(_first(ok, f"base/eval/{task}/acc"), scale=100)]
        for ratio in ratios:
            acc = across_seeds(ok[ok["ratio"] == ratio], f"eval/{task}/acc", rep.confidence)
            delta = across_seeds(ok[ok["ratio"] == ratio], f"forgetting/{task}/delta_pp", rep.confidence)
            cell = _num(acc["mean"].iloc[0], scale=100) if len(acc) else "n/a"
            if len(delta):
                cell += f" ({_num(delta['mean'].iloc[0], '{:+.2f}')})"
            row.append(cell)
        rows.append(row)
    note = (
        "Mean over the seeds that finished; delta = mean of the per-run paired differences from the base on the same "
        "questions (each run's interval and McNemar test per task are in its eval/report.md and eval/forgetting.json)."
    )
    return ["## Per task", "", note, "", *markdown_table(header, rows), ""]


def _runs_section(rep: SweepReport) -> list[str]:
    level, done = format_level(rep.confidence), evaluated(rep.runs)
    langs = rep.langs if rep.any_evaluated else []  # no column of n/a when nothing was evaluated at the end
    header = ["run", "status", rep.mix_label, "en share % (weights)", "en share % (tokens)", "seed", "model", "quant"]
    header += ["packing", *(f"{lang} acc % [{level} CI]" for lang in langs), "wall s"]
    rows = []
    for i, r in rep.runs.iterrows():
        status = r["status"] if r["status"] == "ok" else f"**{str(r['status']).upper()}**: {_short(r.get('run/error'))}"
        where = [f"`{r['run']}`", status, str(r["ratio"]), _num(r["en_share"], "{:.1f}", 100)]
        what = [_num(r.get("data_mix/en/share_tokens"), "{:.1f}", 100), str(r["seed"]), str(r["model"])]
        accs = [_acc_cell(r, lang) if done[i] or r["status"] != "ok" else "not evaluated" for lang in langs]
        how = [str(r["quantization"]), str(r["packing"]), *accs]
        rows.append([*where, *what, *how, _num(r.get("run/wall_s"), "{:.0f}")])
    n_failed = int((rep.runs["status"] != "ok").sum())
    intro = f"{len(rep.runs)} runs, {n_failed} failed."
    intro += " Accuracy intervals are per-run Wilson intervals." if rep.any_evaluated else ""
    intro += _no_eval_note(rep)
    if RECOMPUTED in rep.runs and rep.runs[RECOMPUTED].notna().any():
        was = ", ".join(sorted({format_level(v) for v in rep.runs[RECOMPUTED].dropna()}))
        intro += (
            f" {int(rep.runs[RECOMPUTED].notna().sum())} runs were evaluated at {was}: all their intervals and "
            f"significance flags were recomputed at {level} from their stored predictions."
        )
    return ["## Runs", "", intro, "", *markdown_table(header, rows), ""]


def _no_eval_note(rep: SweepReport) -> str:
    """What the report says of finished runs without a final evaluation (stage=train): none, some or all of them."""
    missing = rep.runs[(rep.runs["status"] == "ok") & ~evaluated(rep.runs)]
    if missing.empty:
        return ""
    stage = "/".join(f"`stage={s}`" for s in stages(missing))
    if not rep.any_evaluated:
        return (
            f" **No final evaluation**: no run here was evaluated after training ({stage}), so this report has no "
            "accuracy, per-task, forgetting or contrast tables. What it shows of forgetting is the watch during "
            "training (below): the change from the base model on the watch sets' questions only."
        )
    n = len(missing)
    return (
        f' {n} finished run{" has" if n == 1 else "s have"} no final evaluation ({stage}): "not evaluated" in '
        f"{'its' if n == 1 else 'their'} accuracy columns, and in no accuracy, forgetting or contrast table."
    )


def _share_section(rep: SweepReport, metric: str, title: str, scale: float, fmt: str, png: str) -> list[str]:
    level = format_level(rep.confidence)
    lines = [f"## {title}", "", f"![{title}]({png})", ""]
    header = [rep.mix_label, "en share %"]
    header += [f"{lang} mean [{level} CI across seeds] (seeds)" for lang in rep.langs]
    by_ratio: dict[Any, list[str]] = {}
    for i, lang in enumerate(rep.langs):
        for _, m in rep.means[metric][lang].iterrows():
            first = [str(m["ratio"]), _num(m["en_share"], "{:.1f}", 100)]
            row = by_ratio.setdefault(m["ratio"], first + ["n/a"] * len(rep.langs))
            ci = f"[{_num(m['ci_low'], fmt, scale)}, {_num(m['ci_high'], fmt, scale)}]"
            row[2 + i] = f"{_num(m['mean'], fmt, scale)} {ci} ({int(m['n_seeds'])})"
    base = rep.base[metric]
    base_row = ["base model", "-", *(_num(base.get(lang), fmt, scale) for lang in rep.langs)]
    return [*lines, *markdown_table(header, [*by_ratio.values(), base_row]), ""]


def _forgetting_section(rep: SweepReport) -> list[str]:
    level = format_level(rep.confidence)
    header = ["run", rep.mix_label, "seed", "lang", "n", "base acc %", "run acc %"]
    header += [f"delta pp [{level} paired bootstrap CI]", "McNemar p", "Holm p", "verdict", *PAIRED_HEADER]
    rows = []
    for _, r in rep.forgetting.iterrows():
        ci = f"[{_num(r['ci_low_pp'], '{:+.2f}')}, {_num(r['ci_high_pp'], '{:+.2f}')}]"
        where = [f"`{r['run']}`", str(r["ratio"]), str(r["seed"]), r["lang"], _num(r["n"], "{:.0f}")]
        acc = [_num(r["base_acc"], scale=100), _num(r["run_acc"], scale=100), f"{_num(r['delta_pp'], '{:+.2f}')} {ci}"]
        tests = [_num(r["p_mcnemar"], "{:.3g}"), _num(r["p_holm"], "{:.3g}"), verdict(r["significant"], r["p_mcnemar"])]
        rows.append([*where, *acc, *tests, *paired_cells(r)])
    note = (
        f"delta = fine-tuned minus base accuracy on the same questions (negative = forgetting). Verdict: exact "
        f"McNemar p < {format_alpha(rep.confidence)} for that run alone; Holm p corrects for the {len(rows)} tests of "
        "this table." + _bootstrap_note(rep.runs, rep.langs) + paired_note(rep.confidence)
    )
    return ["## Forgetting", "", "![forgetting](forgetting.png)", "", note, "", *markdown_table(header, rows), ""]


def _bootstrap_note(runs: pd.DataFrame, langs: list[str]) -> str:
    """The resamples and seed of the runs' paired bootstrap intervals, when their summaries record them."""
    settings = set()
    for _, run in runs.iterrows():
        for lang in langs:
            pre = f"forgetting/{lang}/bootstrap_"
            samples, seed = run.get(pre + "samples"), run.get(pre + "seed")
            if pd.notna(samples) and pd.notna(seed):
                settings.add(f"{int(samples)} resamples, seed {int(seed)}")
    return f" Paired bootstrap: {'; '.join(sorted(settings))}." if settings else ""


def _efficiency_section(rep: SweepReport) -> list[str]:
    eff = rep.efficiency
    keys = [k for k in eff.columns if k not in ("config", "n_runs")]
    rows = [[str(r["config"]), str(r["n_runs"]), *(_num(r[k], "{:,.2f}") for k in keys)] for _, r in eff.iterrows()]
    return [
        "## Efficiency",
        "",
        "![efficiency](efficiency.png)",
        "",
        "Mean over the runs of each configuration. `sys/<phase>/peak_*_gib`: peak GPU memory allocated / reserved by"
        " this process (rank 0) in that phase (train: the training loop; lm_eval: the evaluation stage), GiB."
        " `train/useful_tokens_per_s`: non-pad tokens trained per second, per rank. `train/mfu`: model FLOPs"
        " utilisation against the GPU's dense bf16 peak. Runs that shared a GPU measure the shared throughput.",
        "",
        *markdown_table(["configuration", "runs", *keys], rows),
        "",
    ]


def markdown(rep: SweepReport, sweep_dir: Path, figs: dict[str, Any]) -> str:
    """The whole report.md."""
    lines = [f"# Sweep report: `{sweep_dir}`", "", *_runs_section(rep), *trained_section(rep.runs, rep.mix_langs)]
    if "accuracy_vs_share" in figs:
        lines += _share_section(rep, "acc", "Accuracy (%) vs English share", 100, "{:.2f}", "accuracy_vs_share.png")
    for metric in ("gold_ll_letter", "gold_ll_text"):
        if f"{metric}_vs_share" in figs:
            title = f"Gold-answer log-likelihood ({metric.rsplit('_', 1)[1]}, nats) vs English share"
            lines += _share_section(rep, metric, title, 1.0, "{:.3f}", f"{metric}_vs_share.png")
    lines += _task_section(rep)
    why = "no run here has a final evaluation (see Runs)" if not rep.any_evaluated else ""
    lines += contrast_section(rep.contrast, rep.confidence, rep.mix_label, rep.reference, why)
    if "forgetting" in figs:
        lines += _forgetting_section(rep)
    lines += watch_section(rep.watch, rep.guard, rep.confidence, rep.mix_label)
    if "efficiency" in figs:
        lines += _efficiency_section(rep)
    return "\n".join(lines)


def write(sweep_dir: Path, out_dir: Path, confidence: float = 0.95, reference: str | None = None) -> SweepReport:
    """Write report.md, the PNGs and runs.csv / forgetting.csv / efficiency.csv / by_share.csv (contrast.csv with a
    reference ratio, watch_curves.csv and watch_guard.csv when the runs watched) into out_dir. Without any final
    evaluation (stage=train runs) forgetting.csv, by_share.csv and contrast.csv are not written: report.md says why."""
    rep = build(sweep_dir, confidence, reference)  # first: a wrong path must not leave an empty report dir behind
    out_dir.mkdir(parents=True, exist_ok=True)
    figs = figures(rep)
    for stem, fig in figs.items():
        fig.savefig(out_dir / f"{stem}.png", dpi=120)
    (out_dir / "report.md").write_text(markdown(rep, sweep_dir, figs) + "\n")
    rep.runs.drop(columns=["path"]).to_csv(out_dir / "runs.csv", index=False)
    rep.efficiency.to_csv(out_dir / "efficiency.csv", index=False)
    if rep.any_evaluated:  # else these tables have no row, and an empty table would read as a result
        rep.forgetting.to_csv(out_dir / "forgetting.csv", index=False)
        means = [m.assign(metric=metric, lang=lang) for metric, by in rep.means.items() for lang, m in by.items()]
        pd.concat([m for m in means if not m.empty] or [pd.DataFrame()]).to_csv(out_dir / "by_share.csv", index=False)
        if reference is not None:
            rep.contrast.to_csv(out_dir / "contrast.csv", index=False)
    if not rep.watch.empty or not rep.guard.empty:
        rep.watch.to_csv(out_dir / "watch_curves.csv", index=False)
        rep.guard.to_csv(out_dir / "watch_guard.csv", index=False)
    log.info("report written to %s (%d runs, %d plots)", out_dir, len(rep.runs), len(figs))
    return rep
