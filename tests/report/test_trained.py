"""The report's Trained mix table: planned against trained shares per run, from summary.json's keys."""

from __future__ import annotations

import pandas as pd

from medtune.report.trained import trained_section


def test_the_table_shows_planned_and_trained_shares_and_the_passes() -> None:
    short = {"run": "a", "data_mix/unit": "tokens", "trained_mix/passes": 4 / 7}
    short |= {"data_mix/en/share_tokens": 0.995, "trained_mix/en/share_tokens": 1.0, "data_mix/vi/share_tokens": 0.005}
    short |= {"trained_mix/vi/share_tokens": 0.0, "trained_mix/en/examples": 40, "trained_mix/en/tokens": 9000}
    short |= {"trained_mix/vi/examples": 0, "trained_mix/vi/tokens": 0}
    old = {"run": "b", "data_mix/unit": "tokens"}  # recorded before the trained record existed
    text = "\n".join(trained_section(pd.DataFrame([short, old]), ["en", "vi"]))
    assert "## Trained mix" in text and "| `a` | 0.571 | 99.5% -> 100.0% | 0.5% -> 0.0% | 40 / 9,000 | 0 / 0 |" in text
    assert "`b`" not in text
    assert trained_section(pd.DataFrame([old]), ["en", "vi"]) == []
