"""Power and minimum detectable effects against hand computation and against simulations of the tests they model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medtune.eval.power import (
    connor_sample_size,
    mcnemar_mde,
    mcnemar_power,
    mcnemar_sample_size,
    observed_discordance,
    welch_power,
    welch_seeds,
)
from medtune.eval.stats import mcnemar_test


def _simulated_mcnemar_rate(n: int, discordance: float, effect: float, reps: int, seed: int) -> float:
    """Share of `reps` simulated evaluations where stats.mcnemar_test (exact, as the report runs it) rejects at 5%."""
    rng = np.random.default_rng(seed)
    probs = [(discordance - effect) / 2, (discordance + effect) / 2, 1 - discordance]  # base-only, run-only, same
    hits = 0
    for b, c, same in rng.multinomial(n, probs, size=reps):
        base = [True] * b + [False] * c + [True] * same
        run = [False] * b + [True] * c + [True] * same
        hits += mcnemar_test(base, run).p_exact < 0.05
    return hits / reps


@pytest.mark.parametrize(("n", "discordance"), [(239, 0.1), (600, 0.3)])
def test_power_at_the_mde_is_the_simulated_rejection_rate_of_the_exact_mcnemar_test(n: int, discordance: float) -> None:
    mde = mcnemar_mde(n, discordance)
    assert mcnemar_power(n, discordance, mde) == pytest.approx(0.8, abs=0.002)
    rate = _simulated_mcnemar_rate(n, discordance, mde, reps=2000, seed=n)  # binomial sd 0.9 points
    assert abs(rate - 0.8) <= 0.03


def test_power_without_an_effect_is_the_exact_tests_size() -> None:
    size = mcnemar_power(239, 0.1, 0.0)
    assert 0.0 < size <= 0.05  # exact McNemar is conservative
    assert abs(_simulated_mcnemar_rate(239, 0.1, 0.0, reps=2000, seed=7) - size) <= 0.015


def test_connor_sample_size_is_the_hand_computed_formula() -> None:
    # (1.959964 sqrt(0.2) + 0.841621 sqrt(0.2 - 0.05^2))^2 / 0.05^2 = (0.876523 + 0.374025)^2 / 0.0025 = 625.55
    assert connor_sample_size(0.05, 0.2) == pytest.approx(625.55, abs=0.05)
    assert connor_sample_size(-0.05, 0.2) == connor_sample_size(0.05, 0.2)  # either direction
    with pytest.raises(ValueError, match="effect"):
        connor_sample_size(0.3, 0.2)


def test_sample_size_is_the_first_n_with_enough_power() -> None:
    n = mcnemar_sample_size(0.0123, 0.1)
    assert mcnemar_power(n, 0.1, 0.0123) >= 0.8 > mcnemar_power(n - 1, 0.1, 0.0123)
    assert abs(n - connor_sample_size(0.0123, 0.1)) / n < 0.05  # the normal approximation is close at this size


def test_a_discordance_too_small_for_any_effect_has_no_mde() -> None:
    assert math.isinf(mcnemar_mde(20, 0.05))  # about one discordant question: nothing can reach p < 0.05
    assert math.isinf(mcnemar_mde(239, 0.0))
    assert math.isnan(observed_discordance(None, 3, 239))
    assert observed_discordance(12, 15, 240) == pytest.approx(27 / 240)


def test_welch_power_grows_with_seeds_and_seeds_needed_is_the_first_that_suffices() -> None:
    powers = [welch_power(1.0, 0.7, k) for k in (2, 3, 5, 10)]
    assert powers == sorted(powers) and powers[0] < 0.2 and powers[-1] > 0.8
    n = welch_seeds(1.0, 0.7)
    assert welch_power(1.0, 0.7, n) >= 0.8 > welch_power(1.0, 0.7, n - 1)
    assert welch_power(1.0, 0.7, 1) == 0.0  # no variance estimate under two seeds
