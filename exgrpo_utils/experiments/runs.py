"""Train (or reuse), evaluate and record every (task, method, seed) triple of notebook 05.

The paper's protocol: one model per training task (``exp_tasks``) and method, scored on the task's
own test set and on every OOD set paired with it (``data.task_eval_sets``: BoolQ with StrategyQA,
OpenBookQA with ARC-Challenge, ...). ``run_plan`` trains what is missing through the same stage
functions as notebooks 02 and 03 (so the seed-0 runs ``sft`` and ``exgrpo`` of the run's
``train_dataset`` are shared with them; other tasks' run ids carry a ``<task>--`` prefix), evaluates
each model and writes one record per triple under ``<run>/experiments/``, with its ``train_dataset``.
``exp_suite_keys`` are also scored on the 12-dataset suite (the ``train_dataset`` model, seed 0: one
model on every dataset, kept apart from the per-task scores under ``suite``). ``collect`` gathers the
records into one long table for notebook 06. Every path comes from :class:`RunLayout`. A finished
run or evaluation is reused only when its fingerprint (settings, data, model) matches; otherwise the
run stops with an error naming the folder and what differs (nothing is overwritten; ``fresh`` moves
it aside).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from ..common.files import atomic_write_json
from ..common.fingerprint import digest
from ..common.layout import RunLayout, run_id, task_run_id
from ..common.runsettings import RunSettings
from ..common.settings import build
from ..data.datasets import DATASETS, task_eval_sets
from ..evaluate.evaluation import evaluate_on
from ..evaluate.settings import SuiteSettings, TaskEvalSettings
from ..models.registry import model_identity
from ..teach.inversion import load_probe_dataset
from ..teach.settings import TeacherSettings
from ..train.common import NoTrainingData
from ..train.exgrpo import train_exgrpo
from ..train.opd import train_opd
from ..train.settings import ExGRPOSettings, OPDSettings, SFTSettings
from ..train.sft import subsample_questions, train_sft
from .baselines import baseline_rows, data_stats, load_baseline_data, prepare_baseline_data
from .methods import FRACTION_OF, METHODS, Method, opd_status
from .settings import ExperimentSettings


@dataclass(frozen=True)
class Context:
    """Everything ``run_plan`` needs besides the (method, seed) pairs: notebook 05's parameters."""
    layout: RunLayout
    run: RunSettings  # student, task, generation dtype/backend, subsample seed, trackers, fresh
    sft: SFTSettings  # the main SFT run's settings (notebook 02 uses the same parameters)
    rl: ExGRPOSettings  # the main ExGRPO run's settings (notebook 03)
    teacher: TeacherSettings
    eval: TaskEvalSettings
    suite: SuiteSettings
    experiments: ExperimentSettings

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "Context":
        """From flat parameters (a notebook's, or ``config.resolve``'s)."""
        ctx = cls(layout=RunLayout.of(params["run_name"]), run=build(RunSettings, params), sft=build(SFTSettings, params),
                  rl=build(ExGRPOSettings, params), teacher=build(TeacherSettings, params),
                  eval=build(TaskEvalSettings, params), suite=build(SuiteSettings, params),
                  experiments=build(ExperimentSettings, params))
        bad = [t for t in ctx.tasks if t not in DATASETS or DATASETS[t].role == "ood" or DATASETS[t].paired_with]
        if bad:
            raise ValueError(f"exp_tasks: {bad} are not training tasks (held-in or synthetic datasets that are no "
                             f"other task's OOD pair: {', '.join(n for n, s in DATASETS.items() if s.role != 'ood' and not s.paired_with)})")
        missing = [str(ctx.layout.probe_dataset(t)) for t in ctx.tasks if not ctx.layout.probe_dataset(t).exists()]
        if missing:
            raise FileNotFoundError(f"{', '.join(missing)} missing: run notebook 01 of this run first, with every task "
                                    f"of exp_tasks in ei_datasets (e.g. make reproduce)")
        return ctx

    @property
    def tasks(self) -> tuple[str, ...]:
        """The training tasks, the run's ``train_dataset`` first when it is one of them."""
        tasks = tuple(dict.fromkeys(self.experiments.tasks or (self.run.train_dataset,)))
        main = self.run.train_dataset
        return ((main,) if main in tasks else ()) + tuple(t for t in tasks if t != main)

    def rid(self, key: str, seed: int, task: str) -> str:
        return task_run_id(key, seed, task, self.run.train_dataset)

    def probe_records(self, task: str) -> list[dict]:
        return load_probe_dataset(self.layout.probe_dataset(task))

    def eval_for(self, task: str) -> TaskEvalSettings:
        """The quick-evaluation settings with the task's own test set and its paired OOD sets."""
        return replace(self.eval, datasets=tuple(task_eval_sets(task)))


