"""Intervals (Wilson for one accuracy, a mean of accuracies, Student-t over seeds; 95%) and paired
tests: exact McNemar and a paired bootstrap over items (one model against another, items only), and
``seed_level_comparison`` (two methods over several trained seeds: the seeds and the items).

Items that come in correlated groups (the EI-Test: about ten probes of one test question) are
resampled by group: ``clusters`` names each item's group, and every bootstrap here then draws groups
with all their items, so the interval covers the choice of questions, not of probes."""
from __future__ import annotations

import math
import random
from typing import Sequence

import numpy as np


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


def t_975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (bisection on ``t_two_sided_p``).

    >>> [round(t_975(df), 3) for df in (1, 2, 4, 10, 30)]
    [12.706, 4.303, 2.776, 2.228, 2.042]
    """
    low, high = 0.0, 1000.0
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if t_two_sided_p(mid, df) > 0.05 else (low, mid)
    return (low + high) / 2


def seed_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the 95% Student-t interval of the mean over seeds; NaN bounds for one seed."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return (float("nan"),) * 3
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return (m, float("nan"), float("nan"))
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
    t = t_975(len(vals) - 1)
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


def _cluster_sums(d: np.ndarray, clusters: Sequence | None) -> tuple[np.ndarray, np.ndarray]:
    """Per group: the sum of ``d``'s rows (items; columns: seeds) and the number of items; without
    ``clusters`` every item is its own group."""
    if clusters is None:
        return d, np.ones(len(d))
    if len(clusters) != len(d):
        raise ValueError(f"clusters name {len(clusters)} items, the scores hold {len(d)}")
    index = {c: k for k, c in enumerate(dict.fromkeys(clusters))}
    rows = np.array([index[c] for c in clusters])
    sums = np.zeros((len(index),) + d.shape[1:])
    np.add.at(sums, rows, d)
    return sums, np.bincount(rows, minlength=len(index)).astype(float)


MIN_CLUSTERS = 10  # kit default: a bootstrap over fewer groups (questions) than this gives no interval


def _too_few(clusters: Sequence | None, min_clusters: int) -> str | None:
    """What ``covers`` says when ``clusters`` name too few groups for a bootstrap; None otherwise."""
    k = len(set(clusters)) if clusters is not None else min_clusters
    return f"no interval: {k} questions (fewer than {min_clusters})" if k < min_clusters else None


def _percentiles(boots: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The two order statistics of a sorted bootstrap sample that bound its central ``level``."""
    cut = int(round((1 - level) / 2 * len(boots)))
    return float(boots[cut]), float(boots[len(boots) - 1 - cut])


def _resampled_means(x: np.ndarray, clusters: Sequence | None, seed_draw: np.ndarray, rng) -> np.ndarray:
    """Per resample, the mean of ``x`` (items x seeds) of each drawn seed (``seed_draw``: resamples x
    seeds) over one draw of groups shared by those seeds (they are scored on the same items)."""
    sums, counts = _cluster_sums(x, clusters)
    idx = rng.integers(0, len(counts), size=(len(seed_draw), 1, len(counts)))
    return sums[idx, seed_draw[:, :, None]].sum(axis=2) / counts[idx[:, 0, :]].sum(axis=1)[:, None]


