"""Statistics of timed samples: quantiles, a confidence interval of the median, and the comparison of two
sets of samples (docs/design.md §6).

The interval of a median from one round of samples is the distribution-free order-statistic interval (the
binomial one asv and textbooks use). With several rounds (each in a fresh process, so e.g. a Triton
autotuner may pick a different config per round) the samples are not independent, so the interval comes from
a two-level bootstrap: rounds resampled, then samples within each round, seeded, so a report is
reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

CONFIDENCE = 0.95
_BOOTSTRAP = 2000


def quantile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default)."""
    return float(np.quantile(np.asarray(samples, dtype=float), q)) if len(samples) else math.nan


def median_ci_one(samples: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Order-statistic interval [x_(j), x_(k)] covering the median with at least `confidence` (the whole
    range when there are too few samples for that)."""
    x = np.sort(np.asarray(samples, dtype=float))
    n = len(x)
    if n == 0:
        return math.nan, math.nan
    j = _binomial_quantile(n, (1.0 - confidence) / 2)  # [x_(j), x_(n+1-j)] covers the median (1-based)
    return float(x[max(j - 1, 0)]), float(x[min(n - j, n - 1)])


def _binomial_quantile(n: int, p: float) -> int:
    """The smallest j with P(Binomial(n, 1/2) ≤ j) ≥ p (scipy's binom.ppf), by summing the exact pmf."""
    total, cdf, scale = 1 << n, 0, 10 ** 12  # exact integers: 2^n overflows a float past n = 1023
    target = round(p * scale) * total
    for j in range(n + 1):
        cdf += math.comb(n, j)
        if cdf * scale >= target:
            return j
    return n


def median_ci(rounds: Sequence[Sequence[float]], confidence: float = CONFIDENCE,
              seed: int = 0) -> tuple[float, float]:
    """Interval of the median of the pooled samples of one or more rounds."""
    rounds = [np.asarray(r, dtype=float) for r in rounds if len(r)]
    if not rounds:
        return math.nan, math.nan
    if len(rounds) == 1:
        return median_ci_one(rounds[0], confidence)
    rng = np.random.default_rng(seed)
    # resample rounds, then samples within each picked round (all rounds padded to one length by resampling)
    size = max(len(r) for r in rounds)
    within = np.stack([rng.choice(r, (_BOOTSTRAP, size)) for r in rounds], axis=1)  # [boot, round, size]
    picked = rng.integers(0, len(rounds), (_BOOTSTRAP, len(rounds)))
    pooled = np.take_along_axis(within, picked[:, :, None].repeat(size, axis=2), axis=1)
    medians = np.median(pooled.reshape(_BOOTSTRAP, -1), axis=1)
    alpha = 1.0 - confidence
    return float(np.quantile(medians, alpha / 2)), float(np.quantile(medians, 1 - alpha / 2))


@dataclass(frozen=True)
class Summary:
    median_ms: float
    p20_ms: float
    p80_ms: float
    lo_ms: float
    hi_ms: float
    reps: int
    rounds: int


def summarize(rounds: Sequence[Sequence[float]]) -> Summary:
    """Median, p20, p80 of the pooled samples and the interval of the median."""
    pooled = [x for r in rounds for x in r]
    lo, hi = median_ci(rounds)
    return Summary(quantile(pooled, 0.5), quantile(pooled, 0.2), quantile(pooled, 0.8), lo, hi, len(pooled),
                   sum(1 for r in rounds if len(r)))


@dataclass(frozen=True)
class Change:
    """NEW against BASE: the ratio of medians with its interval, the test's p-value, and the verdict."""

    ratio: float
    ratio_lo: float
    ratio_hi: float
    p_value: float
    verdict: str  # faster, slower, same


def compare_samples(base: Sequence[float], new: Sequence[float], threshold: float = 0.10,
                    alpha: float = 0.05, seed: int = 0) -> Change:
    """Is NEW slower or faster than BASE? Called a change only when all three hold (as asv does): the
    Mann–Whitney U test rejects equality at `alpha`, the ratio of medians is beyond 1 ± `threshold`, and the
    bootstrap interval of that ratio lies entirely beyond 1."""
    b, n = np.asarray(base, dtype=float), np.asarray(new, dtype=float)
    if len(b) == 0 or len(n) == 0:
        return Change(math.nan, math.nan, math.nan, math.nan, "same")
    ratio = float(np.median(n) / np.median(b))
    rng = np.random.default_rng(seed)
    boots = (np.median(rng.choice(n, (_BOOTSTRAP, len(n))), axis=1)
             / np.median(rng.choice(b, (_BOOTSTRAP, len(b))), axis=1))
    lo, hi = float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))
    from scipy.stats import mannwhitneyu  # noqa: PLC0415 - scipy's import is slow; only comparisons need it

    p = float(mannwhitneyu(b, n, alternative="two-sided").pvalue) if len(b) > 1 and len(n) > 1 else 1.0
    verdict = "same"
    if p < alpha and ratio > 1 + threshold and lo > 1:
        verdict = "slower"
    elif p < alpha and ratio < 1 / (1 + threshold) and hi < 1:
        verdict = "faster"
    return Change(ratio, lo, hi, p, verdict)