def _training_records(ctx: Context, task: str) -> list[dict]:
    """The task's probe records; :class:`NoTrainingData` when none survived notebook 01's filters."""
    records = ctx.probe_records(task)
    if not records:
        raise NoTrainingData(f"no {task} question survived Explanatory Inversion's filters (notebook 01: Eq. 1 and "
                             "Eq. 2), so there is nothing to train on")
    return records


def _train_method(m: Method, seed: int, task: str, ctx: Context, done: dict[str, dict]) -> dict:
    """Train (or reuse: the training folder's fingerprint decides) one SFT or RL method at one seed on one task."""
    out_dir = ctx.layout.train_dir(ctx.rid(m.key, seed, task))
    common = dict(out_dir=out_dir, report_to=ctx.run.report_to, fresh=ctx.run.fresh)
    if m.kind == "sft":
        settings = replace(ctx.sft, seed=seed, rules=tuple(m.rules), data_fraction=m.fraction * ctx.sft.data_fraction)
        if m.data == "ei":
            summary = train_sft(model=ctx.run.student, probe_records=_training_records(ctx, task), settings=settings,
                                **common)
        else:
            data = load_baseline_data(ctx.layout.baseline_data(task))
            summary = train_sft(model=ctx.run.student, rows=baseline_rows(data, m.data), settings=settings, **common)
        if summary.get("data") != m.data:
            summary["data"] = m.data
            atomic_write_json(out_dir / "sft_summary.json", summary)
        return summary
    # rl
    settings = replace(ctx.rl, seed=seed, mode=m.mode, aux_lambda=ctx.rl.aux_lambda if m.aux else 0.0,
                       revealing_probes=m.revealing_probes or ctx.rl.revealing_probes)
    records = _training_records(ctx, task)
    if m.init == "base":
        init = ctx.run.student
    else:  # the warm-up of the same seed (sft-s1 for exgrpo-s1): plan() runs it first
        warmup = done.get(ctx.rid(m.init, seed, task))
        if warmup is None:
            raise RuntimeError(f"{ctx.rid(m.key, seed, task)} starts from {ctx.rid(m.init, seed, task)}, which is not in "
                               f"this plan; add the group that holds {m.init!r} for seed {seed}")
        init = warmup["final"]
    if m.init != "base":  # ExGRPO on the same questions as its SFT warm-up
        records = subsample_questions(records, FRACTION_OF.get(m.init, 1.0) * ctx.sft.data_fraction, seed)
    return train_exgrpo(init_model=init, probe_records=records, settings=settings, **common)


def _train_opd(seed: int, task: str, ctx: Context) -> dict:
    s = ctx.sft
    settings = OPDSettings(epochs=s.epochs, batch_size=s.batch_size, learning_rate=s.learning_rate, lora=s.lora,
                           lora_r=s.lora_r, lora_alpha=s.lora_alpha, max_length=s.max_length, seed=seed,
                           max_new_tokens=ctx.rl.max_final_tokens)
    return train_opd(student=ctx.run.student, teacher=ctx.teacher.teacher_model, probe_records=_training_records(ctx, task),
                     out_dir=ctx.layout.train_dir(ctx.rid("opd", seed, task)), settings=settings, report_to=ctx.run.report_to,
                     fresh=ctx.run.fresh)


