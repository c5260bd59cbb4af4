"""The fit and the recommendation on synthetic responses with a planted effect (no training)."""

from __future__ import annotations

import numpy as np
import pytest

from medtune.search.fit import fit_response, pareto, recommend

SHARES = np.repeat([0.1, 0.3, 0.5, 0.7, 0.9], 3)  # five shares x three seeds
GRID = np.linspace(0.1, 0.9, 81)


def _changes(mean_of_share, n_q: int = 200, q_sd: float = 0.2, seed_sd: float = 0.005, rng_seed: int = 0):
    """runs x questions: a per-question effect shared by all runs (paired), the planted mean, seed noise."""
    rng = np.random.default_rng(rng_seed)
    question = rng.normal(0, q_sd, n_q)
    return np.array([mean_of_share(s) + rng.normal(0, seed_sd) + question + rng.normal(0, 0.05, n_q) for s in SHARES])


def _curve(mean_of_share, **kw):
    return fit_response(SHARES, _changes(mean_of_share, **kw), degree=2, grid=GRID, n_boot=400, seed=0)


def test_a_protected_language_that_worsens_with_the_share_caps_the_recommendation() -> None:
    target = _curve(lambda s: 0.5 * s, rng_seed=1)  # the target gains the more of its language
    protect = _curve(lambda s: 0.02 - 0.3 * s, rng_seed=2)  # crosses -0.05 at s = 0.233
    rec = recommend(GRID, target, {"lang:ko": protect}, margin=0.05, level=0.95)
    assert rec.share is not None
    assert 0.15 <= rec.share < 0.2334  # below the planted crossing (the bound is conservative), not far below
    assert rec.protect["lang:ko"]["lower"] > -0.05 and rec.protect["lang:ko"]["p_above"] >= 0.95
    assert rec.target["low"] < rec.target["point"] < rec.target["high"]
    assert abs(rec.target["point"] - 0.5 * rec.share) < 0.02  # the fit recovers the planted target response
    assert rec.safe[0] and not rec.safe[-1]


def test_a_harmless_mix_recommends_the_largest_share_tried() -> None:
    target = _curve(lambda s: 0.5 * s - 0.3 * s**2, rng_seed=3)  # peaks at s = 0.833
    protect = _curve(lambda s: 0.0, rng_seed=4)
    rec = recommend(GRID, target, {"lang:en": protect}, margin=0.05, level=0.95)
    assert rec.share == pytest.approx(0.83, abs=0.05)  # the quadratic's maximum, not the edge
    assert rec.safe.all()


def test_an_impossible_margin_gives_no_safe_share() -> None:
    target = _curve(lambda s: 0.5 * s, rng_seed=5)
    protect = _curve(lambda s: -0.5 + 0.1 * s, rng_seed=6)  # worse than -0.4 everywhere
    rec = recommend(GRID, target, {"lang:ko": protect, "lang:en": _curve(lambda s: 0.0)}, margin=0.05, level=0.95)
    assert rec.share is None and rec.index is None and not rec.safe.any()
    assert rec.closest_share == pytest.approx(0.9)  # where lang:ko comes closest
    assert 0.41 < rec.needed_margin < 0.5


def test_one_seed_per_share_still_fits_with_question_resampling() -> None:
    shares = np.array([0.2, 0.5, 0.8])
    changes = np.array([[0.1, 0.2, 0.3], [0.0, 0.1, 0.2], [-0.1, 0.0, 0.1]])
    curve = fit_response(shares, changes, degree=2, grid=np.array([0.2, 0.5, 0.8]), n_boot=200)
    assert np.allclose(curve.point, [0.2, 0.1, 0.0])
    low, high = curve.interval(0.95)
    assert (low <= curve.point + 1e-9).all() and (high >= curve.point - 1e-9).all() and (high > low).all()


def test_pareto_keeps_the_points_nothing_beats_in_both() -> None:
    assert pareto([(0.1, 0.0), (0.3, -0.1), (0.2, -0.2), (0.3, -0.1)]) == [True, True, False, True]
