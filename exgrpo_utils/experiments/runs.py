"""Train (or reuse), evaluate and record every (task, method, seed) triple of notebook 05.

The paper's protocol: one model per training task (``exp_tasks``) and method, scored on the task's
own test set and on every OOD set paired with it (``data.datasets.task_eval_sets``: BoolQ with StrategyQA,
OpenBookQA with ARC-Challenge, ...). ``run_plan`` runs the triples in turn, each through
``run_triple``: the method's kind picks its trainer from :data:`TRAINERS` (the same stage functions as
notebooks 02 and 03, so the seed-0 runs ``sft`` and ``exgrpo`` of the run's ``train_dataset`` are
shared with them; other tasks' run ids carry a ``<task>--`` prefix), the model is evaluated and one
record per triple is written under ``<run>/experiments/`` (``records``). ``exp_suite_keys`` are also
scored on the 12-dataset suite (the ``train_dataset`` model, seed 0: one model on every dataset,
kept apart from the per-task scores under ``suite``). ``collect`` gathers the records into one long
table for notebook 06. Every path comes from :class:`RunLayout`. A finished run or evaluation is
reused only when its fingerprint (settings, data, model) matches; otherwise the run stops with an
error naming the folder and what differs (nothing is overwritten; ``fresh`` moves it aside).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from ..data.datasets import DATASETS, task_eval_sets
from ..evaluate.ei_test import ei_test_name, load_ei_test
from ..evaluate.evaluation import evaluate_on
from ..evaluate.settings import SuiteSettings, TaskEvalSettings
from ..infra.fingerprint import digest
from ..infra.layout import RunLayout, run_id, task_run_id
from ..infra.runsettings import RunSettings
from ..infra.settings import build
from ..models.registry import model_identity
from ..teach.baseline_data import load_baseline_data, prepare_baseline_data
from ..teach.inversion import load_probe_dataset
from ..teach.settings import TeacherSettings
from ..train.exgrpo import SUMMARY_NAME as RL_SUMMARY
from ..train.exgrpo import train_exgrpo
from ..train.loop import NoTrainingData, PlannedInputs, planning
from ..train.opd import SUMMARY_NAME as OPD_SUMMARY
from ..train.opd import train_opd
from ..train.settings import ExGRPOSettings, SFTSettings
from ..train.sft import SUMMARY_NAME as SFT_SUMMARY
from ..train.sft import subsample_questions, train_sft
from . import kept, records
from .baselines import baseline_rows, data_stats, fallback_note
from .methods import METHODS, Method, opd_settings, opd_status, rl_question_fraction, rl_settings, same_training_as, sft_settings
from .records import collect, summary
from .settings import ExperimentSettings

__all__ = ["Context", "TRAINERS", "collect", "missing_records", "plan_triples", "prepare_baselines", "run_plan",
           "run_triple", "summary", "train_one", "training_cost"]

Log = Callable[[str], None]
# The summary each kind of training writes when finished (beside its final/ model)
SUMMARIES = {"sft": SFT_SUMMARY, "rl": RL_SUMMARY, "opd": OPD_SUMMARY}


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
    def from_params(cls, params: Mapping[str, Any], check: bool = True) -> "Context":
        """From flat parameters (a notebook's, or ``config.resolve``'s); ``check``: the tasks are
        training tasks with notebook 01's probes (a dry run describes a plan before they exist)."""
        ctx = cls(layout=RunLayout.of(params["run_name"]), run=build(RunSettings, params), sft=build(SFTSettings, params),
                  rl=build(ExGRPOSettings, params), teacher=build(TeacherSettings, params),
                  eval=build(TaskEvalSettings, params), suite=build(SuiteSettings, params),
                  experiments=build(ExperimentSettings, params))
        if check:
            _check_tasks(ctx)
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

    def training_records(self, task: str) -> list[dict]:
        """The task's probe records; :class:`NoTrainingData` when none survived notebook 01's filters."""
        found = self.probe_records(task)
        if not found:
            raise NoTrainingData(f"no {task} question survived Explanatory Inversion's filters (notebook 01: Eq. 1 "
                                 "and Eq. 2), so there is nothing to train on")
        return found

    def train_args(self, key: str, seed: int, task: str) -> dict:
        """The arguments every trainer takes alike: the triple's training folder, trackers, ``fresh``."""
        return dict(out_dir=self.layout.train_dir(self.rid(key, seed, task)), report_to=self.run.report_to,
                    fresh=self.run.fresh)

    def eval_for(self, task: str) -> TaskEvalSettings:
        """The quick-evaluation settings with the task's own test set and its paired OOD sets."""
        return replace(self.eval, datasets=tuple(task_eval_sets(task)))


