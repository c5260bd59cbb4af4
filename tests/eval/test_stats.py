"""Intervals and paired tests against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medtune.eval.stats import (
    bootstrap_mean_ci,
    format_alpha,
    format_level,
    mcnemar_test,
    paired_bootstrap_ci,
    recorded_level,
    sign_flip_test,
    wilson_interval,
    z_value,
)


def test_wilson_matches_hand_computation() -> None:
    # 8/10 at 95%: z = 1.959964; centre = (0.8 + z^2/20) / (1 + z^2/10); half = z*sqrt(.016 + z^2/400) / (1 + z^2/10)
    z = 1.959963984540054
    denom = 1 + z * z / 10
    centre = (0.8 + z * z / 20) / denom
    half = z * math.sqrt(0.8 * 0.2 / 10 + z * z / 400) / denom
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # the textbook value


def test_wilson_edges() -> None:
    assert wilson_interval(0, 20)[0] == pytest.approx(0.0, abs=1e-12)
    assert wilson_interval(20, 20)[1] == pytest.approx(1.0, abs=1e-12)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(5, 3)
    assert z_value(0.95) == pytest.approx(1.959964, abs=1e-6)


def test_mcnemar_exact_and_mid_p_by_hand() -> None:
    # 9 questions: b = 1 (base only right), c = 6 (run only right), 2 concordant.
    base = [1, 0, 0, 0, 0, 0, 0, 1, 0]
    run = [0, 1, 1, 1, 1, 1, 1, 1, 0]
    result = mcnemar_test([bool(x) for x in base], [bool(x) for x in run])
    assert (result.b, result.c) == (1, 6)
    # P(X <= 1), X ~ Bin(7, 1/2) = (1 + 7) / 128; two-sided exact p = 16/128; mid-p subtracts P(X = 1) = 7/128
    assert result.p_exact == pytest.approx(16 / 128)
    assert result.p_mid == pytest.approx(16 / 128 - 7 / 128)


def test_mcnemar_no_discordant_pairs_and_large_n() -> None:
    assert mcnemar_test([True, False], [True, False]).p_exact == 1.0
    n = 5000  # lgamma path: no underflow, symmetric counts give p close to 1
    base = [i % 2 == 0 for i in range(n)]
    run = [not x for x in base]
    result = mcnemar_test(base, run)
    assert result.b == result.c == n // 2
    assert 0.95 < result.p_exact <= 1.0


def test_bootstrap_mean_ci_matches_normal_theory() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(0.3, 1.0, size=2000)
    low, high = bootstrap_mean_ci(values, n_boot=2000, seed=0)
    se = values.std(ddof=1) / math.sqrt(len(values))
    assert low == pytest.approx(values.mean() - 1.96 * se, abs=0.2 * se)
    assert high == pytest.approx(values.mean() + 1.96 * se, abs=0.2 * se)


def test_paired_bootstrap_uses_pairs() -> None:
    rng = np.random.default_rng(2)
    base = rng.normal(0.0, 5.0, size=500)
    run = base + 0.5 + rng.normal(0.0, 0.1, size=500)  # a tiny, consistent gain hidden in large item variance
    low, high = paired_bootstrap_ci(base, run, seed=0)
    diff = run - base
    se = diff.std(ddof=1) / math.sqrt(len(diff))
    assert low == pytest.approx(diff.mean() - 1.96 * se, abs=0.25 * se)
    assert 0.45 < low < high < 0.55  # unpaired, the interval would span about +-0.9
    assert sign_flip_test(base, run, n_perm=500) < 0.01
    assert sign_flip_test(base, base, n_perm=50) == 1.0
    with pytest.raises(ValueError):
        paired_bootstrap_ci([1.0], [1.0, 2.0])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_value_is_not_testable_never_significant(bad: float) -> None:
    # the case: a NaN gold log-likelihood gave p = 1/(B+1) = 0.0005, reported as significant
    p = sign_flip_test([bad, 0, 0, 0], [1.0, 0, 0, 0])
    assert math.isnan(p) and not p < 0.05
    assert math.isnan(sign_flip_test([1.0, 0, 0, 0], [bad, 0, 0, 0]))
    assert all(math.isnan(x) for x in paired_bootstrap_ci([bad, 0.0, 1.0], [1.0, 0.0, 2.0]))
    assert all(math.isnan(x) for x in bootstrap_mean_ci([bad, 0.0, 1.0]))
    assert sign_flip_test([0.0, 0, 0, 0], [0.0, 0, 0, 0]) == 1.0  # finite and equal: testable, p = 1


def test_level_labels_state_the_level_exactly() -> None:
    assert [format_level(c) for c in (0.95, 0.975, 0.999, 0.9, 0.99, 0.9995)] == [
        "95%", "97.5%", "99.9%", "90%", "99%", "99.95%",
    ]  # fmt: skip
    assert [format_alpha(c) for c in (0.95, 0.975, 0.999, 0.9, 0.99875)] == ["0.05", "0.025", "0.001", "0.1", "0.00125"]


def test_recorded_level_never_relabels() -> None:
    assert recorded_level([0.9, 0.9, None], None, "x") == 0.9
    assert recorded_level([], 0.95, "x") == 0.95
    with pytest.raises(ValueError, match=r"cannot be labelled 0\.95"):
        recorded_level([0.9], 0.95, "x")
    with pytest.raises(ValueError, match=r"\[0\.9, 0\.95\]"):
        recorded_level([0.9, 0.95], None, "x")
    with pytest.raises(ValueError, match="do not record"):
        recorded_level([], None, "x")


def _clustered_diffs(rng: np.random.Generator, n_clusters: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Paired right/wrong differences (-1, 0, +1) of questions in clusters that share a drift: true mean 0.

    In cluster g a question goes run-only with probability 0.1 + u_g and base-only with 0.1 - u_g, u_g uniform in
    [-0.08, 0.08] (an exam year that suits one model more), so questions of one cluster are correlated.
    """
    u = rng.uniform(-0.08, 0.08, n_clusters).repeat(size)
    draw = rng.random(n_clusters * size)
    diff = np.where(draw < 0.1 + u, 1.0, np.where(draw > 0.9 + u, -1.0, 0.0))
    return diff, np.arange(n_clusters).repeat(size)


