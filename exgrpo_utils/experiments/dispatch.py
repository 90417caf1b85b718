"""Trainings as a plan of jobs handed to an executor: in this process's machine one after another
(``inline``), each through ``accelerate launch`` on the node's GPUs (``accelerate``), or each as a
SLURM job through submitit with the plan's dependencies as SLURM dependencies (``slurm``).

A ``Job`` is a command of the kit (``python -m exgrpo_utils.train_cli ...`` and the like) with the
jobs it needs first (``after``: a warm-up before the RL that starts from it) and the summary file it
writes when finished (``output``), with the inputs it is made from where the planner knows them
(``inputs``: the fingerprint inputs its command stamps on ``output``'s folder). Submitting a plan
again runs only what is missing or stale: a job is done when its output exists and, if it has
``inputs``, the folder's fingerprint (``infra.fingerprint``) was made from those inputs, and no job
it comes after runs again (:func:`to_run`). A stale job is run again; its command then refuses the folder with the fingerprint's message (what differs)
unless it was asked for ``fresh=true``, so nothing made from other inputs is ever reused silently.
A job that fails is reported with its log; the jobs that need it are not run; the others go on.

Paper scale (docs/paper-scale.md): ``slurm`` for a cluster, ``accelerate`` for one 8-GPU node.
``tests/test_dispatch.py`` runs a two-job plan through a real single-node SLURM on loopback.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import submitit
from submitit.helpers import CommandFunction

from ..infra.fingerprint import read_stamp, stamp_fingerprint
from ..infra.paths import PROJECT_ROOT

EXECUTORS = ("inline", "accelerate", "slurm")


@dataclass(frozen=True)
class Job:
    name: str
    module_args: tuple[str, ...]  # after ``python -m``: a module of the kit and its arguments
    output: Path  # written by the job when it has finished (a training's summary)
    after: tuple[str, ...] = ()
    inputs: dict | None = None  # the fingerprint inputs of output's folder, when the planner knows them

    def finished(self) -> bool:
        """The output exists and, with ``inputs``, its folder's fingerprint was made from them (a
        ``precision`` of None, not known where the plan is made, is taken from the folder's stamp)."""
        if not self.output.exists():
            return False
        if self.inputs is None:
            return True
        stamp = read_stamp(self.output.parent)
        if stamp is None:
            return False
        wanted = dict(self.inputs)
        if "precision" in wanted and wanted["precision"] is None:
            wanted["precision"] = (stamp.get("inputs") or {}).get("precision")
        return stamp.get("fingerprint") == stamp_fingerprint(wanted)


@dataclass
class Outcome:
    name: str
    state: str  # "done" (found finished), "ran", "failed", "not run" (a job it needs failed)
    log: str = ""  # where the job's output went (failed and ran jobs)
    job_id: str = ""  # the SLURM job id


@dataclass(frozen=True)
class Resources:
    """What one SLURM job asks for (kit defaults; the settings of notebook 05 at paper scale)."""
    partition: str = ""
    cpus: int = 1
    gpus: int = 0
    mem_gb: int = 0  # 0: the partition's default
    minutes: int = 60


def in_order(jobs: Sequence[Job]) -> list[Job]:
    """The jobs with each after the ones it needs; an unknown name or a cycle is an error."""
    by_name = {j.name: j for j in jobs}
    if len(by_name) != len(jobs):
        raise ValueError("two jobs of the plan have the same name")
    ordered, state = [], {}

    def visit(job: Job, path: tuple[str, ...]) -> None:
        if state.get(job.name) == "done":
            return
        if job.name in path:
            raise ValueError(f"the plan's dependencies form a cycle: {' -> '.join(path + (job.name,))}")
        for need in job.after:
            if need not in by_name:
                raise ValueError(f"job {job.name!r} needs {need!r}, which is not in the plan")
            visit(by_name[need], path + (job.name,))
        state[job.name] = "done"
        ordered.append(job)

    for job in jobs:
        visit(job, ())
    return ordered


def to_run(jobs: Sequence[Job]) -> set[str]:
    """The names of the jobs that will run: those not finished, and every job after one of them (a
    warm-up trained again gives its RL another starting model)."""
    pending: set[str] = set()
    for job in in_order(jobs):
        if not job.finished() or pending.intersection(job.after):
            pending.add(job.name)
    return pending


def describe(jobs: Sequence[Job], executor: str) -> str:
    """The plan as a dry run prints it: one line per job, with what it waits for and whether it is done."""
    lines = [f"executor {executor}: {len(jobs)} job(s)"]
    pending = to_run(jobs)
    for job in in_order(jobs):
        mark = "to run" if job.name in pending else "done"
        lines.append(f"  {job.name} [{mark}]" + (f" after {', '.join(job.after)}" if job.after else ""))
    return "\n".join(lines)