def _check_tasks(ctx: Context) -> None:
    """``exp_tasks`` are training tasks, each with notebook 01's probes in this run."""
    bad = [t for t in ctx.tasks if t not in DATASETS or DATASETS[t].role == "ood" or DATASETS[t].paired_with]
    if bad:
        raise ValueError(f"exp_tasks: {bad} are not training tasks (held-in or synthetic datasets that are no "
                         f"other task's OOD pair: {', '.join(n for n, s in DATASETS.items() if s.role != 'ood' and not s.paired_with)})")
    missing = [str(ctx.layout.probe_dataset(t)) for t in ctx.tasks if not ctx.layout.probe_dataset(t).exists()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} missing: run notebook 01 of this run first, with every task "
                                f"of exp_tasks in ei_datasets (e.g. make reproduce)")


# ---------------------------------------------------------------------------------------------
# Trainers, one per method kind: (method, seed, task, context, summaries so far, log) -> the
# training's summary (``final``: the model to evaluate), or None when nothing is trained. Each
# reuses a finished training whose folder fingerprint matches.

class Skipped(Exception):
    """A (task, method, seed) that cannot run here; the message is its record's reason."""


def _untrained(m: Method, seed: int, task: str, ctx: Context, done: dict[str, dict], log: Log) -> None:
    """Zero-shot: the student as it is."""
    return None


def _train_sft(m: Method, seed: int, task: str, ctx: Context, done: dict[str, dict], log: Log) -> dict:
    """SFT on the task's EI probes (Eq. 3) or on a baseline's rows of the task's teacher data."""
    log("training")
    common = dict(model=ctx.run.student, settings=sft_settings(m, ctx.sft, seed), data_name=m.data,
                  **ctx.train_args(m.key, seed, task))
    if m.data == "ei":
        return train_sft(probe_records=ctx.training_records(task), **common)
    data = load_baseline_data(ctx.layout.baseline_data(task))
    summary = train_sft(rows=baseline_rows(data, m.data), **common)
    note = fallback_note(data, m.data)  # the tables say when a baseline trained on SKD's rows
    return {**summary, "data_note": note} if note else summary


def _start_model(m: Method, seed: int, task: str, ctx: Context, done: dict[str, dict]) -> str:
    """The model an RL method starts from: the base student, or its warm-up of the same seed and task
    (sft-s1 for exgrpo-s1), which ``methods.plan`` runs first."""
    if m.init == "base":
        return ctx.run.student
    warmup = done.get(ctx.rid(m.init, seed, task))
    if warmup is None:
        raise RuntimeError(f"{ctx.rid(m.key, seed, task)} starts from {ctx.rid(m.init, seed, task)}, which is not in "
                           f"this plan; add the group that holds {m.init!r} for seed {seed}")
    return warmup["final"]


def _train_rl(m: Method, seed: int, task: str, ctx: Context, done: dict[str, dict], log: Log) -> dict:
    """ExGRPO or plain GRPO from the method's start, on the same questions as its SFT warm-up. A
    probe-policy row whose policy is the run's own is ExGRPO's training: skipped, and its record says so."""
    twin = same_training_as(m, ctx.rl)
    if twin:
        raise Skipped(f"skipped: the same training as the row {METHODS[twin].label!r} "
                      f"(this run's rl_revealing_probes is {ctx.rl.revealing_probes})")
    log("training")
    questions = subsample_questions(ctx.training_records(task), rl_question_fraction(m, ctx.sft), seed)
    return train_exgrpo(init_model=_start_model(m, seed, task, ctx, done), probe_records=questions,
                        settings=rl_settings(m, ctx.rl, seed), **ctx.train_args(m.key, seed, task))


