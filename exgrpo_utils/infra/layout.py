"""One run's folder layout: every path of a run comes from :class:`RunLayout`.

    results/runs/<run>/
      00_setup.json                        environment and dataset tour (notebook 00)
      ei/<dataset>/                        probe dataset, EI records, Eq. 1/Eq. 2 statistics (01)
      ei_test/<dataset>/                   the EI-Test of its test questions (01; Figure 1)
      train/<run_id>/                      a training: log, checkpoints, final/, merged/, summary (02, 03, 05)
      eval_task/<run_id>/                  evaluation on the training task and its paired OOD sets (02, 03, 05;
                                           a run folder written before this name holds it as eval_arith/)
      eval/<label>/                        the 12-dataset suite (04, 05)
      baselines/<dataset>/baseline_data.jsonl   the baselines' teacher data (05)
      experiments/<run_id>.json            one record per (method, seed) (05)
      experiments.csv                      all records in one long table (05)
      paper/                               Tables 1-4, Figures 3-5 (06)
    results/executed/<name>/               executed notebooks, their parameters and timings (runner)

``run_id`` is a method key for seed 0 and ``<key>-s<seed>`` otherwise (:func:`run_id`), prefixed
with ``<task>--`` for a task of notebook 05 other than the run's ``train_dataset``. The
notebooks, the experiments layer and the training CLI use this class; no folder name is written
anywhere else.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .paths import results_root
from .settings import SettingsError

RUN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
TRAIN_LOG = "train_log.jsonl"
RL_SUMMARY = "rl_summary.json"  # an RL training's summary, beside final/
QUESTION_VISITS = "question_visits.jsonl"  # an RL training's questions per step and process
TASK_EVAL = "eval_task"  # every task's own evaluations (the training task and its paired OOD sets)
LEGACY_TASK_EVAL = "eval_arith"  # the same folder's name in runs written before 2026-12  # inside every training folder: one JSON record per logged step


def run_id(key: str, seed: int) -> str:
    """The folder name of a (method key, seed) pair: the key for seed 0, ``<key>-s<seed>`` otherwise."""
    return key if seed == 0 else f"{key}-s{seed}"


TASK_SEP = "--"  # between the task and the method in a run id of a task other than the run's train_dataset


def task_run_id(key: str, seed: int, task: str, main_task: str) -> str:
    """The run id of a (method, seed) pair trained on ``task``: :func:`run_id` for the run's own
    ``train_dataset`` (shared with notebooks 02 and 03), ``<task>--<run_id>`` for its other tasks."""
    rid = run_id(key, seed)
    return rid if task == main_task else f"{task}{TASK_SEP}{rid}"


def method_of(rid: str) -> tuple[str, int]:
    """(method key, seed) of a run id made by :func:`run_id` or :func:`task_run_id`."""
    rid = rid.split(TASK_SEP, 1)[-1]
    key, _, seed = rid.rpartition("-s")
    return (key, int(seed)) if key and seed.isdigit() else (rid, 0)


def safe_label(label: str) -> str:
    """A free-text label as a folder name: characters other than letters, digits, '_', '.' and '-'
    become '_'; a label that would name no folder of its own (empty, '.', '..', or hidden: starting
    with '.') is refused with a one-line SettingsError.

    >>> safe_label("sft (seed 1)")
    'sft_seed_1_'
    """
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
    if not name or name.startswith("."):
        raise SettingsError(f"label {label!r}: a label names a folder, so it must not be empty, '.' or '..', nor "
                            "start with '.'; use letters, digits, '_', '-' and '.' (other characters become '_')")
    return name


@dataclass(frozen=True)
class RunLayout:
    """The paths of run ``name`` under the results root (``$EXGRPO_RESULTS_DIR`` or ``results/``)."""
    name: str
    results: Path

    @classmethod
    def of(cls, name: str, results: str | Path | None = None) -> "RunLayout":
        if not RUN_NAME_RE.fullmatch(name or ""):
            raise ValueError(f"run name {name!r}: use letters, digits, '.', '_' and '-' only")
        return cls(name, results_root(results))

    # -- the run folder -------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return self.results / "runs" / self.name

    def create(self) -> "RunLayout":
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    def notebook_summary(self, stem: str) -> Path:
        """The JSON summary a notebook writes at its end."""
        where = {"00_setup": self.root, "01_probes": self.ei_root, "02_sft": self.train_dir("sft"),
                 "03_exgrpo": self.train_dir("exgrpo"), "04_evaluate": self.suite_root}
        return where[stem] / f"{stem}.json"

    # -- stage 1: Explanatory Inversion ---------------------------------------------------------
    @property
    def ei_root(self) -> Path:
        return self.root / "ei"

    def ei_dir(self, dataset: str) -> Path:
        return self.ei_root / dataset

    def probe_dataset(self, dataset: str) -> Path:
        return self.ei_dir(dataset) / "probe_dataset.jsonl"

    def ei_records(self, dataset: str) -> Path:
        return self.ei_dir(dataset) / "ei_records.jsonl"

    def ei_test_dir(self, dataset: str) -> Path:
        """The EI-Test of ``dataset`` (Figure 1): probes of its test questions, never trained on."""
        return self.root / "ei_test" / dataset

    # -- training -------------------------------------------------------------------------------
    @property
    def train_root(self) -> Path:
        return self.root / "train"

    def train_dir(self, rid: str) -> Path:
        return self.train_root / rid

    def final_model(self, rid: str) -> Path:
        return self.train_dir(rid) / "final"

    def train_log(self, rid: str) -> Path:
        return self.train_dir(rid) / TRAIN_LOG

    # -- evaluation -----------------------------------------------------------------------------
    @property
    def task_eval_root(self) -> Path:
        """``eval_task/``; a run folder that holds the folder's earlier name ``eval_arith/`` (and no
        ``eval_task/``) keeps reading and resuming there, so committed runs stay valid unchanged."""
        current, legacy = self.root / TASK_EVAL, self.root / LEGACY_TASK_EVAL
        return legacy if legacy.is_dir() and not current.exists() else current

    def task_eval_dir(self, rid: str) -> Path:
        """The quick evaluation on the training task and its OOD pair."""
        return self.task_eval_root / rid

    @property
    def suite_root(self) -> Path:
        return self.root / "eval"

    def suite_eval_dir(self, label: str) -> Path:
        """The 12-dataset suite evaluation of a method key or free-text label."""
        return self.suite_root / safe_label(label)

    # -- experiments and report -----------------------------------------------------------------
    def baseline_data(self, dataset: str) -> Path:
        return self.root / "baselines" / dataset / "baseline_data.jsonl"

    @property
    def records_dir(self) -> Path:
        return self.root / "experiments"

    def record(self, rid: str) -> Path:
        return self.records_dir / f"{rid}.json"

    @property
    def experiments_csv(self) -> Path:
        return self.root / "experiments.csv"

    @property
    def paper_dir(self) -> Path:
        return self.root / "paper"

    # -- the runner -----------------------------------------------------------------------------
    def executed_dir(self, name: str | None = None) -> Path:
        """Executed notebooks of one runner call (``name``: the preset or run name that ran them)."""
        return self.results / "executed" / (name or self.name)
