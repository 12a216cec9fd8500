"""Statistics of a study over seeds: mean, sample std, Student-t 95% intervals, paired t-tests.

Every result is plain JSON: a value that does not exist (the std of one number, the interval of
fewer than two, the p-value of differences that are all zero) is None, never NaN. An interval
is cut to the range its metric can take (an accuracy's [0, 1], a time's [0, inf)), and
"clipped" says when it was: the t-interval of a few seeds can reach past it, yet the mean it
is about cannot.
"""

import math
import warnings

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
UNBOUNDED = (-math.inf, math.inf)
# The values each metric can take; per_class_accuracy is each class's accuracy.
RANGES = {
    "test_accuracy": (0.0, 1.0),
    "best_test_accuracy": (0.0, 1.0),
    "per_class_accuracy": (0.0, 1.0),
    "test_loss": (0.0, math.inf),
    "wall_seconds": (0.0, math.inf),
    "train_images_per_second": (0.0, math.inf),
}


def difference_range(bounds: tuple[float, float]) -> tuple[float, float]:
    """The range of a - b for a and b in bounds: an accuracy difference lies in [-1, 1]."""
    low, high = bounds
    return (low - high, high - low)


def clip(interval: list[float], bounds: tuple[float, float]) -> tuple[list[float], bool]:
    """interval cut to bounds, and whether that changed it."""
    low, high = max(interval[0], bounds[0]), min(interval[1], bounds[1])
    return [low, high], [low, high] != interval


def finite(value) -> float | None:
    """value as a float, or None when it is missing, NaN or infinite."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def describe(values, bounds: tuple[float, float] = UNBOUNDED) -> dict:
    """n, mean, sample standard deviation (ddof=1) and the 95% t-interval of the mean, cut to
    bounds ("clipped": whether it was).

    With n = 1 only the mean exists (std and ci95 are None); with n = 0 the mean is None too.
    """
    x = np.asarray(list(values), dtype=np.float64)
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci95": None, "clipped": False}
    mean = float(np.mean(x))
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "ci95": None, "clipped": False}
    std = float(np.std(x, ddof=1))
    half = float(stats.t.ppf((1 + CONFIDENCE) / 2, n - 1)) * std / math.sqrt(n)
    ci95, clipped = clip([mean - half, mean + half], bounds)
    return {"n": n, "mean": mean, "std": std, "ci95": ci95, "clipped": clipped}


def compare_paired(a: dict, b: dict, bounds: tuple[float, float] = UNBOUNDED) -> dict:
    """a - b over the keys (seeds) both have: the mean difference, its 95% t-interval (cut to
    bounds, the range of a difference) and the two-sided p-value of the paired t-test. a and b
    map seed -> value."""
    seeds = sorted(set(a) & set(b))
    xa = np.array([a[s] for s in seeds], dtype=np.float64)
    xb = np.array([b[s] for s in seeds], dtype=np.float64)
    difference = describe(xa - xb, bounds)
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
        "clipped": difference["clipped"],
        "p_value": p_value,
    }