def _train_opd(m: Method, seed: int, task: str, ctx: Context, done: dict[str, dict], log: Log) -> dict:
    """On-Policy Distillation from the run's teacher, when it is a local model the student can distil from."""
    runnable, reason = opd_status(ctx.teacher.teacher, ctx.teacher.teacher_model)
    if not runnable:
        raise Skipped(reason)
    log("training")
    try:
        return train_opd(student=ctx.run.student, teacher=ctx.teacher.teacher_model,
                         probe_records=ctx.training_records(task), settings=opd_settings(ctx.sft, ctx.rl, seed),
                         **ctx.train_args(m.key, seed, task))
    except ValueError as exc:  # e.g. the tokenizers differ, or no training data (NoTrainingData)
        raise Skipped(f"skipped: {exc}") from exc


TRAINERS: dict[str, Callable[..., dict | None]] = {"zero-shot": _untrained, "sft": _train_sft, "rl": _train_rl,
                                                   "opd": _train_opd}


def _train_method(m: Method, seed: int, task: str, ctx: Context, done: dict[str, dict],
                  log: Log = lambda _: None) -> dict | None:
    """Train (or reuse) one method at one seed on one task with its kind's trainer."""
    return TRAINERS[m.kind](m, seed, task, ctx, done, log)


def train_one(ctx: Context, task: str, key: str, seed: int, *, log: Log = print) -> dict | None:
    """One (task, method, seed)'s training alone (``train_cli method``, a dispatched job): the same
    trainer as in ``run_triple``, an RL method starting from its warm-up's finished model on disk."""
    m, done = METHODS[key], {}
    if m.kind == "rl" and m.init != "base":
        warmup = ctx.rid(m.init, seed, task)
        path = ctx.layout.train_dir(warmup) / SUMMARIES[METHODS[m.init].kind]
        if not path.exists():
            raise RuntimeError(f"{ctx.rid(key, seed, task)} starts from {warmup}, which has not finished ({path} missing)")
        done[warmup] = json.loads(path.read_text())
    return _train_method(m, seed, task, ctx, done, log)


def training_inputs(ctx: Context, task: str, key: str, seed: int, *, here: bool = True,
                    recorded: bool = False) -> dict | None:
    """The fingerprint inputs (settings, data, models, precision) that :func:`train_one` would stamp on
    the training's folder, computed by the same trainer without training (``train.loop.planning``), so
    a plan of jobs knows which finished trainings are current. None when they cannot be known before
    the job runs: its data or its warm-up's model is not on disk yet, or the method cannot run here.
    ``here``: the job trains on this machine (else its precision is left to the node that runs it).
    ``recorded``: a warm-up whose weights are not here counts by the identity its training recorded
    (``kept``: whether a finished run is current; a job that trains needs the weights themselves)."""
    m = METHODS[key]
    if m.kind == "rl" and m.init != "base":
        path = ctx.layout.train_dir(ctx.rid(m.init, seed, task)) / SUMMARIES[METHODS[m.init].kind]
        final = json.loads(path.read_text()).get("final", "") if path.exists() else ""
        if not final or not (kept.weights_here(final) or (recorded and kept.recorded_before(final) is not None)):
            return None  # the warm-up has not finished, or its model is not here (a results folder without weights)
    try:
        with planning(here=here):
            train_one(ctx, task, key, seed, log=lambda _: None)
    except PlannedInputs as planned:
        return planned.inputs
    except (FileNotFoundError, NoTrainingData, Skipped):
        return None
    return None  # a kind that trains nothing


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


def _add_training(rec: dict, summary: dict, ctx: Context, task: str, done: dict[str, dict]) -> None:
    """The record's training fields: steps, and tokens and seconds with the warm-up's (``training_cost``)."""
    rec["train_steps"] = summary.get("steps")
    if summary.get("data_note"):
        rec["data_note"] = summary["data_note"]
    rec["train_tokens"], rec["train_seconds"] = training_cost(rec["key"], rec["seed"], done,
                                                              lambda k, s: ctx.rid(k, s, task))


