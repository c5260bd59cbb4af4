"""Power and minimum detectable effects (MDE) of the two tests the report runs, before and after an evaluation.

At 239 questions one question is 0.42 pp: whether an evaluation can see an effect of 1.23 pp at all depends on n,
on how many questions the two models answer differently, and on the seeds. Effects and sds are proportions (or the
metric's own unit), confidence is two-sided (0.95 -> alpha 0.05):

    mcnemar_power(n=239, discordance=0.1, effect=0.0123)  -> power of the exact McNemar test (what the report runs)
    mcnemar_mde(n=239, discordance=0.1)                   -> smallest |run - base| detected with 80% power
    observed_discordance(b=12, c=15, n=239)               -> (b + c) / n, nan when not known
    mcnemar_sample_size(effect=0.0123, discordance=0.1)   -> questions needed for 80% power
    connor_sample_size(effect, discordance)               -> Connor (1987)'s closed form, the normal approximation
    welch_power(effect=1.0, sd=0.7, n_seeds=3)            -> power of the Welch t test over seeds
    welch_mde(sd=0.7, n_seeds=3), welch_seeds(effect=1.0, sd=0.7)

Paired (adapter - base on the same questions). With discordant proportion psi = P(the two models differ on a
question) and effect delta = P(only run right) - P(only base right), Connor (1987, Biometrics 43:207-211) gives the
normal approximation n = (z_{1-alpha/2} sqrt(psi) + z_{power} sqrt(psi - delta^2))^2 / delta^2. The report's verdict
is the *exact* McNemar test (medtune.eval.stats.mcnemar_test), which is conservative at small counts, so the power
stated here is exact for it: the number of discordant questions d ~ Binomial(n, psi), and given d the run-only count
c ~ Binomial(d, (psi + delta) / (2 psi)); power = sum_d P(d) P(c falls where 2 min(P(X <= c), P(X >= c)) < alpha,
X ~ Binomial(d, 1/2)). Connor's formula is its large-sample limit; at psi = 0.1 it states 82.7% power where the exact
test has 80% at 239 questions, 82.1% at 1000 and 80.8% at 10000.

Over seeds (ratio - reference, the seed as the unit, medtune.report.contrast.welch). Both sides normal with one sd
sigma (the planning assumption); the Welch statistic's sds and Welch-Satterthwaite degrees of freedom are random, so
its power is integrated over both sample variances (each sigma^2 chi2_{k-1}/(k-1), on a grid of quantiles) of
P(|N(delta, sigma^2 (1/n_a + 1/n_b))| > t_{1-alpha/2, df} se). No closed form is used because with 3 seeds a side the
usual noncentral-t power of Student's test (Cohen 1988, ch. 2) states 88.7% where Welch's test has 80%.

An effect larger than the discordance cannot exist (every discordant question would have to go one way): where even
that effect falls short of the power asked, the MDE is inf (undetectable at this discordance).
"""

from __future__ import annotations

import functools
import math
from statistics import NormalDist

import numpy as np

from medtune.eval.stats import z_value

POWER = 0.8  # the power every MDE is stated at unless asked otherwise
_GRID = 160  # quantiles per sample variance in the Welch integral (within 0.05 points of 2000 at 2-5 seeds)


def _check(confidence: float, power: float) -> None:
    if not 0.0 < confidence < 1.0 or not 0.0 < power < 1.0:
        raise ValueError(f"confidence={confidence} and power={power} must both be in (0, 1)")


def _reject_given_discordant(d: np.ndarray, p_run: float, alpha: float) -> np.ndarray:
    """P(exact McNemar rejects | d discordant questions), for run-only probability p_run within them."""
    from scipy import stats

    # mcnemar_test's p_exact = 2 P(X <= min(b, c)) < alpha  <=>  min(b, c) <= k, the largest k with P(X <= k) < alpha/2
    k = stats.binom.ppf(alpha / 2.0, d, 0.5)
    k = np.where(stats.binom.cdf(k, d, 0.5) < alpha / 2.0, k, k - 1)  # ppf gives the first k with cdf >= alpha/2
    return np.where(k >= 0, stats.binom.cdf(k, d, p_run) + stats.binom.sf(d - k - 1, d, p_run), 0.0)


def mcnemar_power(n: int, discordance: float, effect: float, confidence: float = 0.95) -> float:
    """Exact power of the two-sided exact McNemar test for n pairs, discordant proportion psi and effect delta
    (formula in the module docstring); 0 <= |delta| <= psi <= 1."""
    from scipy import stats

    _check(confidence, POWER)
    effect = abs(effect)
    if n <= 0 or discordance <= 0.0:
        return 0.0
    if effect > discordance + 1e-12 or discordance > 1.0:
        raise ValueError(f"effect {effect:g} must be at most the discordance {discordance:g}, which is at most 1")
    lo, hi = stats.binom.ppf([1e-10, 1 - 1e-10], n, discordance).astype(int)  # the d that carry any probability
    d = np.arange(max(lo - 1, 0), min(hi + 1, n) + 1)
    p_run = min(1.0, (discordance + effect) / (2.0 * discordance))
    return float(np.sum(stats.binom.pmf(d, n, discordance) * _reject_given_discordant(d, p_run, 1.0 - confidence)))


