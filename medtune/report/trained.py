"""The report's "Trained mix" table: per run, the passes over its planned mix and each language's planned and trained
share, from summary.json's `data_mix/...` (the plan) and `trained_mix/...` (what the loop took) keys."""

from __future__ import annotations

import pandas as pd

from medtune.report.watch import markdown_table


def trained_section(runs: pd.DataFrame, langs: list[str]) -> list[str]:
    """The section as markdown lines; [] when no run recorded what it trained (runs older than the record)."""
    if "trained_mix/passes" not in runs or runs["trained_mix/passes"].isna().all():
        return []
    header = ["run", "passes", *(f"{lang} share planned -> trained" for lang in langs)]
    header += [f"{lang} rows / tokens trained" for lang in langs]
    rows = []
    for _, run in runs[runs["trained_mix/passes"].notna()].iterrows():
        unit = run.get("data_mix/unit", "tokens")
        shares = [_share(run, f"data_mix/{lang}/share_{unit}", f"trained_mix/{lang}/share_{unit}") for lang in langs]
        counts = [_count(run, f"trained_mix/{lang}/examples", f"trained_mix/{lang}/tokens") for lang in langs]
        rows.append([f"`{run['run']}`", f"{run['trained_mix/passes']:.3f}", *shares, *counts])
    note = (
        "What each run's training loop took, beside its planned mix (one pass over the selected rows, in the mix's "
        "unit). Fewer than 1 pass trains a part of the mix whose shares are not the plan's."
    )
    return ["## Trained mix", "", note, "", *markdown_table(header, rows), ""]


def _share(run: pd.Series, planned: str, trained: str) -> str:
    if pd.isna(run.get(planned)) or pd.isna(run.get(trained)):
        return "n/a"
    return f"{100 * run[planned]:.1f}% -> {100 * run[trained]:.1f}%"


def _count(run: pd.Series, rows: str, tokens: str) -> str:
    if pd.isna(run.get(rows)) or pd.isna(run.get(tokens)):
        return "n/a"
    return f"{int(run[rows]):,} / {int(run[tokens]):,}"
