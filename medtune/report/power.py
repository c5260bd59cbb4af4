"""What each contrast of the report could have detected: n, the observed spread, and the minimum detectable effect.

A "not significant" delta of -1.23 pp says little when the test could only have seen -6 pp. Beside every contrast
the report states the effect its own test detects with 80% power at the report's level (medtune.eval.power):

    paired_power(forgetting_row, confidence)   -> {"discordance": (b + c) / n, "mde_pp": ...}  adapter - base
    welch_power_columns(a, b, confidence)      -> {"sd_pooled": ..., "mde": ...}               ratio - reference

The MDE takes the observed discordance (paired) or the pooled sd across seeds (Welch) as the truth, so it is a
planning number for the next evaluation of this size, not a statement about this one's result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medtune.eval.power import POWER, mcnemar_mde, observed_discordance, welch_mde
from medtune.eval.stats import format_level

PAIRED_HEADER = ["discordant %", f"MDE pp ({format_level(POWER)} power)"]


def paired_power(got: Mapping[str, Any], confidence: float) -> dict[str, float]:
    """The observed discordance (b + c) / n of one paired comparison and the effect (pp) its exact McNemar test
    detects with 80% power at `confidence` (inf: none at this discordance; nan: counts not recorded)."""
    psi = observed_discordance(got.get("b_base_only"), got.get("c_run_only"), got.get("n"))
    mde = mcnemar_mde(int(got["n"]), psi, confidence) if math.isfinite(psi) else math.nan
    return {"discordance": psi, "mde_pp": 100.0 * mde}


def mde_cell(value: Any, fmt: str = "{:.2f}") -> str:
    """An MDE as a cell: 'none' when no effect is detectable (inf), 'n/a' when it is not known."""
    value = float(value) if value is not None else math.nan
    if math.isinf(value):
        return "none"
    return fmt.format(value) if math.isfinite(value) else "n/a"


def paired_cells(row: Mapping[str, Any]) -> list[str]:
    """The discordant % and MDE pp cells of one forgetting-table row."""
    psi = float(row.get("discordance", math.nan))
    return ["n/a" if not math.isfinite(psi) else f"{100 * psi:.1f}", mde_cell(row.get("mde_pp", math.nan))]


def paired_note(confidence: float) -> str:
    """The sentence under the forgetting table that says what its power columns mean."""
    return (
        f" Discordant: questions the two models answered differently; MDE: the |delta| that the exact McNemar test at "
        f"{format_level(confidence)} detects with {format_level(POWER)} power at that n and discordance (none: not "
        "even every discordant question going one way is), so a non-significant delta below it is no evidence of "
        "no effect."
    )


def pooled_sd(values: Sequence[float], reference: Sequence[float]) -> float:
    """sqrt of the seeds' variances pooled over both sides (n - 1 weights); nan under two values a side."""
    a, b = np.asarray(values, dtype=float), np.asarray(reference, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    return math.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))


def welch_power_columns(values: Sequence[float], reference: Sequence[float], confidence: float) -> dict[str, float]:
    """The pooled sd across seeds and the difference the Welch test over these seed counts detects with 80% power
    (sd's unit) if that sd were the truth on both sides; nan under two seeds a side."""
    sd = pooled_sd(values, reference)
    return {"sd_pooled": sd, "mde": welch_mde(sd, len(values), len(reference), confidence)}
