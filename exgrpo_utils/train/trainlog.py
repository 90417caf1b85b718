"""Per-step training logs as JSONL, continuing the same curve across a resume (read them with
``infra.files.read_train_log``)."""
from __future__ import annotations

import json
import math
import time
import warnings
from collections import Counter
from pathlib import Path

from transformers import TrainerCallback

from ..infra.files import append_jsonl, atomic_write_text, read_log_jsonl
from ..infra.layout import QUESTION_VISITS

# Every trainer of the kit logs through this module. TRL reads a deprecated transformers property
# before every generation (GRPO, GKD); one warning per step would bury the log.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


class JsonlLogCallback(TrainerCallback):
    """Appends every ``on_log`` record (step, epoch, wall time, the trainer's metrics) to ``path``.

    On a resume, records past the checkpoint's step are dropped first (they will be logged again),
    so the file holds one curve with no duplicated steps. TRL's ``num_tokens`` counts from zero in each
    ``train`` call: a resumed call's values are logged plus the count its checkpoint had reached, so
    the file's ``num_tokens`` is the whole run's, as if it had never stopped (exactly so when the
    checkpoint's step was logged: ``logging_steps`` 1, the default).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.t0 = time.time()
        self.offset = 0.0
        self.tokens_offset = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:  # under accelerate launch: one writer, the main process
            return
        kept = keep_through_step(self.path, state.global_step)
        self.offset = kept[-1].get("wall_time_s", 0.0) if kept else 0.0
        self.tokens_offset = max((r.get("num_tokens", 0) for r in kept), default=0)
        self.t0 = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        rec = {"step": state.global_step, "epoch": state.epoch,
               "wall_time_s": round(self.offset + time.time() - self.t0, 2),
               "tokens_seen": state.num_input_tokens_seen}
        for k, v in logs.items():
            if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                rec[k] = v + self.tokens_offset if k == "num_tokens" else v
        append_jsonl(self.path, [rec])


def keep_through_step(path: Path, step: int) -> list[dict]:
    """Drop a per-step log's records past ``step`` (a resume logs them again); the records kept."""
    records = read_log_jsonl(path)
    kept = [r for r in records if r.get("step", 0) <= step]
    if len(kept) != len(records):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept




class QuestionVisitsLog(TrainerCallback):
    """Which questions each step rolled out, on every process: ``{"step": n, "questions": [[ids of
    process 0], [ids of process 1], ...]}`` per step, written by the main process only
    (``ExGRPOTrainer`` gathers the ids); records past a resumed checkpoint's step are dropped."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            keep_through_step(self.path, state.global_step)

    def record(self, step: int, per_process: list[list[str]], main: bool) -> None:
        if main:
            append_jsonl(self.path, [{"step": step, "questions": per_process}])


def visit_summary(out_dir: str | Path) -> dict:
    """An RL run's question-visits from its ``QUESTION_VISITS`` log (one visit: one question rolled out
    G times and trained on in one step): the total, the distinct questions and the fewest visits any
    visited question had. Empty for trainings without the log."""
    path = Path(out_dir) / QUESTION_VISITS
    if not path.exists():
        return {}
    counts = Counter(q for r in read_log_jsonl(path) for ids in r["questions"] for q in ids)
    return {"question_visits": sum(counts.values()), "questions_visited": len(counts),
            "fewest_visits_per_question": min(counts.values(), default=0)}
