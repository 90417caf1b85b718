"""The one train-and-save path of every trainer (SFT, ExGRPO and plain GRPO, On-Policy Distillation).

:func:`train_and_save` returns a finished run's summary as it is when its fingerprint matches (a
rerun never trains again; a folder made from other inputs is refused), else builds the trainer, resumes from the last checkpoint, trains, saves
``final/`` (adapter or full model, with the tokenizer) and writes the summary: settings, steps,
tokens, seconds and peak memory over all resumed calls. Every trainer logs its steps to
``train_log.jsonl`` and to the experiment trackers of ``report_to`` (TensorBoard by default, in the
training folder's ``tensorboard/``).

torch, transformers and peft are imported inside the functions that need them, so the settings and
the data side of training import without them.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..infra.files import atomic_write_json, folder_lock, read_log_jsonl
from ..infra.fingerprint import check_stamp
from ..infra.layout import TRAIN_LOG
from ..infra.paths import portable
from ..infra.settings import result_fields
from ..models.registry import cpu_has_fast_bf16, default_device, model_identity, record_identity, recorded_identity_path
from .trainlog import JsonlLogCallback, visit_summary

# peft, torch, transformers are imported inside the functions that use them (heavy, or needed only on some paths).

TRACKERS = ("tensorboard", "wandb", "trackio")


class NoTrainingData(ValueError):
    """A training has no rows to train on (no kept question, no usable probe); notebook 05 records the
    method as skipped with this message instead of stopping the run."""


class PlannedInputs(Exception):
    """What :func:`train_and_save` raises under :func:`planning` instead of training: the fingerprint
    inputs the training would stamp on its folder (``inputs``)."""

    def __init__(self, inputs: dict):
        super().__init__("a planned training's inputs")
        self.inputs = inputs


_PLANNING: list[bool] = []  # the stack of planning() blocks; the innermost one's flag: trains on this machine


@contextlib.contextmanager
def planning(*, here: bool = True):
    """Inside this block a trainer computes the inputs its folder's fingerprint is made from and raises
    :class:`PlannedInputs` with them, touching no folder and building nothing: how a plan of jobs
    (``experiments.jobs``) knows which finished trainings are current before submitting any. ``here``:
    the job trains on this machine, so the training precision is this machine's; else (a SLURM job on
    other nodes) the precision is left ``None``, decided where the job runs."""
    _PLANNING.append(here)
    try:
        yield
    finally:
        _PLANNING.pop()


@dataclass
class Built:
    """What a stage hands to :func:`train_and_save`: its trainer, tokenizer and summary fields."""
    trainer: Any
    tokenizer: Any
    summary: dict = field(default_factory=dict)


def training_precision(bf16: bool | None, device: str) -> tuple[str, bool]:
    """(weights dtype, mixed-precision flag for the trainer).

    ``None`` (kit default): bf16 weights with bf16 autocast on GPUs that support it; bf16 weights
    without autocast on CPUs with AMX (the LoRA adapter itself stays float32); float32 elsewhere, CPUs
    with AVX512-BF16 but no AMX included (SFT ran 1.2-1.6x faster in float32 than in bf16 on such a CPU:
    ``models.registry.cpu_has_fast_bf16``). ``True``/``False`` force bf16/float32."""
    import torch

    if device == "cuda":
        use = torch.cuda.is_bf16_supported() if bf16 is None else bf16
        return ("bfloat16", True) if use else ("float32", False)
    use = cpu_has_fast_bf16() if bf16 is None else bf16
    return ("bfloat16", False) if use else ("float32", False)


def lora_config(r: int, alpha: int, dropout: float):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear", task_type="CAUSAL_LM")


def peak_memory_mib() -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, resident set size on CPU."""
    import torch

    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_cost(out_dir: Path, summary_name: str, seconds_this_call: float) -> dict:
    """``seconds`` and ``peak_memory_mib`` of a whole training in ``out_dir``, over resumed calls.

    Seconds: the log's cumulative wall time (``JsonlLogCallback`` carries it across resumes), or
    this call's time when that is larger (model saving is not logged). Peak memory: the larger of
    this call's and the one the previous summary recorded, so a call that only reloads a finished
    checkpoint does not replace the training's numbers with its own."""
    logged = max((float(r.get("wall_time_s", 0.0)) for r in read_log_jsonl(out_dir / TRAIN_LOG)), default=0.0)
    peak = peak_memory_mib()
    previous = out_dir / summary_name
    if previous.exists():
        try:
            peak = max(peak, float(json.loads(previous.read_text()).get("peak_memory_mib") or 0.0))
        except ValueError:
            pass
    return {"seconds": round(max(logged, seconds_this_call), 1), "peak_memory_mib": peak}


