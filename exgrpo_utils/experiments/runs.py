"""Train (or reuse), evaluate and record every (method, seed) pair of notebook 05.

``run_plan`` walks the pairs of :func:`methods.plan`: it trains what is missing through the same
stage functions as notebooks 02 and 03 (so their seed-0 runs ``sft`` and ``exgrpo`` are shared),
evaluates each model on the training task and its pair (and, for ``exp_suite_keys``, on the 12
datasets) and writes one record per pair under ``<run>/experiments/``; ``collect`` gathers the
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
from ..common.layout import RunLayout, run_id
from ..common.runsettings import RunSettings
from ..common.settings import build
from ..evaluate.evaluation import evaluate_on
from ..evaluate.settings import SuiteSettings, TaskEvalSettings
from ..models.registry import model_identity
from ..teach.inversion import load_probe_dataset
from ..teach.settings import TeacherSettings
from ..train.exgrpo import train_exgrpo
from ..train.opd import train_opd
from ..train.settings import ExGRPOSettings, OPDSettings, SFTSettings
from ..train.sft import subsample_questions, train_sft
from .baselines import baseline_rows, load_baseline_data
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
        layout = RunLayout.of(params["run_name"])
        probe_path = layout.probe_dataset(params["train_dataset"])
        if not probe_path.exists():
            raise FileNotFoundError(f"{probe_path} is missing: run notebook 01 of this run first (e.g. make reproduce)")
        return cls(layout=layout, run=build(RunSettings, params), sft=build(SFTSettings, params),
                   rl=build(ExGRPOSettings, params), teacher=build(TeacherSettings, params),
                   eval=build(TaskEvalSettings, params), suite=build(SuiteSettings, params),
                   experiments=build(ExperimentSettings, params))

    def probe_records(self) -> list[dict]:
        return load_probe_dataset(self.layout.probe_dataset(self.run.train_dataset))


def _train_method(m: Method, seed: int, ctx: Context, done: dict[str, dict]) -> dict:
    """Train (or reuse: the training folder's fingerprint decides) one SFT or RL method at one seed."""
    out_dir = ctx.layout.train_dir(run_id(m.key, seed))
    common = dict(out_dir=out_dir, report_to=ctx.run.report_to, fresh=ctx.run.fresh)
    if m.kind == "sft":
        settings = replace(ctx.sft, seed=seed, rules=tuple(m.rules), data_fraction=m.fraction * ctx.sft.data_fraction)
        if m.data == "ei":
            summary = train_sft(model=ctx.run.student, probe_records=ctx.probe_records(), settings=settings, **common)
        else:
            data = load_baseline_data(ctx.layout.baseline_data(ctx.run.train_dataset))
            summary = train_sft(model=ctx.run.student, rows=baseline_rows(data, m.data), settings=settings, **common)
        if summary.get("data") != m.data:
            summary["data"] = m.data
            atomic_write_json(out_dir / "sft_summary.json", summary)
        return summary
    # rl
    settings = replace(ctx.rl, seed=seed, mode=m.mode, aux_lambda=ctx.rl.aux_lambda if m.aux else 0.0,
                       revealing_probes=m.revealing_probes or ctx.rl.revealing_probes)
    if m.init == "base":
        init = ctx.run.student
    else:  # the warm-up of the same seed (sft-s1 for exgrpo-s1): plan() runs it first
        warmup = done.get(run_id(m.init, seed))
        if warmup is None:
            raise RuntimeError(f"{run_id(m.key, seed)} starts from {run_id(m.init, seed)}, which is not in this plan; "
                               f"add the group that holds {m.init!r} for seed {seed}")
        init = warmup["final"]
    records = ctx.probe_records()
    if m.init != "base":  # ExGRPO on the same questions as its SFT warm-up
        records = subsample_questions(records, FRACTION_OF.get(m.init, 1.0) * ctx.sft.data_fraction, seed)
    return train_exgrpo(init_model=init, probe_records=records, settings=settings, **common)


def _train_opd(seed: int, ctx: Context) -> dict:
    s = ctx.sft
    settings = OPDSettings(epochs=s.epochs, batch_size=s.batch_size, learning_rate=s.learning_rate, lora=s.lora,
                           lora_r=s.lora_r, lora_alpha=s.lora_alpha, max_length=s.max_length, seed=seed,
                           max_new_tokens=ctx.rl.max_final_tokens)
    return train_opd(student=ctx.run.student, teacher=ctx.teacher.teacher_model, probe_records=ctx.probe_records(),
                     out_dir=ctx.layout.train_dir(run_id("opd", seed)), settings=settings, report_to=ctx.run.report_to,
                     fresh=ctx.run.fresh)


def training_cost(key: str, seed: int, done: dict[str, dict]) -> tuple[int, float]:
    """(tokens, seconds) of everything trained to get this method: RL runs add their warm-up's cost."""
    m = METHODS[key]
    s = done.get(run_id(key, seed)) or {}
    tokens, seconds = int(s.get("train_tokens") or 0), float(s.get("seconds") or 0)
    if m.kind == "rl" and m.init != "base":
        t2, s2 = training_cost(m.init, seed, done)
        tokens, seconds = tokens + t2, seconds + s2
    return tokens, round(seconds, 1)


def _same_record(path: Path, rec: dict) -> dict | None:
    """The record stored at ``path`` when it equals ``rec`` (its wall time aside), else None."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    same = {k: v for k, v in old.items() if k != "wall_seconds"} == json.loads(json.dumps(rec))
    return old if same else None


def _evaluate(ctx: Context, model: str, key: str, seed: int, label: str):
    rid = run_id(key, seed)
    table = evaluate_on(ctx.eval, ctx.run, model=model, out_dir=ctx.layout.task_eval_dir(rid), label=label)
    if key in ctx.experiments.suite_keys and seed == 0 and ctx.suite.datasets:
        suite = evaluate_on(ctx.suite, ctx.run, model=model, out_dir=ctx.layout.suite_eval_dir(rid), label=label)
        table = pd.concat([table, suite], ignore_index=True)
    return table


def run_plan(pairs: Sequence[tuple[str, int]], ctx: Context, *, log=print) -> list[dict]:
    """Train (or reuse), evaluate and record every (method, seed) pair; returns the records."""
    out = []
    done: dict[str, dict] = {}
    for n, (key, seed) in enumerate(pairs, 1):
        m = METHODS[key]
        rid = run_id(key, seed)
        record_path = ctx.layout.record(rid)
        rec = {"run_id": rid, "key": key, "label": m.label, "kind": m.kind, "seed": seed, "status": "ok",
               "reason": "", "train_tokens": 0, "train_seconds": 0.0, "accuracy": {}, "n": {}, "correct": {}}
        t0 = time.time()
        if m.kind == "opd":
            ok, reason = opd_status(ctx.teacher.teacher, ctx.teacher.teacher_model)
            if ok:
                try:
                    summary = _train_opd(seed, ctx)
                except ValueError as exc:  # e.g. the tokenizers differ
                    ok, reason = False, f"skipped: {exc}"
            if not ok:
                rec.update(status="skipped", reason=reason)
                log(f"[{n}/{len(pairs)}] {rid}: {reason}")
                atomic_write_json(record_path, rec)
                out.append(rec)
                continue
            done[rid] = summary
            model = summary["final"]
            rec["train_tokens"], rec["train_seconds"] = training_cost(key, seed, done)
        elif m.kind == "zero-shot":
            model = ctx.run.student
        else:
            log(f"[{n}/{len(pairs)}] {rid}: training")
            summary = _train_method(m, seed, ctx, done)
            done[rid] = summary
            model = summary["final"]
            rec["train_tokens"], rec["train_seconds"] = training_cost(key, seed, done)
            rec["train_steps"] = summary.get("steps")
        rec["model_fingerprint"] = digest(model_identity(model))  # what was evaluated, by content
        log(f"[{n}/{len(pairs)}] {rid}: evaluating")
        table = _evaluate(ctx, model, key, seed, m.label)
        for _, r in table.iterrows():
            rec["accuracy"][r["dataset"]] = round(float(r["accuracy"]), 4)
            rec["n"][r["dataset"]] = int(r["n"])
            if "avg" not in r["dataset"]:
                rec["correct"][r["dataset"]] = int(round(r["accuracy"] * r["n"] / 100))
        stored = _same_record(record_path, rec)
        if stored:  # reused unchanged: keep the record (and time) of the run that made it
            rec = stored
        else:
            rec["wall_seconds"] = round(time.time() - t0, 1)
            atomic_write_json(record_path, rec)
        log(f"[{n}/{len(pairs)}] {rid}: " + ", ".join(f"{d} {rec['accuracy'][d]:.1f}" for d in ctx.eval.datasets))
        out.append(rec)
    return out


def collect(layout: RunLayout):
    """All records of a run as a long table: one row per (method, seed, dataset)."""

    rows = []
    for path in sorted(layout.records_dir.glob("*.json")):
        rec = json.loads(path.read_text())
        base = {k: rec[k] for k in ("run_id", "key", "label", "kind", "seed", "status", "reason", "train_tokens", "train_seconds")}
        if rec["status"] != "ok":
            rows.append({**base, "dataset": "", "n": 0, "correct": 0, "accuracy": float("nan")})
            continue
        for ds, acc in rec["accuracy"].items():
            rows.append({**base, "dataset": ds, "n": rec["n"].get(ds, 0), "correct": rec["correct"].get(ds), "accuracy": acc})
    return pd.DataFrame(rows)
