"""Stage 2 (method.md section 3): SFT warm-up on the probe dataset (Eq. 3), with TRL's SFTTrainer.

Eq. 3 is next-token loss on the teacher's full response (reasoning and answer) given the probe:
each training row is a prompt-completion pair, so TRL computes the loss on the completion only.
The original (Q, R_T, A) pairs are included too (kit default; a flag). LoRA r = 32, alpha = 64
(kit default) or full fine-tuning; 3 epochs (paper). ``data_fraction`` keeps a seeded fraction of
the questions (the data-efficiency study). Checkpoints are saved as training goes; a rerun resumes
from the last one and continues the same log (``train.loop.train_and_save``, shared by every trainer).
Settings: ``settings.SFTSettings``.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

from ..data import prompts
from ..data.example import Example
from ..infra.fingerprint import digest
from ..models.registry import default_device, load_model
from ..teach.rules import RuleSet, load_rules
from .loop import Built, NoTrainingData, lora_config, train_and_save, training_precision
from .settings import SFTSettings

SUMMARY_NAME = "sft_summary.json"  # the summary a finished training writes beside final/

# datasets, trl are imported inside the functions that use them (heavy, or needed only on some paths).


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


def subsample_rows(rows: Sequence[dict], fraction: float, seed: int) -> list[dict]:
    """Keep the rows of a seeded fraction of the questions (``question_id``), as for probe records."""
    qids = list(dict.fromkeys(r["question_id"] for r in rows))
    keep = {q["id"] for q in subsample_questions([{"id": q} for q in qids], fraction, seed)}
    return [r for r in rows if r["question_id"] in keep]


def train_sft(*, model: str, probe_records: Sequence[dict] | None = None, out_dir: str | Path,
              settings: SFTSettings = SFTSettings(), rules: RuleSet | None = None, resume: bool = True,
              rows: Sequence[dict] | None = None, data_name: str = "", report_to: Sequence[str] = (),
              fresh: bool = False) -> dict:
    """Train and save ``out_dir/final`` (a LoRA adapter or a full model, loadable by ``load_model``).

    The data is either ``probe_records`` (the EI probe dataset: Eq. 3) or ready-made prompt-completion
    ``rows`` (the baselines); ``settings.data_fraction`` subsamples questions in both cases. The summary
    names the data as ``data``: ``data_name`` (a baseline's name for its rows), by default "ei" for
    probe records and "rows" for rows."""
    out_dir = Path(out_dir)
    if (probe_records is None) == (rows is None):
        raise ValueError("give exactly one of probe_records and rows")
    data_name = data_name or ("ei" if rows is None else "rows")
    rules = rules or load_rules()
    data = digest({"probe_records": probe_records, "rules": rules.content, "prompt": prompts.PROMPT_VERSION}
                  if rows is None else {"rows": rows})

    def build() -> Built:
        import datasets
        from trl import SFTConfig

        from .lm_head import ScoredSFTTrainer

        if rows is None:
            records = subsample_questions(probe_records, settings.data_fraction, settings.seed)
            train_rows = sft_rows(records, rules, include_original_cot=settings.include_original_cot,
                                  only_rules=settings.rules)
            n_questions = len(records)
        else:
            train_rows = subsample_rows(rows, settings.data_fraction, settings.seed)
            n_questions = len({r["question_id"] for r in train_rows})
        if not train_rows:
            raise NoTrainingData("no SFT rows (no kept questions, or no probes of the chosen rules)")
        device = default_device()
        dtype, bf16 = training_precision(settings.bf16, device)
        base, tok = load_model(model, dtype=dtype, device=device, for_training=True)
        tok.padding_side = "right"  # training pads on the right; generation code sets left itself
        config = SFTConfig(
            output_dir=str(out_dir / "checkpoints"), num_train_epochs=settings.epochs, max_steps=settings.max_steps,
            per_device_train_batch_size=settings.batch_size,
            gradient_accumulation_steps=settings.gradient_accumulation_steps, learning_rate=settings.learning_rate,
            lr_scheduler_type="cosine", warmup_steps=0.03, weight_decay=0.0, max_length=settings.max_length,
            train_sampling_strategy="group_by_length" if settings.group_by_length else "random",
            packing=False, completion_only_loss=True, loss_type="nll", logging_steps=settings.logging_steps,
            save_steps=settings.save_steps, save_total_limit=2, seed=settings.seed, data_seed=settings.seed, bf16=bf16,
            use_cpu=device == "cpu", gradient_checkpointing=False, report_to="none", dataloader_num_workers=0,
            disable_tqdm=False)
        peft = lora_config(settings.lora_r, settings.lora_alpha, settings.lora_dropout) if settings.lora else None
        trainer = ScoredSFTTrainer(model=base, args=config, train_dataset=datasets.Dataset.from_list(train_rows),
                                   processing_class=tok, peft_config=peft)
        return Built(trainer, tok, {"rows": len(train_rows), "questions": n_questions, "data": data_name})

    return train_and_save(out_dir=out_dir, summary_name=SUMMARY_NAME, settings=settings, identity={"model": model},
                          data=data, max_steps=settings.max_steps, build=build, resume=resume, report_to=report_to,
                          fresh=fresh)
