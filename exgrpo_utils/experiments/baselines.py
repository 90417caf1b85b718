"""Training rows of the paper's SFT baselines (method.md section 6) from their teacher data.

Each baseline is SFT (``train.sft.train_sft``) on rows built here; only the data differs:

* ``skd``: SFT on the teacher's chain of thought for the original items (Q -> R_T, A);
* ``dss`` (Distilling Step-by-Step): two targets per item, the label (Q -> "The answer is A") and the
  rationale (rationale task prompt -> R_T), trained as one multi-task mixture;
* ``rephrase``: the original pair plus a teacher rephrasing of Q with the teacher's CoT for it;
* ``question_aug``: the original pair plus a new teacher-written question of the same kind, solved;
* ``answer_aug``: the original pair plus a second, sampled teacher CoT for Q (kept when correct);
* ``revthink`` (RevThink, Chen et al. 2024): three targets per item, forward reasoning (Q -> R_T),
  backward question (Q -> backward question: the question alone, never its answer) and backward
  reasoning (backward question -> its reasoning);
* ``divide_conquer`` (Divide-or-Conquer, Wu et al. 2024): the teacher decomposes Q into sub-questions
  and answers them; the student is trained on Q -> "the sub-questions, then their answers and the
  final answer" (see :func:`decomposition_target`).

The teacher data (one record per item: the kept augmentations and, in ``dropped``, why the others
failed their checks) is written by ``teach.baseline_data.prepare_baseline_data``; ``baseline_rows``
turns it into any baseline's rows and ``data_stats`` counts rows, kept and dropped augmentations.
The training prompts below are kit defaults (the paper gives none). On-Policy Distillation is not
SFT: see ``experiments.methods.opd_status``.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

import pandas as pd

from ..data import prompts
from ..data.example import Example
from ..teach.baseline_checks import new_question_example

BASELINES = ("skd", "dss", "rephrase", "question_aug", "answer_aug", "revthink", "divide_conquer")
LABELS = {"skd": "SKD", "dss": "Distilling Step-by-Step", "rephrase": "Rephrase Question",
          "question_aug": "Question Aug", "answer_aug": "Answer Aug", "revthink": "RevThink",
          "divide_conquer": "Divide-or-Conquer"}
# The record field each augmenting baseline adds to the original pair (skd and dss add none).
AUGMENTATION = {"rephrase": "rephrased", "question_aug": "new_question", "answer_aug": "alt_cot",
                "revthink": "backward", "divide_conquer": "decomposition"}

# Kit-default task prompts (the training prompts of the baselines; evaluation always uses prompts.messages_for).
RATIONALE_TASK = "[rationale] Explain step by step how to answer the question, without stating the final answer.\n\n{question}"
BACKWARD_TASK = ("[backward question] Write the backward question of this question: one that takes its answer as "
                 "known and asks for a fact the question gives.\n\n{question}")  # RevThink: Q -> backward question
DECOMPOSITION_TARGET = "Sub-questions:\n{subquestions}\n\nAnswers:\n{solution}"  # Divide-or-Conquer's student target


def label_text(item: Example) -> str:
    return f"The answer is {item.answer}."


def rationale_of(cot: str) -> str:
    """The teacher CoT without its closing answer sentence (Distilling Step-by-Step's rationale)."""
    lines = [ln for ln in cot.strip().splitlines() if not re.match(r"\s*the answer is", ln, re.I)]
    return "\n".join(lines).strip() or cot.strip()


def decomposition_target(decomposition: dict) -> str:
    """Divide-or-Conquer's student target: the numbered sub-questions, then the numbered answers and the
    final answer (``DECOMPOSITION_TARGET``, kit default wording)."""
    subs = "\n".join(f"{k}. {q}" for k, q in enumerate(decomposition["subquestions"], 1))
    return DECOMPOSITION_TARGET.format(subquestions=subs, solution=decomposition["solution"].strip())


def _row(prompt_msgs: list[dict], target: str, source: str, qid: str) -> dict:
    return {"prompt": prompt_msgs, "completion": [{"role": "assistant", "content": target}], "source": source, "question_id": qid}


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# One item's rows per baseline: (item, its baseline data record) -> rows.

def _original(item: Example, rec: dict) -> list[dict]:
    """SKD's row, and the first row of every augmenting baseline: Q -> the teacher's CoT."""
    return [_row(prompts.messages_for(item), rec["teacher_cot"], "original", rec["id"])]


def _dss(item: Example, rec: dict) -> list[dict]:
    """The label and the rationale as two tasks (no original pair)."""
    return [_row(prompts.messages_for(item), label_text(item), "label", rec["id"]),
            _row(_user(RATIONALE_TASK.format(question=item.question)), rationale_of(rec["teacher_cot"]), "rationale",
                 rec["id"])]


def _rephrase(item: Example, rec: dict) -> list[dict]:
    rows = _original(item, rec)
    if rec.get("rephrased"):
        q = Example(f"{rec['id']}:r", item.dataset, rec["rephrased"]["question"], item.answer, item.choices)
        rows.append(_row(prompts.messages_for(q), rec["rephrased"]["cot"], "rephrased", rec["id"]))
    return rows


def _question_aug(item: Example, rec: dict) -> list[dict]:
    rows = _original(item, rec)
    if rec.get("new_question"):
        q = new_question_example(item, rec["new_question"]["question"], rec["new_question"].get("answer", ""))
        rows.append(_row(prompts.messages_for(q), rec["new_question"]["cot"], "new_question", rec["id"]))
    return rows


def _answer_aug(item: Example, rec: dict) -> list[dict]:
    rows = _original(item, rec)
    if rec.get("alt_cot"):
        rows.append(_row(prompts.messages_for(item), rec["alt_cot"], "alt_cot", rec["id"]))
    return rows


def _revthink(item: Example, rec: dict) -> list[dict]:
    """Forward reasoning, then Q -> backward question and backward question -> its reasoning."""
    rows, b, qid = _original(item, rec), rec.get("backward"), rec["id"]
    if b:
        kind = b.get("answer_type") or ("number" if item.dataset.startswith("arith") else "text")
        back = Example(f"{qid}:b", item.dataset, b["question"], b.get("answer", ""), None, meta={"answer_type": kind})
        rows += [_row(_user(BACKWARD_TASK.format(question=item.question)), b["question"], "backward_question", qid),
                 _row(prompts.messages_for(back), b["cot"], "backward_reasoning", qid)]
    return rows


def _divide_conquer(item: Example, rec: dict) -> list[dict]:
    """Q -> :func:`decomposition_target` (no original pair); none when the decomposition was dropped."""
    if not rec.get("decomposition"):
        return []
    return [_row(prompts.messages_for(item), decomposition_target(rec["decomposition"]), "decomposition", rec["id"])]


ITEM_ROWS = {"skd": _original, "dss": _dss, "rephrase": _rephrase, "question_aug": _question_aug,
             "answer_aug": _answer_aug, "revthink": _revthink, "divide_conquer": _divide_conquer}


def baseline_rows(records: Sequence[dict], baseline: str, *, fallback_original: bool = True) -> list[dict]:
    """SFT prompt-completion rows of one baseline (see the module docstring), item by item.

    ``divide_conquer`` trains one row per item, the evaluation prompt -> :func:`decomposition_target`;
    an item whose decomposition was dropped trains on its original CoT instead when
    ``fallback_original`` (kit default: every baseline trains on every item)."""
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; known: {', '.join(BASELINES)}")
    rows = []
    for rec in records:
        item = Example.from_dict(rec["item"])
        rows += ITEM_ROWS[baseline](item, rec) or (_original(item, rec) if fallback_original else [])
    return rows


def fallback_note(records: Sequence[dict], baseline: str) -> str:
    """What a table must say when a baseline trained on SKD's rows for some or all of its items
    (its augmentation was dropped by its check, or never written): '' when every item has its own."""
    field = AUGMENTATION.get(baseline)
    missing = sum(not rec.get(field) for rec in records) if field else 0
    if not missing:
        return ""
    if missing == len(records):
        return f"no item kept its {field}: trained on exactly SKD's rows"
    return f"{missing} of {len(records)} items kept no {field}: SKD's rows for them"


def data_stats(records: Sequence[dict]):
    """Rows per baseline, and per augmentation how many items kept it and how many had it dropped by
    its check, with the reasons (a table for notebook 05)."""

    rows = []
    for b in BASELINES:
        r = baseline_rows(records, b)
        field = AUGMENTATION.get(b, "")
        reasons = Counter((rec.get("dropped") or {}).get(field) for rec in records) if field else Counter()
        reasons.pop(None, None)
        rows.append({"baseline": b, "label": LABELS[b], "items": len(records), "rows": len(r),
                     "rows_per_item": round(len(r) / max(1, len(records)), 2), "augmentation": field,
                     "kept": sum(bool(rec.get(field)) for rec in records) if field else 0,
                     "dropped": sum(reasons.values()),
                     "drop_reasons": "; ".join(f"{k}: {v}" for k, v in reasons.most_common())})
    return pd.DataFrame(rows)