def training_cost(key: str, seed: int, done: dict[str, dict], rid=run_id) -> tuple[int, float]:
    """(tokens, seconds) of everything trained to get this method: RL runs add their warm-up's cost.
    ``done``: training summaries by run id; ``rid(key, seed)`` names the runs (one task's)."""
    m = METHODS[key]
    s = done.get(rid(key, seed)) or {}
    tokens, seconds = int(s.get("train_tokens") or 0), float(s.get("seconds") or 0)
    if m.kind == "rl" and m.init != "base":
        t2, s2 = training_cost(m.init, seed, done, rid)
        tokens, seconds = tokens + t2, seconds + s2
    return tokens, round(seconds, 1)


def _stored(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _same_record(path: Path, rec: dict) -> dict | None:
    """The record stored at ``path`` when it equals ``rec`` (its wall time aside), else None."""
    old = _stored(path)
    if old is None:
        return None
    same = {k: v for k, v in old.items() if k != "wall_seconds"} == json.loads(json.dumps(rec))
    return old if same else None


def _scores(table) -> dict:
    """{"accuracy", "n", "correct"} by dataset of an evaluation table (averages have no count)."""
    out: dict[str, dict] = {"accuracy": {}, "n": {}, "correct": {}}
    for _, r in table.iterrows():
        out["accuracy"][r["dataset"]] = round(float(r["accuracy"]), 4)
        out["n"][r["dataset"]] = int(r["n"])
        if "avg" not in r["dataset"]:
            out["correct"][r["dataset"]] = int(round(r["accuracy"] * r["n"] / 100))
    return out


def _evaluate(ctx: Context, model: str, key: str, seed: int, task: str, label: str) -> dict:
    """The record's scores: the task's test set and its paired OOD sets; under ``suite`` the
    12-dataset suite for ``exp_suite_keys`` (the train_dataset model, seed 0)."""
    rid = ctx.rid(key, seed, task)
    settings = ctx.eval_for(task)
    table = evaluate_on(settings, ctx.run, model=model, out_dir=ctx.layout.task_eval_dir(rid), label=label)
    scores = _scores(table[table["dataset"].isin(settings.datasets)])  # not the 12-dataset averages of 1-2 sets
    if key in ctx.experiments.suite_keys and seed == 0 and task == ctx.run.train_dataset and ctx.suite.datasets:
        scores["suite"] = _scores(evaluate_on(ctx.suite, ctx.run, model=model, out_dir=ctx.layout.suite_eval_dir(rid),
                                              label=label))
    return scores


def _skipped(rec: dict, path: Path, reason: str, where: str, log) -> dict:
    """Record a (task, method, seed) that cannot run, with the reason (the tables show it)."""
    rec.update(status="skipped", reason=reason, accuracy={}, n={}, correct={})
    log(f"{where}: {reason}")
    atomic_write_json(path, rec)
    return rec


def plan_triples(pairs: Sequence[tuple[str, int]], tasks: Sequence[str]) -> list[tuple[str, str, int]]:
    """(task, method, seed) triples: each (method, seed) pair of ``methods.plan`` for every task in
    turn, so seed 0 of everything (every task) still runs first."""
    return [(task, key, seed) for key, seed in pairs for task in tasks]


def run_plan(pairs: Sequence[tuple[str, int]], ctx: Context, *, log=print) -> list[dict]:
    """Train (or reuse), evaluate and record every (method, seed) pair on every task; returns the records."""
    out = []
    done: dict[str, dict] = {}
    triples = plan_triples(pairs, ctx.tasks)
    for n, (task, key, seed) in enumerate(triples, 1):
        m = METHODS[key]
        rid = ctx.rid(key, seed, task)
        where = f"[{n}/{len(triples)}] {rid}"
        record_path = ctx.layout.record(rid)
        rec = {"run_id": rid, "key": key, "label": m.label, "kind": m.kind, "seed": seed, "train_dataset": task,
               "status": "ok", "reason": "", "train_tokens": 0, "train_seconds": 0.0}
        t0 = time.time()
        if m.kind == "opd":
            ok, reason = opd_status(ctx.teacher.teacher, ctx.teacher.teacher_model)
            if ok:
                try:
                    summary = _train_opd(seed, task, ctx)
                except ValueError as exc:  # e.g. the tokenizers differ, or no training data (NoTrainingData)
                    ok, reason = False, f"skipped: {exc}"
            if not ok:
                out.append(_skipped(rec, record_path, reason, where, log))
                continue
            done[rid] = summary
            model = summary["final"]
        elif m.kind == "zero-shot":
            model = ctx.run.student
        else:
            log(f"{where}: training")
            try:
                summary = _train_method(m, seed, task, ctx, done)
            except NoTrainingData as exc:  # no kept question, or every probe states the answer (RL leaves those out)
                out.append(_skipped(rec, record_path, f"skipped: {exc}", where, log))
                continue
            done[rid] = summary
            model = summary["final"]
            rec["train_steps"] = summary.get("steps")
        if m.kind != "zero-shot":
            rec["train_tokens"], rec["train_seconds"] = training_cost(key, seed, done, lambda k, s: ctx.rid(k, s, task))
        rec["model_fingerprint"] = digest(model_identity(model))  # what was evaluated, by content
        log(f"{where}: evaluating")
        rec.update(_evaluate(ctx, model, key, seed, task, m.label))
        stored = _same_record(record_path, rec)
        if stored:  # reused unchanged: keep the record (and time) of the run that made it
            rec = stored
        else:
            old = _stored(record_path)
            # a record from before per-task records (no train_dataset) of the same model: its scores are
            # carried over from the same evaluation files, so the time of the run that made it is kept
            legacy = (old is not None and "train_dataset" not in old and old.get("model_fingerprint") == rec["model_fingerprint"]
                      and all(old.get(f, {}).get(d) == v for f in ("accuracy", "n") for d, v in rec[f].items()))
            rec["wall_seconds"] = old.get("wall_seconds") if legacy else round(time.time() - t0, 1)
            atomic_write_json(record_path, rec)
        log(f"{where}: " + ", ".join(f"{d} {a:.1f}" for d, a in rec["accuracy"].items()))
        out.append(rec)
    return out


def missing_records(ctx: Context, pairs: Sequence[tuple[str, int]]) -> list[str]:
    """Run ids of the plan's (task, method, seed) triples that have no record."""
    rids = [ctx.rid(key, seed, task) for task, key, seed in plan_triples(pairs, ctx.tasks)]
    return [rid for rid in rids if not ctx.layout.record(rid).exists()]


BASE_COLUMNS = ("run_id", "key", "label", "kind", "seed", "train_dataset", "status", "reason", "train_tokens",
                "train_seconds")


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
        base = {"run": layout.name, **{k: rec[k] for k in BASE_COLUMNS}}
        if rec["status"] != "ok":
            rows.append({**base, "eval": "", "dataset": "", "n": 0, "correct": 0, "accuracy": float("nan")})
            continue
        for source, scores in (("task", rec), ("suite", rec.get("suite") or {})):
            for ds, acc in (scores.get("accuracy") or {}).items():
                rows.append({**base, "eval": source, "dataset": ds, "n": scores["n"].get(ds, 0),
                             "correct": scores["correct"].get(ds), "accuracy": acc})
    return pd.DataFrame(rows, columns=["run", *BASE_COLUMNS, "eval", "dataset", "n", "correct", "accuracy"])


def summary(table):
    """Notebook 05's overview: accuracy per (task, method, seed) on the per-task test sets."""
    task = table[table["eval"].isin(["task", ""])]
    return task.pivot_table(index=["train_dataset", "key", "seed"], columns="dataset", values="accuracy",
                            aggfunc="first").round(1)


def prepare_baselines(ctx: Context, pairs: Sequence[tuple[str, int]]):
    """The baselines' teacher data of every task when ``pairs`` train a baseline (cached, reused when
    unchanged); their statistics, one row per (task, baseline)."""
    if not any(METHODS[key].kind == "sft" and METHODS[key].data != "ei" for key, _ in pairs):
        return pd.DataFrame(columns=["train_dataset", "baseline"])
    frames = []
    for task in ctx.tasks:
        data = prepare_baseline_data(ctx.layout.ei_records(task), ctx.layout.baseline_data(task), teacher=ctx.teacher)
        frames.append(data_stats(data).assign(train_dataset=task))
    return pd.concat(frames, ignore_index=True)
