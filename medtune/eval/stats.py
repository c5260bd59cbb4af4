"""Small-sample statistics for accuracy and paired comparisons, in numpy and the standard library only.

At 239 questions one question is 0.42 pp, so every accuracy carries an interval and every difference between two
models on the same questions carries a paired interval and a paired test:

    wilson_interval(correct=191, n=239)            -> (low, high) for one accuracy
    bootstrap_mean_ci(values)                      -> (low, high) for a mean (e.g. gold log-likelihood)
    paired_bootstrap_ci(base, run)                 -> (low, high) for mean(run - base) over the same items
    paired_bootstrap_ci(base, run, clusters=subj)  -> the same, resampling whole clusters (cluster bootstrap)
    mcnemar_test(base_correct, run_correct)        -> McNemarResult(b, c, p_exact, p_mid)
    sign_flip_test(base, run)                      -> two-sided p for mean(run - base) == 0
    format_level(0.975), format_alpha(0.975)       -> "97.5%", "0.025": every label states the level exactly

A NaN or infinite value (a gold log-likelihood of -inf, a failed forward) makes a mean, its interval and its test
meaningless: intervals are then (nan, nan) and p-values nan, which callers report as "not testable", never as a
result; a nan p is never below any threshold, so it is never significant.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np


def z_value(confidence: float) -> float:
    """Two-sided normal quantile: 0.95 -> 1.95996."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must be in (0, 1)")
    return NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)


def _exact(value: float) -> str:
    # round away binary noise (100 * 0.999 = 99.90000000000001), then print every digit that is left
    return format(round(value, 10), ".12g")


def format_level(confidence: float) -> str:
    """A confidence level as a label that states it exactly: 0.95 -> '95%', 0.975 -> '97.5%', 0.999 -> '99.9%'."""
    return f"{_exact(100 * confidence)}%"


def format_alpha(confidence: float) -> str:
    """The significance threshold 1 - confidence, exactly: 0.95 -> '0.05', 0.975 -> '0.025'."""
    return _exact(1.0 - confidence)


def recorded_level(levels: Iterable[float | None], asked: float | None, what: str) -> float:
    """The one confidence level that `what` was computed at (`asked` when nothing recorded it).

    Raises ValueError when the recorded levels disagree, differ from `asked` (a label states the level used: it
    never relabels), or when no level is known at all.
    """
    stored = {float(v) for v in levels if v is not None}
    if len(stored) > 1 or (asked is not None and stored and stored != {float(asked)}):
        raise ValueError(
            f"{what} were computed at the confidence level(s) {sorted(stored)} and cannot be labelled {asked}: "
            "recompute them at that level instead."
        )
    if stored:
        return stored.pop()
    if asked is None:
        raise ValueError(f"{what} do not record their confidence level; pass it explicitly.")
    return float(asked)


def testable(values: np.ndarray) -> bool:
    """True when every value is finite: only then do a mean, its interval and its test mean anything."""
    return bool(np.isfinite(values).all())


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (nan, nan) when n == 0."""
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= correct <= n:
        raise ValueError(f"correct={correct} must be within [0, n={n}]")
    z = z_value(confidence)
    p = correct / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _percentile_ci(stats: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _bootstrap_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = len(values)
    # Chunked so that n_boot x n index matrices stay small for 10k-question sets.
    chunk = max(1, 2_000_000 // max(n, 1))
    means = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        means.append(values[idx].mean(axis=1))
    return np.concatenate(means)


def bootstrap_mean_ci(
    values: Sequence[float], confidence: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of a mean; (nan, nan) for an empty sample or a NaN/infinite value."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0 or not testable(arr):
        return float("nan"), float("nan")
    return _percentile_ci(_bootstrap_means(arr, n_boot, seed), confidence)


def _paired(base: Sequence[float], run: Sequence[float]) -> np.ndarray:
    b = np.asarray(base, dtype=np.float64)
    r = np.asarray(run, dtype=np.float64)
    if b.shape != r.shape:
        raise ValueError(f"paired samples differ in length: base {b.shape}, run {r.shape}")
    return r - b


def cluster_bootstrap_means(values: np.ndarray, clusters: Sequence[Any], n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap means of `values` resampling whole clusters with replacement (all the questions of a drawn cluster
    come along); each mean is over the questions drawn, so clusters weigh by their size.

    Questions of one exam year or subject share difficulty and topic: resampling questions one by one then treats
    correlated outcomes as independent and gives intervals that are too narrow. Resampling clusters keeps the
    correlation inside each draw (Davison & Hinkley 1997, sec. 3.8). It needs enough clusters: with fewer than
    about 20 the interval is itself too narrow, and with one it cannot be computed at all.
    """
    labels, index = np.unique(np.asarray([str(c) for c in clusters]), return_inverse=True)
    if len(index) != len(values):
        raise ValueError(f"{len(index)} cluster labels for {len(values)} values")
    sums = np.bincount(index, weights=values, minlength=len(labels))
    sizes = np.bincount(index, minlength=len(labels)).astype(np.float64)
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // len(labels))
    means = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, len(labels), size=(min(chunk, n_boot - start), len(labels)))
        means.append(sums[idx].sum(axis=1) / sizes[idx].sum(axis=1))
    return np.concatenate(means)