TOKEN_KINDS = ("generated", "context", "update", "reference", "aux_sft")


def token_kinds(log_history: Sequence[dict]) -> dict[str, int]:
    """An RL run's tokens by kind, summed over its logged steps (``tokens/<kind>``, see
    ``exgrpo_trainer.ExGRPOTrainer._log_tokens``); empty for trainers that do not log them."""
    steps = [h for h in log_history if "tokens/update" in h]
    return {k: int(round(sum(h.get(f"tokens/{k}", 0) for h in steps))) for k in TOKEN_KINDS} if steps else {}


def trained_tokens(log_history: Sequence[dict]) -> int:
    """Every token a run trained on or generated: for RL the sum of ``token_kinds`` (sampled tokens,
    the update's forward and backward, the reference pass, the aux SFT rows); for SFT and OPD TRL's
    cumulative ``num_tokens`` (the tokens of the rows trained on)."""
    kinds = token_kinds(log_history)
    if kinds:
        return sum(kinds.values())
    return int(max((h.get("num_tokens", 0) for h in log_history), default=0))


def curve_loss(records: Sequence[dict]) -> float | None:
    """The mean training loss over a run's logged steps (each logged ``loss`` averages the steps since
    the previous log, so it weighs that many steps): over every resumed call, unlike the trainer's
    ``train_loss``, which averages only the steps of its own call."""
    total, steps, last = 0.0, 0, 0
    for r in sorted((r for r in records if "loss" in r and "step" in r), key=lambda r: r["step"]):
        total += float(r["loss"]) * (r["step"] - last)
        steps += r["step"] - last
        last = r["step"]
    return round(total / steps, 6) if steps else None


def finished_run(out_dir: Path, summary_name: str, settings, **same) -> dict | None:
    """The summary of a finished run in ``out_dir`` with these settings (and ``same`` fields), else None.

    A rerun of a finished stage must not train again (resuming a trainer from its last checkpoint
    at max_steps still takes one more step)."""
    path = out_dir / summary_name
    if not (path.exists() and (out_dir / "final").exists()):
        return None
    summary = json.loads(path.read_text())
    want = json.loads(json.dumps(result_fields(settings)))
    stored = {k: v for k, v in (summary.get("settings") or {}).items() if k in want}
    if stored != want or any(summary.get(k) != portable(v) for k, v in same.items()):
        return None
    return summary


def train_from(trainer, ckpt: str | None, max_steps: int) -> None:
    """``trainer.train``, resuming from ``ckpt``; a checkpoint already at the last step (a run killed
    between its last checkpoint and saving ``final``) is loaded instead of trained further."""
    if ckpt:
        state = json.loads((Path(ckpt) / "trainer_state.json").read_text())
        target = max_steps if max_steps > 0 else state.get("max_steps", 0)
        if target > 0 and state["global_step"] >= target:
            trainer._load_from_checkpoint(ckpt)
            trainer.state.global_step = state["global_step"]
            trainer.state.log_history = state.get("log_history", [])
            return
    trainer.train(resume_from_checkpoint=ckpt)


CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")
# A checkpoint's weights: a PEFT adapter or a full model, in one file or sharded.
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json")
INCOMPLETE_DIR = "incomplete-checkpoints"  # inside the training folder: checkpoints set aside, never deleted


def checkpoint_complete(path: Path) -> bool:
    """Whether the trainer finished writing this checkpoint: its ``trainer_state.json`` (the trainer
    writes it last, after the weights, optimizer and RNG states) parses and names the folder's step,
    and its weights are there. A kill or a full disk during a save leaves a checkpoint that is not."""
    m = CHECKPOINT_RE.fullmatch(path.name)
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return (m is not None and isinstance(state, dict) and state.get("global_step") == int(m.group(1))
            and any((path / name).exists() for name in WEIGHT_FILES))


def last_checkpoint(out_dir: Path, *, set_aside: bool = True, log=print) -> str | None:
    """The newest complete checkpoint of the training folder, or None. Newer incomplete ones are moved
    to ``<out_dir>/incomplete-checkpoints/`` (``set_aside``: only the process that owns the folder
    does; the others just pass them over), so the trainer resumes from the one before."""
    ckpt_dir = out_dir / "checkpoints"
    if not ckpt_dir.is_dir():
        return None
    found = [p for p in ckpt_dir.iterdir() if p.is_dir() and CHECKPOINT_RE.fullmatch(p.name)]
    for path in sorted(found, key=lambda p: int(CHECKPOINT_RE.fullmatch(p.name).group(1)), reverse=True):
        if checkpoint_complete(path):
            return str(path)
        if set_aside:
            aside = out_dir / INCOMPLETE_DIR / path.name
            n = 1
            while aside.exists():
                aside, n = out_dir / INCOMPLETE_DIR / f"{path.name}.{n}", n + 1
            aside.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, aside)
            log(f"{path}: incomplete checkpoint (no valid trainer_state.json or weights: the save was interrupted); "
                f"moved to {aside}, resuming from the one before")
    return None