def seed_cluster_interval(parts: Sequence[tuple[float, Sequence[Sequence[float]], Sequence | None]], *,
                          n_boot: int = 2000, seed: int = 0, min_clusters: int = MIN_CLUSTERS) -> dict:
    """A signed sum of mean accuracies, with an interval that covers seeds, items and questions.

    ``parts``: (sign, scores[i][s], clusters) per scored set: one set for an accuracy, (+1, test set),
    (-1, EI-Test) for Figure 1's deficit. Per seed s the statistic is sum(sign * mean_i scores[i][s]).
    The bootstrap draws seeds, then, for each set on its own, its groups (``clusters``: each item's
    question) or items, one draw shared by the drawn seeds; the ratio of drawn sums to drawn items
    makes an accuracy over items. Two seeds or more: the Student-t interval over the per-seed values,
    widened to hold the bootstrap's (never narrower than either); one seed: the bootstrap's, over
    items and questions only. The sets are resampled independently (a test set and its EI-Test share
    questions and err together, so for their difference this is conservative). A set with fewer than
    ``min_clusters`` groups gives NaN bounds: a percentile bootstrap over a handful of questions
    understates the noise. Returns mean, low, high, seeds, per_seed and ``covers``."""
    arrays = [(sign, np.asarray(x, dtype=float), c) for sign, x, c in parts]
    n_seeds = arrays[0][1].shape[1]
    if any(x.ndim != 2 or x.shape[1] != n_seeds or not len(x) for _, x, _ in arrays):
        raise ValueError("seed_cluster_interval needs, for every set, items x the same seeds")
    per_seed = sum(sign * x.mean(axis=0) for sign, x, _ in arrays)
    mean = float(per_seed.mean())
    what = ("seeds, " if n_seeds > 1 else "") + ("items and questions" if any(c is not None for *_, c in arrays) else "items")
    out = {"mean": mean, "seeds": n_seeds, "per_seed": per_seed.tolist(), "covers": what}
    fewest = min((c for *_, c in arrays if c is not None), key=lambda c: len(set(c)), default=None)
    if few := _too_few(fewest, min_clusters):
        return {**out, "low": math.nan, "high": math.nan, "covers": few}
    rng = np.random.default_rng(seed)
    seed_draw = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    boots = np.sort(sum(sign * _resampled_means(x, c, seed_draw, rng).mean(axis=1) for sign, x, c in arrays))
    low, high = _percentiles(boots)
    if n_seeds > 1:
        _, t_low, t_high = seed_interval(per_seed.tolist())
        low, high = min(low, t_low), max(high, t_high)
    return {**out, "low": low, "high": high}