def observed_discordance(b: float | None, c: float | None, n: float | None) -> float:
    """The share of questions the two models answered differently, (b + c) / n; nan when a count is missing."""
    values = [math.nan if v is None else float(v) for v in (b, c, n)]
    return (values[0] + values[1]) / values[2] if all(map(math.isfinite, values)) and values[2] > 0 else math.nan


@functools.lru_cache(maxsize=4096)  # a sweep report asks for the same (n, discordance) once per run and language
def mcnemar_mde(n: int, discordance: float, confidence: float = 0.95, power: float = POWER) -> float:
    """Smallest |delta| (a proportion) the exact McNemar test detects with `power`; inf when not even delta = psi."""
    _check(confidence, power)
    if n <= 0 or discordance <= 0.0 or mcnemar_power(n, discordance, discordance, confidence) < power:
        return math.inf
    lo, hi = 0.0, discordance
    while hi - lo > 1e-5:  # power rises with delta: bisection
        mid = (lo + hi) / 2.0
        lo, hi = (lo, mid) if mcnemar_power(n, discordance, mid, confidence) >= power else (mid, hi)
    return hi


def connor_sample_size(effect: float, discordance: float, confidence: float = 0.95, power: float = POWER) -> float:
    """Connor (1987)'s normal-approximation number of pairs (not rounded): see the module docstring."""
    _check(confidence, power)
    effect = abs(effect)
    if not 0.0 < effect <= discordance <= 1.0:
        raise ValueError(f"need 0 < effect ({effect:g}) <= discordance ({discordance:g}) <= 1")
    z_a, z_b = z_value(confidence), NormalDist().inv_cdf(power)
    return (z_a * math.sqrt(discordance) + z_b * math.sqrt(discordance - effect**2)) ** 2 / effect**2


def mcnemar_sample_size(effect: float, discordance: float, confidence: float = 0.95, power: float = POWER) -> int:
    """Questions for the exact McNemar test to reach `power`: bisection on mcnemar_power from Connor's n (exact power
    is slightly saw-toothed in n, so a few n just above the answer may fall a fraction of a point short)."""
    hi = max(2, math.ceil(connor_sample_size(effect, discordance, confidence, power)))
    while mcnemar_power(hi, discordance, effect, confidence) < power:
        hi *= 2
    lo = hi // 4
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if mcnemar_power(mid, discordance, effect, confidence) >= power else (mid, hi)
    return hi


def welch_power(
    effect: float, sd: float, n_seeds: int, n_seeds_ref: int | None = None, confidence: float = 0.95
) -> float:
    """Power of the two-sided Welch t test of mean(a) - mean(b) = 0 with n_seeds and n_seeds_ref values (default:
    as many), both with standard deviation sd, at a true difference `effect` (integral in the module docstring)."""
    from scipy import stats

    _check(confidence, POWER)
    n_a, n_b = n_seeds, n_seeds if n_seeds_ref is None else n_seeds_ref
    if n_a < 2 or n_b < 2:
        return 0.0
    if sd <= 0.0:
        return 1.0 if effect != 0 else 0.0
    q = (np.arange(_GRID) + 0.5) / _GRID
    var_a = sd**2 * stats.chi2.ppf(q, n_a - 1)[:, None] / (n_a - 1) / n_a  # squared standard error of each mean
    var_b = sd**2 * stats.chi2.ppf(q, n_b - 1)[None, :] / (n_b - 1) / n_b
    se = np.sqrt(var_a + var_b)
    df = (var_a + var_b) ** 2 / (var_a**2 / (n_a - 1) + var_b**2 / (n_b - 1))
    half = stats.t.ppf(0.5 + confidence / 2.0, df) * se
    spread = sd * math.sqrt(1.0 / n_a + 1.0 / n_b)  # sd of the observed difference of means
    reject = stats.norm.sf((half - abs(effect)) / spread) + stats.norm.cdf((-half - abs(effect)) / spread)
    return float(reject.mean())


def welch_mde(
    sd: float, n_seeds: int, n_seeds_ref: int | None = None, confidence: float = 0.95, power: float = POWER
) -> float:
    """Smallest |difference of means| (sd's unit) the Welch test detects with `power`; nan under two seeds a side."""
    _check(confidence, power)
    n_b = n_seeds if n_seeds_ref is None else n_seeds_ref
    if n_seeds < 2 or n_b < 2 or not math.isfinite(sd):
        return math.nan
    if sd <= 0.0:
        return 0.0
    lo, hi = 0.0, sd
    while welch_power(hi, sd, n_seeds, n_b, confidence) < power:
        hi *= 2.0
    while hi - lo > 1e-4 * sd:
        mid = (lo + hi) / 2.0
        lo, hi = (lo, mid) if welch_power(mid, sd, n_seeds, n_b, confidence) >= power else (mid, hi)
    return hi


def welch_seeds(effect: float, sd: float, confidence: float = 0.95, power: float = POWER, most: int = 1000) -> int:
    """Seeds per side (the same on both) for the Welch test to reach `power`; raises ValueError beyond `most`."""
    _check(confidence, power)
    if effect == 0 or sd < 0:
        raise ValueError(f"need a non-zero effect ({effect:g}) and sd >= 0 ({sd:g})")
    for n in range(2, most + 1):
        if welch_power(effect, sd, n, n, confidence) >= power:
            return n
    raise ValueError(f"more than {most} seeds a side would be needed for effect {effect:g} at sd {sd:g}")