def tracking_callbacks(report_to: Sequence[str], out_dir: Path) -> list:
    """Trainer callbacks for the experiment trackers named in ``report_to``.

    TensorBoard writes to ``out_dir/tensorboard`` (so ``tensorboard --logdir results/runs/<run>``
    shows every training of a run); wandb and trackio use transformers' integrations and must be
    installed (``pip install wandb`` / ``trackio``)."""
    unknown = [r for r in report_to if r not in TRACKERS]
    if unknown:
        raise ValueError(f"report_to: unknown tracker(s) {unknown}; known: {', '.join(TRACKERS)}")
    callbacks = []
    if "tensorboard" in report_to:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        callbacks.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(out_dir / "tensorboard"))))
    others = [r for r in report_to if r != "tensorboard"]
    if others:
        from transformers.integrations import get_reporting_integration_callbacks

        try:
            callbacks += [cb() for cb in get_reporting_integration_callbacks(others)]
        except (ImportError, RuntimeError, ValueError) as exc:
            raise RuntimeError(f"report_to {others}: {exc}") from None
    return callbacks


def train_and_save(*, out_dir: str | Path, summary_name: str, settings, identity: dict, data: str, max_steps: int,
                   build: Callable[[], Built], resume: bool = True, report_to: Sequence[str] = (),
                   fresh: bool = False) -> dict:
    """Reuse a finished run, or build, resume, train, save ``final/`` and write the summary.

    ``identity``: the models besides ``settings`` that determine the run (the student, the initial
    model, the teacher), written into the summary; ``data``: a digest of the training data. Both go
    into the folder's fingerprint with the settings and the training precision: a folder made from
    other inputs is never reused or resumed (``infra.fingerprint.check_stamp``; ``fresh`` moves it
    aside). ``build`` is called only when training is needed."""
    out_dir = Path(out_dir)
    device = default_device()
    inputs = {"stage": summary_name.split("_")[0], "settings": result_fields(settings),
              "models": {k: model_identity(v) for k, v in identity.items()}, "data": data,
              "precision": {"device": device, "dtype": training_precision(getattr(settings, "bf16", None), device)[0]}}
    if _PLANNING:
        raise PlannedInputs(inputs if _PLANNING[-1] else {**inputs, "precision": None})
    # Under ``accelerate launch`` every process calls this: only the main one locks and stamps the
    # folder (the others train their shard of each batch and do not write it).
    main_process = int(os.environ.get("RANK", "0")) == 0
    with folder_lock(out_dir, "training") if main_process else contextlib.nullcontext():
        if main_process:
            check_stamp(out_dir, inputs, what=f"{inputs['stage']} training", fresh=fresh)
        done = finished_run(out_dir, summary_name, settings, **identity) if resume else None
        if done:
            if main_process and not recorded_identity_path(out_dir / "final").exists():
                record_identity(out_dir / "final")  # a run finished before trainings recorded it
            return done
        built = build()
        trainer = built.trainer
        trainer.add_callback(JsonlLogCallback(out_dir / TRAIN_LOG))
        for cb in tracking_callbacks(report_to if main_process else (), out_dir):
            trainer.add_callback(cb)
        ckpt = last_checkpoint(out_dir, set_aside=main_process) if resume else None
        t0 = time.time()
        train_from(trainer, ckpt, max_steps)
        final = out_dir / "final"
        trainer.save_model(str(final))  # every process calls it (sharded states are gathered); the main one writes
        if main_process:
            built.tokenizer.save_pretrained(str(final))
            record_identity(final)  # final.identity.json: the model by content, for machines without its weights
            curve = read_log_jsonl(out_dir / TRAIN_LOG)  # one curve over every resumed call (JsonlLogCallback)
            summary = {**{k: portable(v) for k, v in identity.items()}, "settings": asdict(settings), **built.summary,
                       "steps": trainer.state.global_step, **run_cost(out_dir, summary_name, time.time() - t0),
                       "resumed_from": portable(ckpt) if ckpt else None,
                       "train_tokens": trained_tokens(curve), "train_loss": curve_loss(curve),
                       "train_token_kinds": token_kinds(curve), **visit_summary(out_dir), "final": portable(final)}
            atomic_write_json(out_dir / summary_name, summary)
        trainer.accelerator.wait_for_everyone()  # the other processes return the summary the main one wrote
        return summary if main_process else json.loads((out_dir / summary_name).read_text())
