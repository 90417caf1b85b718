"""Experiment records: one JSON file per (task, method, seed) under ``<run>/experiments/``, and the table of them.

A record holds the triple's identity (run id, method key, label and kind, seed, ``train_dataset``),
its status (``ok`` or ``skipped`` with the reason), its training cost (tokens and seconds, warm-up
included), the fingerprint of the model evaluated, its scores (``accuracy``, ``n`` and ``correct`` by
dataset; the 12-dataset suite's apart under ``suite``) and the wall time of the run that made it.
A record whose content is unchanged is left as it is (time included), so reruns that reuse every
training and evaluation leave the committed records byte for byte. ``collect`` gathers them into one
long table for notebooks 05 and 06.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from ..infra.files import atomic_write_json
from ..infra.layout import RunLayout
from .methods import Method

BASE_COLUMNS = ("run_id", "key", "label", "kind", "seed", "train_dataset", "status", "reason", "train_tokens",
                "train_seconds")


def new_record(rid: str, m: Method, seed: int, task: str) -> dict:
    """A record before training: the triple's identity, status ok, no training cost yet."""
    return {"run_id": rid, "key": m.key, "label": m.label, "kind": m.kind, "seed": seed, "train_dataset": task,
            "status": "ok", "reason": "", "train_tokens": 0, "train_seconds": 0.0}


def write_skipped(path: Path, rec: dict, reason: str) -> dict:
    """Record a (task, method, seed) that cannot run, with the reason (the tables show it)."""
    rec.update(status="skipped", reason=reason, accuracy={}, n={}, correct={})
    atomic_write_json(path, rec)
    return rec


def scores(table) -> dict:
    """{"accuracy", "n", "correct"} by dataset of an evaluation table (averages have no count)."""
    out: dict[str, dict] = {"accuracy": {}, "n": {}, "correct": {}}
    for _, r in table.iterrows():
        out["accuracy"][r["dataset"]] = round(float(r["accuracy"]), 4)
        out["n"][r["dataset"]] = int(r["n"])
        if "avg" not in r["dataset"]:
            out["correct"][r["dataset"]] = int(round(r["accuracy"] * r["n"] / 100))
    return out


def read_json(path: Path) -> dict | None:
    """The JSON object stored at ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def same_record(path: Path, rec: dict) -> dict | None:
    """The record stored at ``path`` when it equals ``rec`` (its wall time aside), else None."""
    old = read_json(path)
    if old is None:
        return None
    same = {k: v for k, v in old.items() if k != "wall_seconds"} == json.loads(json.dumps(rec))
    return old if same else None


def save(path: Path, rec: dict, started: float) -> dict:
    """Write ``rec`` with the wall time since ``started``; a stored record equal to it is kept instead
    (with the time of the run that made it). Returns the record now at ``path``."""
    stored = same_record(path, rec)
    if stored:
        return stored
    rec["wall_seconds"] = round(time.time() - started, 1)
    atomic_write_json(path, rec)
    return rec


def collect(layout: RunLayout):
    """All records of a run as a long table: one row per (task, method, seed, evaluation, dataset).
    ``eval`` is "task" for the per-task protocol (the training task and its paired OOD sets) and
    "suite" for the 12-dataset suite of one model; ``run`` is the run's name."""
    rows = []
    for path in sorted(layout.records_dir.glob("*.json")):
        rec = json.loads(path.read_text())
        if "train_dataset" not in rec:
            raise ValueError(f"{path}: a record without train_dataset (made before per-task records): rerun notebook 05 "
                             "with the settings that made this record (for the committed cpu run: make update-results-full); "
                             "it reuses every finished training and evaluation and rewrites the records")
        base = {"run": layout.name, **{k: rec[k] for k in BASE_COLUMNS}, "data_note": rec.get("data_note", "")}
        if rec["status"] != "ok":
            rows.append({**base, "eval": "", "dataset": "", "n": 0, "correct": 0, "accuracy": float("nan")})
            continue
        for source, evaluated in (("task", rec), ("suite", rec.get("suite") or {})):
            for ds, acc in (evaluated.get("accuracy") or {}).items():
                rows.append({**base, "eval": source, "dataset": ds, "n": evaluated["n"].get(ds, 0),
                             "correct": evaluated["correct"].get(ds), "accuracy": acc})
    return pd.DataFrame(rows, columns=["run", *BASE_COLUMNS, "data_note", "eval", "dataset", "n", "correct", "accuracy"])


def summary(table):
    """Notebook 05's overview: accuracy per (task, method, seed) on the per-task test sets."""
    task = table[table["eval"].isin(["task", ""])]
    return task.pivot_table(index=["train_dataset", "key", "seed"], columns="dataset", values="accuracy",
                            aggfunc="first").round(1)


def data_notes(df, key: str) -> list[str]:
    """The ``data_note`` of one method's records, by task (a baseline that fell back to SKD's rows for
    some or all of its items: ``baselines.fallback_note``), for the tables' note column."""
    rows = df[df["key"] == key]
    notes = rows["data_note"] if "data_note" in rows else []
    return list(dict.fromkeys(f"{t}: {n}" for t, n in zip(rows["train_dataset"], notes) if isinstance(n, str) and n))