def paired_bootstrap(first: Sequence[Sequence[float]], second: Sequence[Sequence[float]], *, n_boot: int = 2000,
                     seed: int = 0, z_level: float = 0.95, clusters: Sequence | None = None) -> dict:
    """Paired bootstrap over items of ``mean(second) - mean(first)``.

    ``first[i]`` and ``second[i]`` are item i's scores (0/1) under each method, one per seed (each
    inner sequence the same length): items are resampled with all their seeds (``clusters``: groups
    of items resampled whole). The interval covers
    the choice of items only, for these trained models: it says nothing of how another training seed
    would do (with several seeds, compare methods with :func:`seed_level_comparison`). Returns the
    observed difference, its ``z_level`` percentile interval and a two-sided p-value (twice the
    share of resampled differences on the other side of zero)."""
    if len(first) != len(second) or not first:
        raise ValueError(f"paired_bootstrap needs the same non-empty items in both: {len(first)} vs {len(second)}")
    d = [sum(b) / len(b) - sum(a) / len(a) for a, b in zip(first, second)]
    n = len(d)
    observed = sum(d) / n
    rng = random.Random(seed)
    if clusters is None:
        boots = sorted(sum(d[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    else:
        sums, counts = _cluster_sums(np.asarray(d)[:, None], clusters)
        m = len(counts)
        draws = [[rng.randrange(m) for _ in range(m)] for _ in range(n_boot)]
        boots = sorted(float(sums[k, 0].sum() / counts[k].sum()) for k in map(np.asarray, draws))
    lo, hi = _percentiles(boots, z_level)  # order statistics symmetric about the middle
    below = sum(x <= 0 for x in boots) / n_boot
    above = sum(x >= 0 for x in boots) / n_boot
    p = 1.0 if observed == 0 and all(x == 0 for x in d) else min(1.0, 2 * min(below, above))
    return {"diff": observed, "low": lo, "high": hi, "p": p, "items": n}


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-12:
            break
    return h


def t_two_sided_p(t: float, df: int) -> float:
    """Two-sided p-value of Student's t with ``df`` degrees of freedom: I_x(df/2, 1/2), x = df/(df + t^2).

    >>> round(t_two_sided_p(2.776, 4), 3), round(t_two_sided_p(12.706, 1), 3), t_two_sided_p(0.0, 3)
    (0.05, 0.05, 1.0)
    """
    if math.isinf(t):
        return 0.0
    x = df / (df + t * t)
    if x >= 1.0:
        return 1.0
    a, b = df / 2, 0.5
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return min(1.0, front * _betacf(a, b, x) / a)
    return min(1.0, 1.0 - front * _betacf(b, a, 1 - x) / b)


def seed_level_comparison(first: Sequence[Sequence[float]], second: Sequence[Sequence[float]], *, n_boot: int = 2000,
                          seed: int = 0, clusters: Sequence | None = None, min_clusters: int = MIN_CLUSTERS) -> dict:
    """Two methods, each trained with the same seeds and scored on the same items, compared so that
    the interval covers both the training seeds and the items.

    ``first[i][s]``, ``second[i][s]``: item i's score under each method's seed-s model. Per seed the
    paired difference d_s = mean_i(second) - mean_i(first); with two seeds or more the result is the
    95% Student-t interval of mean(d_s) over seeds (training noise) widened to hold the two-level
    bootstrap's (seeds resampled, then items within each: item noise too), with the larger of the two
    p-values; it is never narrower than the t-interval. Each bootstrap resample draws one set of items
    for all its seeds (the seeds share the items). One seed: the item-level bootstrap, labelled as
    one model against one. ``clusters``: each item's group (an EI-Test probe's test question), resampled
    whole by both bootstraps; fewer than ``min_clusters`` of them: no interval (NaN). Returns diff, low, high, p, items, seeds, per_seed and ``covers``."""
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if a.shape != b.shape or a.ndim != 2 or not a.size:
        raise ValueError(f"seed_level_comparison needs the same items and seeds in both: {a.shape} vs {b.shape}")
    per_seed = (b - a).mean(axis=0)
    n_items, n_seeds = a.shape
    if few := _too_few(clusters, min_clusters):
        return {"diff": float(per_seed.mean()), "low": math.nan, "high": math.nan, "p": math.nan, "items": n_items,
                "seeds": n_seeds, "per_seed": per_seed.tolist(), "covers": few}
    if n_seeds < 2:
        boot = paired_bootstrap(first, second, n_boot=n_boot, seed=seed, clusters=clusters)
        return {**boot, "seeds": 1, "per_seed": per_seed.tolist(), "covers": _covers("items (one model each)", clusters)}
    mean, t_low, t_high = seed_interval(per_seed.tolist())
    sd = float(per_seed.std(ddof=1))
    p_t = 1.0 if sd == 0 and mean == 0 else t_two_sided_p(mean / (sd / math.sqrt(n_seeds)) if sd else math.inf, n_seeds - 1)
    rng = np.random.default_rng(seed)
    d = b - a
    seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    # one draw of items per resample, shared by its seeds: every seed is scored on the same items, so
    # an item's advantage for one method is common to all of them (drawing items anew per seed would
    # divide the item variance by the number of seeds)
    boots = np.sort(_resampled_means(d, clusters, seeds, rng).mean(axis=1))
    b_low, b_high = _percentiles(boots)
    p_boot = 1.0 if not d.any() else min(1.0, 2 * min(float((boots <= 0).mean()), float((boots >= 0).mean())))
    return {"diff": float(mean), "low": min(t_low, b_low), "high": max(t_high, b_high), "p": max(p_t, p_boot),
            "items": n_items, "seeds": n_seeds, "per_seed": per_seed.tolist(), "covers": _covers("seeds and items", clusters)}


def _covers(what: str, clusters: Sequence | None) -> str:
    return what if clusters is None else what.replace("items", "questions (probes resampled with their question)")