def evaluate_model(ctx: Context, model: str, key: str, seed: int, task: str, label: str, *,
                   generator: Any = None) -> dict:
    """The record's scores: the task's test set, its paired OOD sets and its EI-Test; under ``suite`` the
    12-dataset suite for ``exp_suite_keys`` (the train_dataset model, seed 0). ``generator``: given to
    every evaluation (``kept.RenderOnly`` for a model whose weights are not here)."""
    rid = ctx.rid(key, seed, task)
    settings = ctx.eval_for(task)
    ei_test = load_ei_test(ctx.layout, task)  # the task's EI-Test, when notebook 01 built one (Figure 1)
    extra = {ei_test_name(task): ei_test} if ei_test else {}
    table = evaluate_on(settings, ctx.run, model=model, out_dir=ctx.layout.task_eval_dir(rid), label=label, extra=extra,
                        generator=generator)
    scores = records.scores(table[table["dataset"].isin(list(settings.datasets) + list(extra))])  # no 12-dataset averages
    if _scores_suite(ctx, key, seed, task):  # the folder notebook 04 writes too: its summary's label, the key
        scores["suite"] = records.scores(evaluate_on(ctx.suite, ctx.run, model=model,
                                                     out_dir=ctx.layout.suite_eval_dir(rid), label=key,
                                                     generator=generator))
    return scores


def _scores_suite(ctx: Context, key: str, seed: int, task: str) -> bool:
    return key in ctx.experiments.suite_keys and seed == 0 and task == ctx.run.train_dataset and bool(ctx.suite.datasets)


def kept_training(ctx: Context, task: str, key: str, seed: int) -> dict | None:
    """The summary of a finished training whose weights are not on this machine, when it and every
    evaluation of its record are current (``kept``); None otherwise (and for what trains nothing)."""
    m = METHODS[key]
    if m.kind not in SUMMARIES or ctx.run.fresh:  # fresh redoes everything
        return None
    rid = ctx.rid(key, seed, task)
    evals = [ctx.layout.task_eval_dir(rid)] + ([ctx.layout.suite_eval_dir(rid)] if _scores_suite(ctx, key, seed, task) else [])
    here = ctx.experiments.executor != "slurm"  # as jobs.training_jobs: SLURM nodes train in their own precision
    return kept.kept_summary(
        ctx.layout.train_dir(rid), SUMMARIES[m.kind], student=ctx.run.student, eval_dirs=evals,
        planned=lambda: training_inputs(ctx, task, key, seed, here=here, recorded=True),
        evaluate=lambda final, gen: evaluate_model(ctx, final, key, seed, task, m.label, generator=gen))


def _recorded_final(ctx: Context, key: str, rid: str) -> dict | None:
    """The identity recorded for this training's final model when its weights are not here (``kept``)."""
    kind = METHODS[key].kind
    summary = ctx.layout.train_dir(rid) / SUMMARIES.get(kind, "")
    final = json.loads(summary.read_text()).get("final") if kind in SUMMARIES and summary.is_file() else None
    return kept.recorded_before(final) if final else None


