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
from .io import atomic_write_json, read_log_jsonl
from .rules import RuleSet, load_rules


@dataclass(frozen=True)
class SFTSettings:
    epochs: float = 3.0  # paper (ablation table: SFT 3 epochs)
    include_original_cot: bool = True  # kit default: also train on (Q, R_T, A)
    rules: tuple[str, ...] = ()  # probes of these rules only (Table 4's single-rule SFT); empty: all rules
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
    bf16: bool | None = None  # None: see ``training_precision``


def training_precision(bf16: bool | None, device: str) -> tuple[str, bool]:
    """(weights dtype, mixed-precision flag for the trainer).

    ``None`` (kit default): bf16 weights with bf16 autocast on GPUs that support it; bf16 weights
    without autocast on CPUs with AVX512-BF16/AMX (about 1.5x faster training than float32 here, the
    LoRA adapter itself stays float32); float32 elsewhere. ``True``/``False`` force bf16/float32."""
    import torch

    from .models import cpu_has_fast_bf16

    if device == "cuda":
        use = torch.cuda.is_bf16_supported() if bf16 is None else bf16
        return ("bfloat16", True) if use else ("float32", False)
    use = cpu_has_fast_bf16() if bf16 is None else bf16
    return ("bfloat16", False) if use else ("float32", False)


def subsample_questions(records: Sequence[dict], fraction: float, seed: int) -> list[dict]:
    if not 0 < fraction <= 1:
        raise ValueError(f"data_fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return list(records)
    n = max(1, round(fraction * len(records)))
    keep = sorted(random.Random(f"fraction:{seed}").sample(range(len(records)), n))
    return [records[i] for i in keep]


def sft_rows(records: Sequence[dict], rules: RuleSet, *, include_original_cot: bool = True,
             only_rules: Sequence[str] = ()) -> list[dict]:
    """Prompt-completion rows (conversational): probe -> teacher response, and Q -> teacher CoT."""
    unknown = set(only_rules) - set(rules.ids)
    if unknown:
        raise ValueError(f"unknown rule(s) {sorted(unknown)}; known: {', '.join(rules.ids)}")
    rows = []
    for rec in records:
        for p in rec["probes"]:
            if only_rules and p["rule"] not in only_rules:
                continue
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


def run_cost(out_dir: Path, summary_name: str, seconds_this_call: float) -> dict:
    """``seconds`` and ``peak_memory_mib`` of a whole training in ``out_dir``, over resumed calls.

    Seconds: the log's cumulative wall time (``JsonlLogCallback`` carries it across resumes), or
    this call's time when that is larger (model saving is not logged). Peak memory: the larger of
    this call's and the one the previous summary recorded, so a call that only reloads a finished
    checkpoint does not replace the training's numbers with its own."""
    import json

    logged = max((float(r.get("wall_time_s", 0.0)) for r in read_log_jsonl(out_dir / "train_log.jsonl")), default=0.0)
    peak = peak_memory_mib()
    previous = out_dir / summary_name
    if previous.exists():
        try:
            peak = max(peak, float(json.loads(previous.read_text()).get("peak_memory_mib") or 0.0))
        except ValueError:
            pass
    return {"seconds": round(max(logged, seconds_this_call), 1), "peak_memory_mib": peak}


def trained_tokens(log_history: Sequence[dict]) -> int:
    """Tokens the trainer processed (TRL's cumulative ``num_tokens``: prompt and completion)."""
    return int(max((h.get("num_tokens", 0) for h in log_history), default=0))


def finished_run(out_dir: Path, summary_name: str, settings, **same) -> dict | None:
    """The summary of a finished run in ``out_dir`` with these settings (and ``same`` fields), else None.

    A rerun of a finished stage must not train again (resuming a trainer from its last checkpoint
    at max_steps still takes one more step)."""
    import json

    path = out_dir / summary_name
    if not (path.exists() and (out_dir / "final").exists()):
        return None
    summary = json.loads(path.read_text())
    want = json.loads(json.dumps(asdict(settings)))
    if summary.get("settings") != want or any(summary.get(k) != v for k, v in same.items()):
        return None
    return summary


def train_from(trainer, ckpt: str | None, max_steps: int) -> None:
    """``trainer.train``, resuming from ``ckpt``; a checkpoint already at the last step (a run killed
    between its last checkpoint and saving ``final``) is loaded instead of trained further."""
    import json

    if ckpt:
        state = json.loads((Path(ckpt) / "trainer_state.json").read_text())
        target = max_steps if max_steps > 0 else state.get("max_steps", 0)
        if target > 0 and state["global_step"] >= target:
            trainer._load_from_checkpoint(ckpt)
            trainer.state.global_step = state["global_step"]
            trainer.state.log_history = state.get("log_history", [])
            return
    trainer.train(resume_from_checkpoint=ckpt)


def last_checkpoint(out_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    ckpt_dir = out_dir / "checkpoints"
    return get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None


def subsample_rows(rows: Sequence[dict], fraction: float, seed: int) -> list[dict]:
    """Keep the rows of a seeded fraction of the questions (``question_id``), as for probe records."""
    qids = list(dict.fromkeys(r["question_id"] for r in rows))
    keep = {q["id"] for q in subsample_questions([{"id": q} for q in qids], fraction, seed)}
    return [r for r in rows if r["question_id"] in keep]


def train_sft(*, model: str, probe_records: Sequence[dict] | None = None, out_dir: str | Path,
              settings: SFTSettings = SFTSettings(), rules: RuleSet | None = None, resume: bool = True,
              rows: Sequence[dict] | None = None) -> dict:
    """Train and save ``out_dir/final`` (a LoRA adapter or a full model, loadable by ``models.load_model``).

    The data is either ``probe_records`` (the EI probe dataset: Eq. 3) or ready-made prompt-completion
    ``rows`` (the baselines); ``settings.data_fraction`` subsamples questions in both cases."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    from .models import default_device, load_model
    from .trainlog import JsonlLogCallback

    out_dir = Path(out_dir)
    rules = rules or load_rules()
    done = finished_run(out_dir, "sft_summary.json", settings, model=model) if resume else None
    if done:
        return done
    if (probe_records is None) == (rows is None):
        raise ValueError("give exactly one of probe_records and rows")
    if rows is None:
        records = subsample_questions(probe_records, settings.data_fraction, settings.seed)
        rows = sft_rows(records, rules, include_original_cot=settings.include_original_cot, only_rules=settings.rules)
        n_questions = len(records)
    else:
        rows = subsample_rows(rows, settings.data_fraction, settings.seed)
        n_questions = len({r["question_id"] for r in rows})
    if not rows:
        raise ValueError("no SFT rows (no kept questions, or no probes of the chosen rules)")
    device = default_device()
    dtype, bf16 = training_precision(settings.bf16, device)
    base, tok = load_model(model, dtype=dtype, device=device, for_training=True)
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
    train_from(trainer, ckpt, settings.max_steps)
    final = out_dir / "final"
    trainer.save_model(str(final))
    tok.save_pretrained(str(final))
    summary = {"model": model, "settings": asdict(settings), "rows": len(rows), "questions": n_questions,
               "steps": trainer.state.global_step, **run_cost(out_dir, "sft_summary.json", time.time() - t0),
               "resumed_from": ckpt, "train_tokens": trained_tokens(trainer.state.log_history), "final": str(final)}
    atomic_write_json(out_dir / "sft_summary.json", summary)
    return summary
