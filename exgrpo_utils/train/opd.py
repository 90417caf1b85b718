"""On-Policy Distillation baseline (method.md section 6) with TRL's GKD trainer.

The student samples answers to the training questions; the loss is a divergence between the
teacher's and the student's next-token distributions on those samples (``lmbda = 1``: every batch
on-policy; ``beta = 1``: reverse KL, kit defaults). This needs the teacher's full distribution at
every position of the student's tokens, so the teacher must be a local model with the student's
tokenizer (e.g. Qwen2.5-72B-Instruct for Qwen2.5-7B-Instruct). API teachers (Gemini) and the
program teacher cannot serve it: ``experiments.methods.opd_status`` says so and the run is recorded as
skipped rather than faked.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..data import prompts
from ..data.example import Example
from ..infra.fingerprint import digest
from ..models.generation import use_turn_stops
from ..models.registry import default_device, load_model
from .loop import Built, lora_config, train_and_save, training_precision
from .settings import OPDSettings

SUMMARY_NAME = "opd_summary.json"  # the summary a finished training writes beside final/

# datasets, trl are imported inside the functions that use them (heavy, or needed only on some paths).


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
              settings: OPDSettings = OPDSettings(), resume: bool = True, report_to: Sequence[str] = (),
              fresh: bool = False) -> dict:
    """Distil ``teacher`` (a local model) into ``student`` on the questions of ``probe_records``."""
    out_dir = Path(out_dir)

    def build() -> Built:
        import datasets

        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        device = default_device()
        dtype, bf16 = training_precision(settings.bf16, device)
        model, tok = load_model(student, dtype=dtype, device=device, for_training=True)
        teacher_model, teacher_tok = load_model(teacher, dtype=dtype, device=device)
        if not tokenizers_match(tok, teacher_tok):
            raise ValueError(f"on-policy distillation needs one tokenizer: {teacher!r} and {student!r} differ")
        tok.padding_side = "right"
        use_turn_stops(model, tok)  # the student's samples end at the chat template's end of turn too
        config = GKDConfig(
            output_dir=str(out_dir / "checkpoints"), lmbda=settings.lmbda, beta=settings.beta,
            temperature=settings.temperature, max_new_tokens=settings.max_new_tokens, num_train_epochs=settings.epochs,
            max_steps=settings.max_steps, per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.learning_rate, lr_scheduler_type="cosine", max_length=settings.max_length,
            logging_steps=1, save_steps=settings.save_steps, save_total_limit=2, seed=settings.seed,
            data_seed=settings.seed, bf16=bf16, use_cpu=device == "cpu", gradient_checkpointing=False,
            report_to="none", dataloader_num_workers=0)
        trainer = GKDTrainer(model=model, teacher_model=teacher_model, args=config,
                             train_dataset=datasets.Dataset.from_list(opd_rows(probe_records)), processing_class=tok,
                             peft_config=lora_config(settings.lora_r, settings.lora_alpha, 0.0) if settings.lora else None)
        return Built(trainer, tok, {"rows": len(probe_records)})

    return train_and_save(out_dir=out_dir, summary_name=SUMMARY_NAME, settings=settings,
                          identity={"model": student, "teacher": teacher}, data=digest(opd_rows(probe_records)),
                          max_steps=settings.max_steps, build=build, resume=resume, report_to=report_to, fresh=fresh)
