"""Intervals (Wilson for one accuracy, a mean of accuracies, Student-t over seeds; 95%) and paired
tests (exact McNemar, a paired bootstrap over items and seeds)."""
from __future__ import annotations

import math
import random
from typing import Sequence


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for k successes out of n (kit default: it behaves at 0% and 100%)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(ks: Sequence[int], ns: Sequence[int], z: float = 1.959964) -> tuple[float, float]:
    """95% interval of an unweighted mean of independent accuracies k_i/n_i (kit default).

    Normal approximation whose variance uses the Agresti-Coull estimate (k+2)/(n+4) of each
    accuracy, so an average of all-0% or all-100% datasets still gets an interval of honest width.
    """
    if not ns:
        return (float("nan"), float("nan"))
    m = sum(k / n for k, n in zip(ks, ns)) / len(ns)
    var = sum(((k + 2) / (n + 4)) * (1 - (k + 2) / (n + 4)) / (n + 4) for k, n in zip(ks, ns)) / len(ns) ** 2
    half = z * math.sqrt(var)
    return (max(0.0, m - half), min(1.0, m + half))


T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def seed_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the 95% Student-t interval of the mean over seeds; NaN bounds for one seed."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return (float("nan"),) * 3
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return (m, float("nan"), float("nan"))
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
    t = T_975.get(len(vals) - 1, 1.96)
    half = t * sd / math.sqrt(len(vals))
    return (m, m - half, m + half)


# ---------------------------------------------------------------------------------------------
# Paired comparisons: the same items scored by two models (or by two runs of one)

def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` items right only in the first run and ``c`` right
    only in the second (binomial test of b against (b + c) / 2); 1.0 when no item differs.

    >>> round(mcnemar_exact(5, 0), 4), round(mcnemar_exact(10, 2), 4), mcnemar_exact(3, 3)
    (0.0625, 0.0386, 1.0)
    """
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_bootstrap(first: Sequence[Sequence[float]], second: Sequence[Sequence[float]], *, n_boot: int = 2000,
                     seed: int = 0, z_level: float = 0.95) -> dict:
    """Paired bootstrap over items of ``mean(second) - mean(first)``.

    ``first[i]`` and ``second[i]`` are item i's scores (0/1) under each method, one per seed (each
    inner sequence the same length): items are resampled with all their seeds, so the interval
    covers both the choice of items and the seeds run. Returns the observed difference, its
    ``z_level`` percentile interval and a two-sided p-value (twice the share of resampled
    differences on the other side of zero)."""
    if len(first) != len(second) or not first:
        raise ValueError(f"paired_bootstrap needs the same non-empty items in both: {len(first)} vs {len(second)}")
    d = [sum(b) / len(b) - sum(a) / len(a) for a, b in zip(first, second)]
    n = len(d)
    observed = sum(d) / n
    rng = random.Random(seed)
    boots = sorted(sum(d[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    cut = int((1 - z_level) / 2 * n_boot)  # order statistics symmetric about the middle
    lo, hi = boots[cut], boots[n_boot - 1 - cut]
    below = sum(x <= 0 for x in boots) / n_boot
    above = sum(x >= 0 for x in boots) / n_boot
    p = 1.0 if observed == 0 and all(x == 0 for x in d) else min(1.0, 2 * min(below, above))
    return {"diff": observed, "low": lo, "high": hi, "p": p, "items": n}
