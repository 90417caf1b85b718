"""Stage 2 (method.md section 3): SFT warm-up on the probe dataset (Eq. 3), with TRL's SFTTrainer.

Eq. 3 is next-token loss on the teacher's full response (reasoning and answer) given the probe:
each training row is a prompt-completion pair, so TRL computes the loss on the completion only.
The original (Q, R_T, A) pairs are included too (kit default; a flag). LoRA r = 32, alpha = 64
(kit default) or full fine-tuning; 3 epochs (paper). ``data_fraction`` keeps a seeded fraction of
the questions (the data-efficiency study). Checkpoints are saved as training goes; a rerun resumes
from the last one and continues the same log.
"""
from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from . import prompts
from .data import Example
from .io import atomic_write_json
from .rules import RuleSet, load_rules


@dataclass(frozen=True)
class SFTSettings:
    epochs: float = 3.0  # paper (ablation table: SFT 3 epochs)
    include_original_cot: bool = True  # kit default: also train on (Q, R_T, A)
    data_fraction: float = 1.0  # fraction of questions kept (Figure 4)
    lora: bool = True  # kit default; False = full fine-tuning
    lora_r: int = 32  # kit default
    lora_alpha: int = 64  # kit default
    lora_dropout: float = 0.05  # kit default
    learning_rate: float = 2e-4  # kit default for LoRA (use about 1e-5 for full fine-tuning)
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: int = 1024
    max_steps: int = -1  # > 0 overrides epochs (smoke runs)
    save_steps: int = 50
    logging_steps: int = 1
    seed: int = 0
    bf16: bool | None = None  # None: bf16 on GPUs that support it, float32 on CPU


def subsample_questions(records: Sequence[dict], fraction: float, seed: int) -> list[dict]:
    if not 0 < fraction <= 1:
        raise ValueError(f"data_fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return list(records)
    n = max(1, round(fraction * len(records)))
    keep = sorted(random.Random(f"fraction:{seed}").sample(range(len(records)), n))
    return [records[i] for i in keep]


def sft_rows(records: Sequence[dict], rules: RuleSet, *, include_original_cot: bool = True) -> list[dict]:
    """Prompt-completion rows (conversational): probe -> teacher response, and Q -> teacher CoT."""
    rows = []
    for rec in records:
        for p in rec["probes"]:
            rows.append({"prompt": [{"role": "user", "content": rules.answer_prompt(p["probe"])}],
                         "completion": [{"role": "assistant", "content": p["teacher_response"]}],
                         "source": f"probe:{p['rule']}", "question_id": rec["id"]})
        if include_original_cot:
            item = Example.from_dict(rec["item"])
            rows.append({"prompt": prompts.messages_for(item),
                         "completion": [{"role": "assistant", "content": rec["teacher_cot"]}],
                         "source": "original", "question_id": rec["id"]})
    return rows


def lora_config(r: int, alpha: int, dropout: float):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear", task_type="CAUSAL_LM")


def peak_memory_mib() -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, resident set size on CPU."""
    import resource

    import torch

    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def last_checkpoint(out_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    ckpt_dir = out_dir / "checkpoints"
    return get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None


def train_sft(*, model: str, probe_records: Sequence[dict], out_dir: str | Path, settings: SFTSettings = SFTSettings(),
              rules: RuleSet | None = None, resume: bool = True) -> dict:
    """Train and save ``out_dir/final`` (a LoRA adapter or a full model, loadable by ``models.load_model``)."""
    import datasets
    import torch
    from trl import SFTConfig, SFTTrainer

    from .models import default_device, load_model
    from .trainlog import JsonlLogCallback

    out_dir = Path(out_dir)
    rules = rules or load_rules()
    records = subsample_questions(probe_records, settings.data_fraction, settings.seed)
    rows = sft_rows(records, rules, include_original_cot=settings.include_original_cot)
    if not rows:
        raise ValueError("the probe dataset gave no SFT rows (no kept questions?)")
    device = default_device()
    bf16 = settings.bf16 if settings.bf16 is not None else (device == "cuda" and torch.cuda.is_bf16_supported())
    base, tok = load_model(model, dtype="bfloat16" if bf16 else "float32", device=device, for_training=True)
    tok.padding_side = "right"  # training pads on the right; generation code sets left itself
    config = SFTConfig(
        output_dir=str(out_dir / "checkpoints"), num_train_epochs=settings.epochs, max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size, gradient_accumulation_steps=settings.gradient_accumulation_steps,
        learning_rate=settings.learning_rate, lr_scheduler_type="cosine", warmup_steps=0.03, weight_decay=0.0,
        max_length=settings.max_length, packing=False, completion_only_loss=True, loss_type="nll",
        logging_steps=settings.logging_steps, save_steps=settings.save_steps, save_total_limit=2,
        seed=settings.seed, data_seed=settings.seed, bf16=bf16, use_cpu=device == "cpu",
        gradient_checkpointing=False, report_to="none", dataloader_num_workers=0, disable_tqdm=False)
    trainer = SFTTrainer(model=base, args=config, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=tok,
                         peft_config=lora_config(settings.lora_r, settings.lora_alpha, settings.lora_dropout) if settings.lora else None,
                         callbacks=[JsonlLogCallback(out_dir / "train_log.jsonl")])
    t0 = time.time()
    ckpt = last_checkpoint(out_dir) if resume else None
    trainer.train(resume_from_checkpoint=ckpt)
    seconds = time.time() - t0
    final = out_dir / "final"
    trainer.save_model(str(final))
    tok.save_pretrained(str(final))
    summary = {"model": model, "settings": asdict(settings), "rows": len(rows), "questions": len(records),
               "steps": trainer.state.global_step, "seconds": round(seconds, 1), "resumed_from": ckpt,
               "peak_memory_mib": peak_memory_mib(), "final": str(final)}
    atomic_write_json(out_dir / "sft_summary.json", summary)
    return summary
