"""Each group's response to the share, with a bootstrap over seeds and questions, and the share to recommend.

    curve = fit_response(shares, changes, degree=2, grid=grid, n_boot=1000, seed=0)   # one group: point and draws
    rec = recommend(grid, target, {"lang:ko": curve_ko}, margin=0.05, level=0.95)

`changes` is runs x questions: each run's change from base per question (paired; the same questions in every run).
A run's score is its mean; a polynomial in the share (degree 1 or 2, at most one less than the shares tried) is
fitted by least squares to the runs' scores. A bootstrap draw resamples the runs within each share (the seeds) and,
once for all runs, the questions (so the pairing across runs is kept), then refits: the spread of the draws at a
share is the fit's uncertainty there. With one seed per share the seeds' spread is not in it (said in search.md).

A share is safe when, for every protected group, at least `level` of the draws lie above -margin (a one-sided
bootstrap bound); the recommendation is the safe share with the highest fitted target gain, read on a grid between
the lowest and the highest share tried (never extrapolated). When no share is safe, there is no recommendation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Curve:
    """A group's fitted change from base over the grid: the point fit and the bootstrap draws (draws x grid)."""

    point: np.ndarray
    draws: np.ndarray

    def interval(self, level: float) -> tuple[np.ndarray, np.ndarray]:
        """Two-sided percentile band at `level`, at every grid share."""
        tail = 100 * (1 - level) / 2
        return np.percentile(self.draws, tail, axis=0), np.percentile(self.draws, 100 - tail, axis=0)

    def lower(self, level: float) -> np.ndarray:
        """One-sided lower bound at `level`: the change exceeds it in `level` of the draws."""
        return np.percentile(self.draws, 100 * (1 - level), axis=0)


def _polyfit(x: np.ndarray, y: np.ndarray, degree: int, grid: np.ndarray) -> np.ndarray:
    return np.polyval(np.polyfit(x, y, degree), grid)


def fit_response(
    shares: np.ndarray, changes: np.ndarray, degree: int, grid: np.ndarray, n_boot: int, seed: int = 0
) -> Curve:
    """Fit run means against shares (runs of one share are its seeds); bootstrap seeds within share and questions."""
    shares = np.asarray(shares, dtype=np.float64)
    changes = np.asarray(changes, dtype=np.float64)
    levels = np.unique(shares)
    degree = min(degree, len(levels) - 1)
    point = _polyfit(shares, changes.mean(axis=1), degree, grid)
    rng = np.random.default_rng(seed)
    by_share = [np.flatnonzero(shares == s) for s in levels]
    n_q = changes.shape[1]
    draws = np.empty((n_boot, len(grid)))
    for b in range(n_boot):
        runs = np.concatenate([rng.choice(idx, size=len(idx)) for idx in by_share])
        questions = rng.integers(0, n_q, n_q)
        means = changes[np.ix_(runs, questions)].mean(axis=1)
        draws[b] = _polyfit(shares[runs], means, degree, grid)
    return Curve(point, draws)


@dataclass
class Recommendation:
    """The recommended share (None: no safe share) and how sure: per group, value, band and P(above -margin)."""

    share: float | None
    index: int | None
    safe: np.ndarray  # per grid share: every protected group's lower bound above -margin
    # the share where the protected groups come closest to safe, and the margin that would make it safe there
    closest_share: float
    needed_margin: float
    target: dict[str, float]  # point, low, high at the recommendation (or at the closest share)
    protect: dict[str, dict[str, float]]  # group -> point, low, high, lower, p_above


def recommend(
    grid: np.ndarray, target: Curve, protect: dict[str, Curve], margin: float, level: float
) -> Recommendation:
    """The safe share with the best fitted target gain (see the module docstring), or None with the closest miss."""
    lowers = np.array([c.lower(level) for c in protect.values()]) if protect else np.zeros((1, len(grid)))
    worst = lowers.min(axis=0)
    safe = worst > -margin
    closest = int(np.argmax(worst))
    index = int(np.flatnonzero(safe)[np.argmax(target.point[safe])]) if safe.any() else None
    at = closest if index is None else index
    low, high = target.interval(level)
    detail = {}
    for name, curve in protect.items():
        c_low, c_high = curve.interval(level)
        detail[name] = {
            "point": float(curve.point[at]),
            "low": float(c_low[at]),
            "high": float(c_high[at]),
            "lower": float(curve.lower(level)[at]),
            "p_above": float(np.mean(curve.draws[:, at] > -margin)),
        }
    return Recommendation(
        share=None if index is None else float(grid[index]),
        index=index,
        safe=safe,
        closest_share=float(grid[closest]),
        needed_margin=float(max(0.0, -worst[closest])),
        target={"point": float(target.point[at]), "low": float(low[at]), "high": float(high[at])},
        protect=detail,
    )


def pareto(points: list[tuple[float, float]]) -> list[bool]:
    """For each (target gain, protected change), whether no other point is at least as good in both and better in
    one (both are to be maximised)."""
    out = []
    for i, (t, p) in enumerate(points):
        dominated = any((t2 >= t and p2 >= p and (t2 > t or p2 > p)) for j, (t2, p2) in enumerate(points) if j != i)
        out.append(not dominated)
    return out
