"""Intervals: Wilson for one accuracy, a mean of accuracies, and Student-t over seeds (95%)."""
from __future__ import annotations

import math
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