def test_cluster_bootstrap_covers_correlated_clusters_where_the_question_bootstrap_does_not() -> None:
    """Simulated exams of 60 clusters x 40 questions: the 95% cluster interval holds 95% +- 2 points over 1000
    replicates (binomial sd 0.7 points); resampling questions one by one covers far less (design effect ~2.6)."""
    rng = np.random.default_rng(20240)
    zeros = np.zeros(60 * 40)
    cluster_hits, naive_hits, naive_reps = 0, 0, 200
    for rep in range(1000):
        diff, clusters = _clustered_diffs(rng, 60, 40)
        low, high = paired_bootstrap_ci(zeros, diff, 0.95, 1000, seed=rep, clusters=clusters)
        cluster_hits += low <= 0.0 <= high
        if rep < naive_reps:
            low, high = paired_bootstrap_ci(zeros, diff, 0.95, 500, seed=rep)
            naive_hits += low <= 0.0 <= high
    assert abs(cluster_hits / 1000 - 0.95) <= 0.02
    assert naive_hits / naive_reps < 0.88  # about 0.77 expected; far outside the cluster interval's band


def test_cluster_bootstrap_needs_two_clusters_and_one_label_per_pair() -> None:
    assert all(math.isnan(v) for v in paired_bootstrap_ci([0, 1, 0], [1, 1, 0], clusters=["a", "a", "a"]))
    with pytest.raises(ValueError, match="2 cluster labels for 3 values"):
        paired_bootstrap_ci([0, 1, 0], [1, 1, 0], clusters=["a", "b"])
    # clusters of one question each resample like questions: same percentile interval up to resampling noise
    base, run = np.zeros(400), (np.arange(400) % 5 == 0).astype(float)
    by_question = paired_bootstrap_ci(base, run, n_boot=4000)
    by_cluster = paired_bootstrap_ci(base, run, n_boot=4000, clusters=list(range(400)))
    assert by_cluster == pytest.approx(by_question, abs=0.006)