def run_triple(task: str, key: str, seed: int, ctx: Context, done: dict[str, dict], *, log: Log = print,
               unfinished: str = "", keep: bool = True) -> dict:
    """Train (or reuse), evaluate and record one (task, method, seed); returns its record. ``done``:
    the training summaries of the plan so far by run id (warm-ups, costs); this one's is added.
    ``unfinished``: why its dispatched training did not finish (the record says so; nothing is trained).
    ``keep``: a finished triple whose weights are not here is kept when current (``kept``), not retrained."""
    m, rid = METHODS[key], ctx.rid(key, seed, task)
    path, rec, started = ctx.layout.record(rid), records.new_record(rid, m, seed, task), time.time()
    if unfinished:
        return _skip(path, rec, unfinished, log)
    generator = None
    try:
        summary = kept_training(ctx, task, key, seed) if keep else None
        if summary is not None:
            log("kept: its training and evaluations are current (its weights are not on this machine)")
            generator = kept.RenderOnly(ctx.run.student)
        else:
            before = _recorded_final(ctx, key, rid)
            summary = _train_method(m, seed, task, ctx, done, log)
            if summary is not None:
                kept.check_retrained(rid, before, summary["final"])
    except NoTrainingData as exc:  # no kept question, or every probe states the answer (RL leaves those out)
        return _skip(path, rec, f"skipped: {exc}", log)
    except Skipped as exc:
        return _skip(path, rec, str(exc), log)
    if summary is not None:
        done[rid] = summary
        _add_training(rec, summary, ctx, task, done)
    model = ctx.run.student if summary is None else summary["final"]
    rec["model_fingerprint"] = digest(model_identity(model))  # what was evaluated, by content
    log("evaluating")
    rec.update(evaluate_model(ctx, model, key, seed, task, m.label, generator=generator))
    rec = records.save(path, rec, started)  # an unchanged record stays as it was, time included
    log(", ".join(f"{d} {a:.1f}" for d, a in rec["accuracy"].items()))
    return rec


def _skip(path: Path, rec: dict, reason: str, log: Log) -> dict:
    log(reason)
    return records.write_skipped(path, rec, reason)


def plan_triples(pairs: Sequence[tuple[str, int]], tasks: Sequence[str]) -> list[tuple[str, str, int]]:
    """(task, method, seed) triples: each (method, seed) pair of ``methods.plan`` for every task in
    turn, so seed 0 of everything (every task) still runs first."""
    return [(task, key, seed) for key, seed in pairs for task in tasks]


def run_plan(pairs: Sequence[tuple[str, int]], ctx: Context, *, log: Log = print,
             unfinished: Mapping[str, str] = {}) -> list[dict]:
    """Train (or reuse), evaluate and record every (method, seed) pair on every task; returns the records.
    ``unfinished``: by run id, why a dispatched training did not finish (``jobs.dispatch_trainings``)."""
    done: dict[str, dict] = {}
    triples = plan_triples(pairs, ctx.tasks)
    trains = [t for t in triples if not same_training_as(METHODS[t[1]], ctx.rl)]  # a twin needs no warm-up
    keepable = kept.keepable(trains, ctx.rid, lambda *t: kept_training(ctx, *t) is not None)
    out = []
    for n, (task, key, seed) in enumerate(triples, 1):
        rid = ctx.rid(key, seed, task)
        where = f"[{n}/{len(triples)}] {rid}"
        out.append(run_triple(task, key, seed, ctx, done, log=lambda msg, where=where: log(f"{where}: {msg}"),
                              unfinished=unfinished.get(rid, ""), keep=rid in keepable))
    return out


def missing_records(ctx: Context, pairs: Sequence[tuple[str, int]]) -> list[str]:
    """Run ids of the plan's (task, method, seed) triples that have no record."""
    rids = [ctx.rid(key, seed, task) for task, key, seed in plan_triples(pairs, ctx.tasks)]
    return [rid for rid in rids if not ctx.layout.record(rid).exists()]


def prepare_baselines(ctx: Context, pairs: Sequence[tuple[str, int]]):
    """The baselines' teacher data of every task when ``pairs`` train a baseline (cached, reused when
    unchanged); their statistics, one row per (task, baseline)."""
    if not any(METHODS[key].kind == "sft" and METHODS[key].data != "ei" for key, _ in pairs):
        return pd.DataFrame(columns=["train_dataset", "baseline"])
    frames = []
    for task in ctx.tasks:
        data = prepare_baseline_data(ctx.layout.ei_records(task), ctx.layout.baseline_data(task), teacher=ctx.teacher)
        # the baselines' questions are the EI methods' (prepare_baseline_data: same_questions)
        frames.append(data_stats(data).assign(train_dataset=task, ei_questions=len(ctx.probe_records(task))))
    return pd.concat(frames, ignore_index=True)
