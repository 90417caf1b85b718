"""On-Policy Distillation baseline (method.md section 6) with TRL's GKD trainer.

The student samples answers to the training questions; the loss is a divergence between the
teacher's and the student's next-token distributions on those samples (``lmbda = 1``: every batch
on-policy; ``beta = 1``: reverse KL, kit defaults). This needs the teacher's full distribution at
every position of the student's tokens, so the teacher must be a local model with the student's
tokenizer (e.g. Qwen2.5-72B-Instruct for Qwen2.5-7B-Instruct). API teachers (Gemini) and the
program teacher cannot serve it: ``experiments.opd_status`` says so and the run is recorded as
skipped rather than faked.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from . import prompts
from .data import Example
from .io import atomic_write_json


@dataclass(frozen=True)
class OPDSettings:
    lmbda: float = 1.0  # share of on-policy batches (kit default: all, i.e. on-policy distillation)
    beta: float = 1.0  # 0 forward KL, 1 reverse KL, between: generalised JSD (kit default: reverse KL)
    temperature: float = 0.9  # student sampling temperature (TRL default)
    max_new_tokens: int = 256  # student sample length (kit default)
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 8
    learning_rate: float = 2e-4  # kit default for LoRA
    lora: bool = True
    lora_r: int = 32
    lora_alpha: int = 64
    max_length: int = 1024
    save_steps: int = 50
    seed: int = 0
    bf16: bool | None = None


def tokenizers_match(student_tok, teacher_tok) -> bool:
    """Same vocabulary, token for token (the distributions are compared position by position)."""
    return student_tok.get_vocab() == teacher_tok.get_vocab()


def opd_rows(records: Sequence[dict]) -> list[dict]:
    """One chat row per training question; the assistant turn is replaced by student samples when lmbda = 1."""
    rows = []
    for rec in records:
        item = Example.from_dict(rec["item"])
        rows.append({"messages": prompts.messages_for(item) + [{"role": "assistant", "content": rec["teacher_cot"]}]})
    return rows


def train_opd(*, student: str, teacher: str, probe_records: Sequence[dict], out_dir: str | Path,
              settings: OPDSettings = OPDSettings(), resume: bool = True) -> dict:
    """Distil ``teacher`` (a local model) into ``student`` on the questions of ``probe_records``."""
    import datasets
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from .models import default_device, load_model
    from .sft import finished_run, last_checkpoint, lora_config, run_cost, train_from, trained_tokens, training_precision
    from .trainlog import JsonlLogCallback

    out_dir = Path(out_dir)
    done = finished_run(out_dir, "opd_summary.json", settings, model=student, teacher=teacher) if resume else None
    if done:
        return done
    device = default_device()
    dtype, bf16 = training_precision(settings.bf16, device)
    model, tok = load_model(student, dtype=dtype, device=device, for_training=True)
    teacher_model, teacher_tok = load_model(teacher, dtype=dtype, device=device)
    if not tokenizers_match(tok, teacher_tok):
        raise ValueError(f"on-policy distillation needs one tokenizer: {teacher!r} and {student!r} differ")
    tok.padding_side = "right"
    config = GKDConfig(
        output_dir=str(out_dir / "checkpoints"), lmbda=settings.lmbda, beta=settings.beta, temperature=settings.temperature,
        max_new_tokens=settings.max_new_tokens, num_train_epochs=settings.epochs, max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size, learning_rate=settings.learning_rate, lr_scheduler_type="cosine",
        max_length=settings.max_length, logging_steps=1, save_steps=settings.save_steps, save_total_limit=2,
        seed=settings.seed, data_seed=settings.seed, bf16=bf16, use_cpu=device == "cpu", gradient_checkpointing=False,
        report_to="none", dataloader_num_workers=0)
    trainer = GKDTrainer(model=model, teacher_model=teacher_model, args=config,
                         train_dataset=datasets.Dataset.from_list(opd_rows(probe_records)), processing_class=tok,
                         peft_config=lora_config(settings.lora_r, settings.lora_alpha, 0.0) if settings.lora else None,
                         callbacks=[JsonlLogCallback(out_dir / "train_log.jsonl")])
    ckpt = last_checkpoint(out_dir) if resume else None
    t0 = time.time()
    train_from(trainer, ckpt, settings.max_steps)
    final = out_dir / "final"
    trainer.save_model(str(final))
    tok.save_pretrained(str(final))
    summary = {"model": student, "teacher": teacher, "settings": asdict(settings), "rows": len(probe_records),
               "steps": trainer.state.global_step, **run_cost(out_dir, "opd_summary.json", time.time() - t0),
               "resumed_from": ckpt, "train_tokens": trained_tokens(trainer.state.log_history), "final": str(final)}
    atomic_write_json(out_dir / "opd_summary.json", summary)
    return summary
