"""The paper's Figure 4 from the records: accuracy against the fraction p of the training questions,
SFT and ExGRPO, with how many questions each point's models trained on.

A fraction's SFT keeps max(1, round(p x n)) of the n questions EI kept for its task
(``train.sft.subsample_questions``), drawn with the run's seed alone; its ExGRPO starts from that SFT
and draws the same questions for RL. So two fractions whose SFT drew as many of a task's questions at
one seed drew the same ones, and their trainings on that task and seed, SFT and ExGRPO, have identical
inputs (an ExGRPO summary's ``questions`` can be fewer than its draw: RL leaves out questions with no
usable probe; the draw is read from its SFT's summary). ``notes`` names every such (task, seed), and
says when it holds for every model of two points: those points then coincide by construction, not by
what the method does. At paper-mini's size (Eq. 1 with a 135M stand-in teacher keeps few questions
per task) fractions below 1 can draw the same one. Each point's ``questions`` is the mean over its
models of the questions they trained on, read from the trainings' summaries (the run each record
came from).
"""
from __future__ import annotations

import json
from typing import Sequence

import pandas as pd

from ..experiments.methods import METHODS
from ..infra.layout import TASK_SEP, RunLayout, method_of, run_id
from .paper_tables import Column, cell_stats, headline

FRACTIONS = (0.1, 0.25, 0.5)  # the paper's Figure 4 fractions below 1 (the methods sft-p<p>, exgrpo-p<p>)
SUMMARIES = ("sft_summary.json", "rl_summary.json")  # a finished training's summary, with its "questions"
PAIRS = [(p, f"{k}-p{p}" if p < 1 else k, m) for p in (*FRACTIONS, 1.0) for k, m in (("sft", "SFT"), ("exgrpo", "ExGRPO"))]
COLUMNS = ["p", "method", "key", "mean", "low", "high", "seeds", "questions", "drawn"]


def trained_questions(layout: RunLayout | None, run_id: str) -> int | None:
    """How many questions the training ``run_id`` of ``layout`` kept (its summary's ``questions``),
    None when no summary says."""
    for name in SUMMARIES if layout is not None else ():
        path = layout.train_root / run_id / name
        if path.is_file():
            return json.loads(path.read_text()).get("questions")
    return None


def _warmup_id(rid: str, key: str) -> str:
    """The run id of the SFT that drew ``rid``'s questions: an RL method's warm-up of the same seed and
    task (arith--exgrpo-p0.1 -> arith--sft-p0.1), an SFT method itself."""
    init = METHODS[key].init
    if METHODS[key].kind != "rl" or init in ("", "base"):
        return rid
    task, sep, _ = rid.rpartition(TASK_SEP)
    return task + sep + run_id(init, method_of(rid)[1])


def fraction_points(df, layouts: Sequence[RunLayout] = (), column: Column | None = None):
    """Figure 4's data on ``column`` (default ``paper_tables.headline``): p, method (SFT or ExGRPO), mean
    and interval over seeds (``paper_tables.cell_stats``), the mean number of questions its models
    trained on, and ``drawn``: the (task, seed, questions drawn by its SFT) of each model (empty when a
    summary is missing)."""
    column = column or headline(df)
    by_name = {lay.name: lay for lay in layouts}
    rows = []
    for p, key, method in PAIRS if column else []:
        s = cell_stats(df, key, column.datasets, column.source)
        if not s["seeds"]:
            continue
        runs = df[(df["key"] == key) & (df["status"] == "ok") & (df["eval"] == column.source)
                  & (df["dataset"].isin(column.datasets))].drop_duplicates(["train_dataset", "seed"])
        models = list(zip(runs["train_dataset"], runs["seed"], runs["run_id"], runs["run"]))
        kept = [trained_questions(by_name.get(run), rid) for _, _, rid, run in models]
        drawn = [(t, int(seed), trained_questions(by_name.get(run), _warmup_id(rid, key))) for t, seed, rid, run in models]
        known = all(q is not None for q in kept) and all(q is not None for *_, q in drawn)
        rows.append({"p": p, "method": method, "key": key, **s,
                     "questions": sum(kept) / len(kept) if known and kept else float("nan"),
                     "drawn": tuple(sorted(drawn)) if known else ()})
    return pd.DataFrame(rows, columns=COLUMNS).sort_values(["method", "p"]).reset_index(drop=True)


def notes(points, df=None) -> list[str]:
    """What a reader of Figure 4 must know: per method, each (task, seed) on which several fractions drew
    the same questions (identical training inputs), and which points that makes coincide by
    construction (every model of both); with the records ``df``, each point missing because its
    trainings did not run (their reasons). Nothing when none applies."""
    out, missing = [], {}
    for p, key, method in PAIRS if df is not None else []:
        failed = df[(df["key"] == key) & (df["status"] != "ok")].drop_duplicates(["train_dataset", "seed"])
        if len(failed) and not (points["key"] == key).any():
            why = "; ".join(f"{t} s{seed}: {r}" for t, seed, r in zip(failed["train_dataset"], failed["seed"], failed["reason"]))
            missing.setdefault((method, why), []).append(p)
    out += [f"{method}: no point at p = {_ps(ps)}: {why}" for (method, why), ps in missing.items()]
    for method, grp in points.groupby("method", sort=False):
        shared: dict[tuple, list[float]] = {}  # (task, seed, questions drawn) -> the fractions that drew them
        for p, drawn in zip(grp["p"], grp["drawn"]):
            for model in drawn:
                shared.setdefault(tuple(model), []).append(float(p))
        for (task, seed, q), ps in shared.items():
            if len(ps) > 1:
                out.append(f"{method}, {task} s{seed}: p = {_ps(ps)} drew the same {q} question(s): identical training inputs")
        whole: dict[tuple, list[float]] = {}
        for p, drawn in zip(grp["p"], grp["drawn"]):
            if drawn:
                whole.setdefault(tuple(drawn), []).append(float(p))
        out += [f"{method}: so the points at p = {_ps(ps)} coincide by construction" for ps in whole.values() if len(ps) > 1]
    return out


def _ps(ps) -> str:
    return ", ".join(f"{p:g}" for p in sorted(ps))
