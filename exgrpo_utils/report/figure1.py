"""The paper's Figure 1 from the records: each model's accuracy on a task's test set beside its
accuracy on the task's EI-Test (``evaluate.ei_test``), and the deficit between the two.

Per method, the deficit is accuracy(test set) - accuracy(EI-Test), averaged over its seeds. Both the
EI-Test accuracy and the deficit come from the evaluation records item by item, with
``evaluate.stats.seed_cluster_interval``: two seeds or more, the Student-t interval over seeds widened
to a bootstrap over seeds, test items and EI questions; one model (zero-shot, or one seed), the
bootstrap over items and questions only. The probes of one test question (about ten) are correlated,
so they are always resampled together, never one by one; with fewer than ``stats.MIN_CLUSTERS``
questions there is no interval. The two sets are resampled independently although they share
questions (conservative for the deficit). Only the EI-Test items the run's current set holds are
read (records of an earlier build are ignored). The teacher is not scored: the EI-Test's gold answers
are its own (docs/method.md, EI-Test). A deficit that shrinks from zero-shot to a method trained on
probes is what EI training is meant to do.
"""
from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from ..evaluate.ei_test import ei_source, ei_test_ids, ei_test_name
from ..evaluate.stats import seed_cluster_interval
from ..experiments.methods import GROUPS, METHODS
from ..infra.layout import RunLayout
from .paper_tables import fmt, item_scores, tasks_of

FIGURE1_KEYS = GROUPS["figure1"]


def _items(layouts, df, key: str, task: str):
    """``key``'s scores on the test set and on the EI-Test, items x seeds (the seeds that hold both,
    the items every one of them scored; EI items of the run's current set only), and each EI item's
    question; None when no seed holds both."""
    ei = ei_test_name(task)
    on_test, on_ei = item_scores(layouts, df, key, task, task), item_scores(layouts, df, key, task, ei)
    seeds = sorted(on_test.keys() & on_ei.keys())
    if not seeds:
        return None
    current = ei_test_ids(layouts, task)
    test_ids = sorted(set.intersection(*(set(on_test[s]) for s in seeds)))
    ei_ids = sorted(set.intersection(*(set(on_ei[s]) for s in seeds)) & current)
    if not test_ids or not ei_ids:
        return None
    return ([[on_test[s][i][0] for s in seeds] for i in test_ids], [[on_ei[s][i][0] for s in seeds] for i in ei_ids],
            [ei_source(i) for i in ei_ids])


def _interval(stats: dict) -> dict:
    """``seed_cluster_interval``'s result in points, as ``cell_stats`` gives a cell."""
    return {"mean": 100 * stats["mean"], "low": 100 * stats["low"], "high": 100 * stats["high"],
            "seeds": stats["seeds"], "covers": stats["covers"]}


def deficit_and_sets(layouts, df, key: str, task: str) -> tuple[dict, dict, dict]:
    """(deficit, test-set accuracy, EI-Test accuracy) of ``key`` on ``task`` in points, each with its
    interval, seeds and what the interval covers, all three from the same seeds and items (so the
    deficit shown is the test-set accuracy shown minus the EI-Test's); seeds 0 when the records hold no
    item of both sets."""
    scored = _items(layouts, df, key, task)
    if scored is None:
        none = {"mean": math.nan, "low": math.nan, "high": math.nan, "seeds": 0, "covers": ""}
        return none, none, none
    on_test, on_ei, questions = scored
    deficit = seed_cluster_interval([(1.0, on_test, None), (-1.0, on_ei, questions)])
    return (_interval(deficit), _interval(seed_cluster_interval([(1.0, on_test, None)])),
            _interval(seed_cluster_interval([(1.0, on_ei, questions)])))


def ei_test_table(df, layouts: Sequence[RunLayout], keys: Sequence[str] = FIGURE1_KEYS):
    """Figure 1's table: per task with an EI-Test and per method that has it, the test set and EI-Test
    accuracies and the deficit with their intervals, from the seeds that hold both sets
    (``deficit_and_sets``: items, or seeds and items; the EI-Test resampled by question)."""
    rows = []
    for task in tasks_of(df):
        ei = ei_test_name(task)
        if not (df["dataset"] == ei).any():
            continue
        for key in keys:
            d, original, on_ei = deficit_and_sets(layouts, df, key, task)
            if not on_ei["seeds"]:
                continue
            rows.append({"train_dataset": task, "method": METHODS[key].label, "key": key, "test set": fmt(original),
                         "EI-Test": fmt(on_ei), "deficit": f"{d['mean']:+.1f} " + (
                             "[n/a]" if math.isnan(d["low"]) else f"[{d['low']:+.1f}, {d['high']:+.1f}]"),
                         "interval covers": d["covers"], "seeds": d["seeds"], "original": original, "ei": on_ei,
                         "deficit_mean": d["mean"]})
    return pd.DataFrame(rows)


def figure1_points(table) -> pd.DataFrame:
    """The bars of ``report.plotting.figure1_ei_test``: per method, each set's mean and interval."""
    rows = []
    for r in table.to_dict("records"):
        for name, stats in (("original", r["original"]), ("EI-Test", r["ei"])):
            rows.append({"model": r["method"] if table["train_dataset"].nunique() == 1 else f"{r['method']} ({r['train_dataset']})",
                         "set": name, "accuracy": stats["mean"], "low": stats["low"], "high": stats["high"]})
    return pd.DataFrame(rows, columns=["model", "set", "accuracy", "low", "high"])


def table_markdown(table) -> str:
    cols = ["train_dataset", "method", "test set", "EI-Test", "deficit", "interval covers"]
    if table.empty:
        return "No EI-Test in these results (set ei_test_items > 0 for notebook 01).\n"
    note = ("\nTest set, EI-Test and deficit from the seeds that hold both sets; intervals: with two seeds or more the Student-t interval over seeds widened to a "
            "bootstrap over seeds, test items and EI questions; for one model the bootstrap over items and questions. "
            "An EI question's probes are resampled together. The teacher is not scored: the EI-Test's gold answers are "
            "its own.\n")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in table.to_dict("records")]
    return "\n".join(lines) + "\n" + note