def run_plan(jobs: Sequence[Job], *, executor: str = "inline", log_dir: str | os.PathLike,
             resources: Resources = Resources(), accelerate_config: str = "", env: dict | None = None) -> list[Outcome]:
    """Run the jobs not yet finished, in dependency order; returns one outcome per job (plan order).
    ``env``: variables added for local jobs (a SLURM job gets the submitting process's environment)."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **(env or {})}
    # a SLURM job with a config file runs its training under accelerate launch too (its GPUs, one process each)
    launcher = accelerate_prefix(accelerate_config) if executor == "accelerate" or accelerate_config else [sys.executable]
    if executor == "slurm":
        outcomes = _run_slurm(in_order(jobs), log_dir, resources, launcher)
    else:
        outcomes = _run_local(in_order(jobs), log_dir, launcher, env)
    return [outcomes[j.name] for j in jobs]


def accelerate_prefix(config: str) -> list[str]:
    """``accelerate launch`` as a command prefix (``-m <module> ...`` follows), with a config file if given."""
    return [sys.executable, "-m", "accelerate.commands.launch"] + (["--config_file", config] if config else [])


def _blocked(job: Job, outcomes: dict[str, Outcome]) -> bool:
    return any(outcomes[n].state in ("failed", "not run") for n in job.after)


def _run_local(jobs: list[Job], log_dir: Path, launcher: list[str], env: dict) -> dict[str, Outcome]:
    outcomes: dict[str, Outcome] = {}
    pending = to_run(jobs)
    for job in jobs:
        if job.name not in pending:
            outcomes[job.name] = Outcome(job.name, "done")
        elif _blocked(job, outcomes):
            outcomes[job.name] = Outcome(job.name, "not run")
        else:
            log = log_dir / f"{_file_name(job.name)}.log"
            with open(log, "w") as fh:
                rc = subprocess.run([*launcher, "-m", *job.module_args], cwd=PROJECT_ROOT, env=env, stdout=fh,
                                    stderr=subprocess.STDOUT).returncode
            ok = rc == 0 and job.output.exists()
            outcomes[job.name] = Outcome(job.name, "ran" if ok else "failed", str(log))
    return outcomes


def _run_slurm(jobs: list[Job], log_dir: Path, resources: Resources, launcher: list[str]) -> dict[str, Outcome]:
    outcomes: dict[str, Outcome] = {}
    submitted: dict[str, object] = {}
    pending = to_run(jobs)
    for job in jobs:
        if job.name not in pending:
            outcomes[job.name] = Outcome(job.name, "done")
            continue
        executor = submitit.AutoExecutor(folder=log_dir / "%j", cluster="slurm")
        extra = {}
        ids = [submitted[n].job_id for n in job.after if n in submitted]
        if ids:  # afterok: a job whose dependency failed never starts (SLURM cancels it)
            extra = {"dependency": "afterok:" + ":".join(ids), "kill-on-invalid-dep": "yes"}
        executor.update_parameters(name=job.name, timeout_min=resources.minutes, cpus_per_task=resources.cpus,
                                   slurm_partition=resources.partition or None, slurm_mem=f"{resources.mem_gb}G"
                                   if resources.mem_gb else None, slurm_gres=f"gpu:{resources.gpus}" if resources.gpus
                                   else None, slurm_additional_parameters=extra)
        # no env here: it would be pickled into the job folder, secrets included; sbatch exports the
        # submitting environment to the job instead
        submitted[job.name] = executor.submit(CommandFunction([*launcher, "-m", *job.module_args],
                                                              cwd=str(PROJECT_ROOT), verbose=False))
    for job in jobs:
        if job.name in outcomes:
            continue
        handle = submitted[job.name]
        if _blocked(job, outcomes):  # SLURM cancels it (kill-on-invalid-dep); no result will ever come
            handle.cancel(check=False)
            outcomes[job.name] = Outcome(job.name, "not run", "", handle.job_id)
            continue
        try:
            handle.result()
            state = "ran" if job.output.exists() else "failed"
        except Exception:  # noqa: BLE001 - submitit raises the job's failure; reported, not fatal
            state = "failed"
        outcomes[job.name] = Outcome(job.name, state, str(handle.paths.stderr), handle.job_id)
    return outcomes


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def report(outcomes: Sequence[Outcome]) -> str:
    """One line per job: its state, and for a failed job where its log is."""
    return "\n".join(f"{o.name}: {o.state}" + (f" (log {o.log})" if o.state == "failed" else "") for o in outcomes)
