"""Notebook 05's trainings as a plan of jobs for ``experiments.dispatch``, for the executors that run
them outside the notebook's process (``exp_executor``: accelerate, slurm).

Each (task, method, seed) that trains is one job: ``python -m exgrpo_utils.train_cli method`` with
the notebook's parameters (written once to ``<run>/experiments/dispatch/params.json``) and the triple,
which trains exactly what the inline path trains (``runs.train_one``: the same trainers, folders and
fingerprints). An RL method that starts from a warm-up of the same seed and task runs after it (a
SLURM dependency under ``slurm``). Zero-shot trains nothing, and On-Policy Distillation from a teacher
that gives no token distributions is recorded as skipped by the notebook: neither is a job. After the
plan, the notebook evaluates and records as before; a training whose job failed is recorded as not
trained with the job's log (``runs.run_plan``'s ``unfinished``), never trained again in the notebook.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..infra.files import atomic_write_json
from .dispatch import Job, Resources, describe, report, run_plan
from .methods import METHODS, opd_status, plan, same_training_as
from .runs import SUMMARIES, Context, plan_triples, training_inputs


def params_file(ctx: Context) -> Path:
    return ctx.layout.root / "experiments" / "dispatch" / "params.json"


def training_jobs(ctx: Context, pairs: Sequence[tuple[str, int]], params_path: Path) -> list[Job]:
    """One job per (task, method, seed) of ``pairs`` that trains, with its warm-up as a dependency and
    the fingerprint inputs its training will stamp where they are known now (``runs.training_inputs``):
    a finished training made from other inputs then counts as stale and is submitted again."""
    here = ctx.experiments.executor != "slurm"  # SLURM jobs train on other nodes, in their own precision
    opd_runs = opd_status(ctx.teacher.teacher, ctx.teacher.teacher_model)[0]
    jobs = []
    for task, key, seed in plan_triples(pairs, ctx.tasks):
        m = METHODS[key]
        if m.kind == "zero-shot" or (m.kind == "opd" and not opd_runs) or same_training_as(m, ctx.rl):
            continue  # nothing to train (a probe-policy row with the run's own policy is ExGRPO's training)
        rid = ctx.rid(key, seed, task)
        after = (ctx.rid(m.init, seed, task),) if m.kind == "rl" and m.init != "base" else ()
        command = ("exgrpo_utils.train_cli", "method", "--params", str(params_path), "--task", task, "--key", key,
                   "--seed", str(seed))
        jobs.append(Job(rid, command, ctx.layout.train_dir(rid) / SUMMARIES[m.kind], after,
                        training_inputs(ctx, task, key, seed, here=here)))
    return jobs


def resources(ctx: Context) -> Resources:
    e = ctx.experiments
    return Resources(partition=e.slurm_partition, cpus=e.slurm_cpus, gpus=e.slurm_gpus, mem_gb=e.slurm_mem_gb,
                     minutes=e.slurm_minutes)


def plan_description(params: Mapping[str, Any]) -> str:
    """What ``runner --dry-run`` prints for notebook 05: the executor, its resources and every job."""
    ctx = Context.from_params(params, check=False)
    e = ctx.experiments
    pairs = plan(e.groups, e.seeds, e.seed0_only_groups)
    jobs = training_jobs(ctx, pairs, params_file(ctx))
    where = {"inline": "in the notebook's process, one after another",
             "accelerate": f"accelerate launch, config {e.accelerate_config or '(accelerate default)'}",
             "slurm": f"SLURM jobs: {resources(ctx)}"}[e.executor]
    waits = sum(bool(j.after) for j in jobs)
    return (f"{len(plan_triples(pairs, ctx.tasks))} (task, method, seed) records over {len(ctx.tasks)} task(s); "
            f"{len(jobs)} trainings, {waits} of them after their warm-up; executor {e.executor} ({where})\n"
            + describe(jobs, e.executor))


def dispatch_trainings(ctx: Context, params: Mapping[str, Any], pairs: Sequence[tuple[str, int]],
                       *, log=print) -> dict[str, str]:
    """Run the plan's trainings through ``exp_executor`` (nothing for ``inline``); returns, by run id,
    why a training did not finish (for ``runs.run_plan``'s ``unfinished``)."""
    e = ctx.experiments
    if e.executor == "inline":
        return {}
    path = params_file(ctx)
    atomic_write_json(path, dict(params))
    jobs = training_jobs(ctx, pairs, path)
    log(describe(jobs, e.executor))
    outcomes = run_plan(jobs, executor=e.executor, log_dir=path.parent / "logs", resources=resources(ctx),
                        accelerate_config=e.accelerate_config)
    log(report(outcomes))
    why = {"failed": "its training job failed", "not run": "not trained: a job it needs failed"}
    return {o.name: failure_reason(o.log) or (f"{why[o.state]} (log {o.log})" if o.log else why[o.state])
            for o in outcomes if o.state in why}


def failure_reason(log_path: str) -> str:
    """The record's reason for a job that ended without training because it could not train (no
    training rows, a method this teacher cannot run: ``train_cli method``'s last line "not trained:
    ..." wherever the launcher put it among its own lines), as the inline path words it ("skipped:
    ..."), with the log; "" for any other failure."""
    try:
        lines = [line.strip() for line in Path(log_path).read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    said = [line[len("not trained: "):] for line in lines if line.startswith("not trained: ")]
    if not said:
        return ""
    return f"{said[-1] if said[-1].startswith('skipped') else 'skipped: ' + said[-1]} (log {log_path})"
