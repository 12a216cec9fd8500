"""Statistics of a study over seeds: mean, sample std, Student-t 95% intervals, paired t-tests.

Every result is plain JSON: a value that does not exist (the std of one number, the interval of
fewer than two, the p-value of differences that are all zero) is None, never NaN.
"""

import math
import warnings

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


def finite(value) -> float | None:
    """value as a float, or None when it is missing, NaN or infinite."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def describe(values) -> dict:
    """n, mean, sample standard deviation (ddof=1) and the 95% t-interval of the mean.

    With n = 1 only the mean exists (std and ci95 are None); with n = 0 the mean is None too.
    """
    x = np.asarray(list(values), dtype=np.float64)
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci95": None}
    mean = float(np.mean(x))
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "ci95": None}
    std = float(np.std(x, ddof=1))
    half = float(stats.t.ppf((1 + CONFIDENCE) / 2, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95": [mean - half, mean + half]}


def compare_paired(a: dict, b: dict) -> dict:
    """a - b over the keys (seeds) both have: the mean difference, its 95% t-interval and the
    two-sided p-value of the paired t-test. a and b map seed -> value."""
    seeds = sorted(set(a) & set(b))
    xa = np.array([a[s] for s in seeds], dtype=np.float64)
    xb = np.array([b[s] for s in seeds], dtype=np.float64)
    difference = describe(xa - xb)
    p_value = None
    if len(seeds) >= 2:
        # Differences that are all equal make t infinite (p = 0) or 0/0 (no p-value at all).
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            p_value = finite(stats.ttest_rel(xa, xb).pvalue)
    return {
        "n": len(seeds),
        "seeds": seeds,
        "mean_difference": difference["mean"],
        "std": difference["std"],
        "ci95": difference["ci95"],
        "p_value": p_value,
    }