def paired_bootstrap_ci(
    base: Sequence[float],
    run: Sequence[float],
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    clusters: Sequence[Any] | None = None,
) -> tuple[float, float]:
    """Interval of mean(run - base) resampling items (questions), keeping each pair together, or with `clusters`
    (one label per pair) resampling whole clusters; (nan, nan) for no pairs, a NaN/infinite value or one cluster."""
    diff = _paired(base, run)
    if diff.size == 0 or not testable(diff):
        return float("nan"), float("nan")
    if clusters is None:
        return _percentile_ci(_bootstrap_means(diff, n_boot, seed), confidence)
    if len({str(c) for c in clusters}) < 2:
        return float("nan"), float("nan")  # one cluster: no between-cluster variation to resample
    return _percentile_ci(cluster_bootstrap_means(diff, clusters, n_boot, seed), confidence)


@dataclass(frozen=True)
class McNemarResult:
    """Discordant counts and two-sided p-values of McNemar's exact (binomial) test."""

    b: int  # base right, run wrong
    c: int  # base wrong, run right
    p_exact: float
    p_mid: float


def _log_binom_pmf_half(k: int, n: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2.0)


def _binom_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), summed in log space so that n in the thousands does not underflow."""
    if k < 0:
        return 0.0
    logs = [_log_binom_pmf_half(i, n) for i in range(k + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def mcnemar_test(base_correct: Sequence[bool], run_correct: Sequence[bool]) -> McNemarResult:
    """McNemar's exact test and its mid-p variant over paired right/wrong outcomes."""
    if len(base_correct) != len(run_correct):
        raise ValueError(f"paired samples differ in length: {len(base_correct)} vs {len(run_correct)}")
    b = sum(1 for x, y in zip(base_correct, run_correct, strict=True) if x and not y)
    c = sum(1 for x, y in zip(base_correct, run_correct, strict=True) if y and not x)
    n, k = b + c, min(b, c)
    if n == 0:
        return McNemarResult(b, c, 1.0, 1.0)
    p_exact = min(1.0, 2.0 * _binom_cdf_half(k, n))
    # mid-p: count only half of the observed outcome's probability (less conservative, closer to nominal size).
    p_mid = min(1.0, 2.0 * (_binom_cdf_half(k, n) - 0.5 * math.exp(_log_binom_pmf_half(k, n))))
    return McNemarResult(b, c, p_exact, p_mid)


def sign_flip_test(base: Sequence[float], run: Sequence[float], n_perm: int = 2000, seed: int = 0) -> float:
    """Two-sided randomisation p-value for mean(run - base) = 0, flipping the sign of each paired difference.

    nan (not testable) when a value is NaN or infinite: every flipped mean would then compare false with the
    observed one, and the p-value would come out as its smallest possible value, 1 / (n_perm + 1).
    """
    diff = _paired(base, run)
    if not testable(diff):
        return float("nan")
    if diff.size == 0 or not np.any(diff):
        return 1.0
    rng = np.random.default_rng(seed)
    observed = abs(diff.mean())
    chunk = max(1, 2_000_000 // diff.size)
    hits = 0
    for start in range(0, n_perm, chunk):
        signs = rng.choice(np.array([-1.0, 1.0]), size=(min(chunk, n_perm - start), diff.size))
        hits += int(np.sum(np.abs((signs * diff).mean(axis=1)) >= observed - 1e-12))
    return (hits + 1) / (n_perm + 1)
