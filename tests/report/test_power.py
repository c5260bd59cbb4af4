"""The report's power columns: the Welch MDE against a simulation of the report's own Welch test, the table columns."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medtune.eval.power import mcnemar_mde, welch_mde
from medtune.report.contrast import welch
from medtune.report.power import paired_cells, paired_power, pooled_sd, welch_power_columns


@pytest.mark.parametrize(("n_seeds", "n_ref"), [(3, 3), (4, 2)])
def test_welch_power_at_the_mde_is_the_simulated_rejection_rate_of_the_reports_welch(n_seeds: int, n_ref: int) -> None:
    sd = 0.7
    mde = welch_mde(sd, n_seeds, n_ref)
    rng = np.random.default_rng(n_seeds * 10 + n_ref)
    reps = 2000  # binomial sd 0.9 points
    hits = sum(welch(rng.normal(mde, sd, n_seeds), rng.normal(0.0, sd, n_ref))["p_welch"] < 0.05 for _ in range(reps))
    assert abs(hits / reps - 0.8) <= 0.03


def test_welch_columns_pool_the_seed_variances() -> None:
    a, b = [25.0, 27.0, 26.0], [20.0, 22.0]
    # variances 1 and 2 with 2 and 1 degrees of freedom: (2 * 1 + 1 * 2) / 3
    assert pooled_sd(a, b) == pytest.approx(math.sqrt(4 / 3))
    cols = welch_power_columns(a, b, 0.9)
    assert cols["mde"] == pytest.approx(welch_mde(math.sqrt(4 / 3), 3, 2, 0.9))
    assert math.isnan(welch_power_columns([1.0], b, 0.95)["mde"])


def test_paired_power_reads_the_discordant_counts() -> None:
    got = paired_power({"n": 239.0, "b_base_only": 11.0, "c_run_only": 13.0}, 0.95)
    assert got["discordance"] == pytest.approx(24 / 239)
    assert got["mde_pp"] == pytest.approx(100 * mcnemar_mde(239, 24 / 239))
    assert paired_cells(got) == ["10.0", f"{got['mde_pp']:.2f}"]
    old = paired_power({"n": 239.0, "b_base_only": None, "c_run_only": None}, 0.95)  # a summary without counts
    assert paired_cells(old) == ["n/a", "n/a"]
    assert paired_cells(paired_power({"n": 20.0, "b_base_only": 1.0, "c_run_only": 0.0}, 0.95))[1] == "none"
