"""Paired statistics for comparing two methods trained on the same seeds.

Trials that share a seed share the validation split, the initialization, the noisy labels and the
batch order, so the per-seed differences d_i = a_i − b_i remove most of the seed-to-seed spread.
With n pairs, mean d̄ and standard deviation s (n − 1 in the denominator):

    t-interval   d̄ ± t(1 − α/2, n − 1) · s / √n
    paired test  t = d̄ / (s / √n), two-sided p = 2 · P(T_{n−1} > |t|)   (scipy.stats.ttest_rel)
    Holm         sort the m p-values ascending; p_holm_(k) = max_{j ≤ k} min(1, (m − j + 1) · p_(j))
    detectable   (t(1 − α/2, n − 1) + t(power, n − 1)) · s / √n: the smallest true mean difference the
                 test finds with the given power at level α (the usual t approximation)
"""
import math

import numpy as np
from scipy import stats


def paired_difference(a, b, confidence=0.95):
    """Paired comparison of per-seed values `a` and `b` (same seeds, same order; NaN pairs dropped).

    Returns {n, mean, low, high, p, sd}: mean of a − b, its t-interval at `confidence`, the two-sided
    paired t-test's p-value and the standard deviation of the differences. With fewer than two pairs
    the interval and p are NaN; with identical differences (sd 0) the interval is the mean itself and
    p is NaN: no test can tell such a difference from chance (a single test example can make it);
    differences equal to within 1e-9 (relative) count as identical.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_difference needs two sequences of the same length, got {a.shape} and {b.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    keep = ~(np.isnan(a) | np.isnan(b))
    d = a[keep] - b[keep]
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "low": math.nan, "high": math.nan, "p": math.nan, "sd": math.nan}
    sd = float(d.std(ddof=1))
    if sd <= 1e-9 * max(1.0, abs(mean)):  # identical but for rounding: 98.33 − 98.05 and 97.50 − 97.22
        sd = 0.0
    if sd == 0:
        return {"n": n, "mean": mean, "low": mean, "high": mean, "p": math.nan, "sd": 0.0}
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    p = float(stats.ttest_rel(a[keep], b[keep]).pvalue)
    return {"n": n, "mean": mean, "low": mean - half, "high": mean + half, "p": p, "sd": sd}


def holm(p_values):
    """Holm's step-down adjustment of a family of p-values (NaN stays NaN and does not count)."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m, running = len(order), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def detectable_effect(sd, n, alpha=0.05, power=0.8):
    """The smallest mean difference a two-sided paired t-test at level `alpha` detects with `power`,
    for n pairs whose differences have standard deviation `sd` (NaN below two pairs or without spread)."""
    if n < 2 or not sd > 0 or not math.isfinite(sd):  # no spread: the t approximation says nothing
        return math.nan
    return (stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)) * sd / math.sqrt(n)
