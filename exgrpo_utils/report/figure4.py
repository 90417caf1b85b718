"""The paper's Figure 4 from the records: accuracy against the fraction p of the training questions,
SFT and ExGRPO, with how many questions each point's models trained on.

A fraction run keeps max(1, round(p x n)) of the n questions EI kept for its task
(``train.sft.subsample_questions``), drawn with the run's seed alone, so two fractions that keep as
many of a task's questions keep the same ones, and their trainings are the same training (same rows,
same seed; an ExGRPO point's warm-up is its fraction's SFT). Where that holds for every model of two
points (every task and seed), the points coincide by construction, not by what the method does;
``notes`` says so, and the figure prints it. At paper-mini's size (Eq. 1 with a 135M stand-in
teacher keeps 1-2 questions per task) every fraction below 1 keeps the same question. Each point's
``questions`` is the mean over its models, read from the trainings' summaries.
"""
from __future__ import annotations

import json
from typing import Sequence

import pandas as pd

from ..infra.layout import RunLayout
from .paper_tables import Column, cell_stats, headline

FRACTIONS = (0.1, 0.25, 0.5)  # the paper's Figure 4 fractions below 1 (the methods sft-p<p>, exgrpo-p<p>)
SUMMARIES = ("sft_summary.json", "rl_summary.json")  # a finished training's summary, with its "questions"
PAIRS = [(p, f"{k}-p{p}" if p < 1 else k, m) for p in (*FRACTIONS, 1.0) for k, m in (("sft", "SFT"), ("exgrpo", "ExGRPO"))]
COLUMNS = ["p", "method", "key", "mean", "low", "high", "seeds", "questions", "trained"]


def trained_questions(layouts: Sequence[RunLayout], run_id: str) -> int | None:
    """How many questions the training ``run_id`` kept (its summary's ``questions``; the last layout
    that holds the training wins, as for the records), None when no summary says."""
    for lay in reversed(list(layouts)):
        for name in SUMMARIES:
            path = lay.train_root / run_id / name
            if path.is_file():
                return json.loads(path.read_text()).get("questions")
    return None


def fraction_points(df, layouts: Sequence[RunLayout] = (), column: Column | None = None):
    """Figure 4's data on ``column`` (default ``paper_tables.headline``): p, method (SFT or ExGRPO), mean
    and interval over seeds (``paper_tables.cell_stats``), the mean number of questions its models
    trained on, and ``trained``: the (task, seed, questions) of each model (empty when unknown)."""
    column = column or headline(df)
    rows = []
    for p, key, method in PAIRS if column else []:
        s = cell_stats(df, key, column.datasets, column.source)
        if not s["seeds"]:
            continue
        runs = df[(df["key"] == key) & (df["status"] == "ok") & (df["eval"] == column.source)
                  & (df["dataset"].isin(column.datasets))].drop_duplicates(["train_dataset", "seed"])
        trained = tuple(sorted((t, int(seed), trained_questions(layouts, rid))
                               for t, seed, rid in zip(runs["train_dataset"], runs["seed"], runs["run_id"])))
        counts = [q for *_, q in trained if q is not None]
        rows.append({"p": p, "method": method, "key": key, **s,
                     "questions": sum(counts) / len(counts) if counts and len(counts) == len(trained) else float("nan"),
                     "trained": trained if len(counts) == len(trained) else ()})
    return pd.DataFrame(rows, columns=COLUMNS).sort_values(["method", "p"]).reset_index(drop=True)


def notes(points, df=None) -> list[str]:
    """One line per method whose fractions trained on the same questions in every model (the same
    trainings, so their points coincide by construction), and with the records ``df``, one per point
    missing because some of its trainings did not run (their reasons); nothing when none applies."""
    out, missing = [], {}
    for p, key, method in PAIRS if df is not None else []:
        failed = df[(df["key"] == key) & (df["status"] != "ok")].drop_duplicates(["train_dataset", "seed"])
        if len(failed) and not (points["key"] == key).any():
            why = "; ".join(f"{t} s{seed}: {r}" for t, seed, r in zip(failed["train_dataset"], failed["seed"], failed["reason"]))
            missing.setdefault((method, why), []).append(p)
    out += [f"{method}: no point at p = {', '.join(f'{p:g}' for p in ps)}: {why}" for (method, why), ps in missing.items()]
    for method, grp in points.groupby("method", sort=False):
        same: dict[tuple, list[float]] = {}
        for p, trained in zip(grp["p"], grp["trained"]):
            if trained:
                same.setdefault(tuple(trained), []).append(float(p))
        for trained, ps in same.items():
            if len(ps) > 1:
                per = ", ".join(f"{t} s{seed}: {q}" for t, seed, q in trained)
                out.append(f"{method}: p = {', '.join(f'{p:g}' for p in sorted(ps))} trained on the same questions "
                           f"({per}): one training each, so these points coincide by construction")
    return out
