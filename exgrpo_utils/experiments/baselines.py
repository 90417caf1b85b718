"""Training data for the paper's SFT baselines (method.md section 6), through the same teachers.

Each baseline is SFT (``train.sft.train_sft``) on rows built here; only the data differs:

* ``skd``: SFT on the teacher's chain of thought for the original items (Q -> R_T, A);
* ``dss`` (Distilling Step-by-Step): two targets per item, the label (Q -> "The answer is A") and the
  rationale (rationale task prompt -> R_T), trained as one multi-task mixture;
* ``rephrase``: the original pair plus a teacher rephrasing of Q with the teacher's CoT for it;
* ``question_aug``: the original pair plus a new teacher-written question of the same kind, solved;
* ``answer_aug``: the original pair plus a second, sampled teacher CoT for Q (kept when correct);
* ``revthink``: forward reasoning (Q -> R_T), backward question (Q + answer -> backward question) and
  backward reasoning (backward question -> its reasoning), three targets per item.

``build_baseline_data`` asks a teacher (``teachers.ProgramTeacher`` for ``arith``, an LLM teacher
through the cached backend otherwise) for everything once and writes one record per item; the rows
for any baseline come from those records with ``baseline_rows``. Prompt wordings for the LLM
teacher are kit defaults (the paper gives none). On-Policy Distillation is not SFT: see
``experiments.methods.opd_status``.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..common.files import atomic_write_json, atomic_write_text, iter_jsonl
from ..common.fingerprint import file_digest
from ..common.paths import cache_dir
from ..data import answers, prompts, synthetic
from ..data.example import Example
from ..models.cache import CompletionCache
from ..models.generation import SamplingConfig
from ..teach.rules import load_rules
from ..teach.settings import TeacherSettings
from ..teach.teachers import build_teacher

BASELINES = ("skd", "dss", "rephrase", "question_aug", "answer_aug", "revthink")
LABELS = {"skd": "SKD", "dss": "Distilling Step-by-Step", "rephrase": "Rephrase Question",
          "question_aug": "Question Aug", "answer_aug": "Answer Aug", "revthink": "RevThink"}

# Kit-default task prompts (the training prompts of the baselines; evaluation always uses prompts.messages_for).
RATIONALE_TASK = "[rationale] Explain step by step how to answer the question, without stating the final answer.\n\n{question}"
BACKWARD_TASK = ("[backward question] Here is a question and its answer. Write the backward question: one that "
                 "states the answer as known and asks for a fact the original question gave.\n\n"
                 "Question: {question}\nAnswer: {answer}")

# Kit-default teacher prompts for LLM teachers.
REPHRASE_PROMPT = ("Rephrase the following question so that it asks exactly the same thing and has the same answer, "
                   "in different words. Keep every number and every answer choice. Reply with the rephrased "
                   "question only.\n\nQuestion: {question}")
QUESTION_AUG_PROMPT = ("Here is a question and its answer. Write one new question of the same kind and difficulty "
                       "with a different answer. Reply with the new question only.\n\nQuestion: {question}\nAnswer: {answer}")
ANSWER_AUG_TEMPERATURE = 0.7  # kit default: the second reasoning path is sampled


def _clean_question(text: str) -> str | None:
    body = text.rsplit("Question:", 1)[-1].strip().strip('"').strip()
    return body or None


def label_text(item: Example) -> str:
    return f"The answer is {item.answer}."


def rationale_of(cot: str) -> str:
    """The teacher CoT without its closing answer sentence (Distilling Step-by-Step's rationale)."""
    lines = [ln for ln in cot.strip().splitlines() if not re.match(r"\s*the answer is", ln, re.I)]
    return "\n".join(lines).strip() or cot.strip()


# ---------------------------------------------------------------------------------------------
# Teachers: the augmentation calls

class ProgramAugmenter:
    """Exact augmentations for ``arith`` items from their step program (no model)."""

    name = "program"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def _program(self, ex: Example) -> synthetic.Program:
        meta = ex.meta or {}
        if "steps" not in meta:
            raise ValueError(f"{ex.id}: the program teacher needs an arith item with its step program in meta")
        return synthetic.Program(meta["name"], meta["item"], meta["start"], tuple((s["op"], s["operand"]) for s in meta["steps"]))

    def rephrase(self, ex: Example) -> tuple[str, str]:
        p = self._program(ex)
        pr = synthetic.pronoun(p.name)
        words = {"add": "After that, {p} receives {n} extra {i}.", "sub": "Next, {p} hands {n} of the {i} to a friend.",
                 "mul": "Then {p} ends up with {n} times as many {i} as before.",
                 "div": "Then {p} shares the {i} equally among {n} groups and holds on to one group."}
        text = " ".join([f"At first, {p.name} owns {p.start} {p.item}."] +
                        [words[o].format(p=pr, n=n, i=p.item) for o, n in p.steps] +
                        [f"How many {p.item} does {p.name} own at the end?"])
        return text, synthetic.forward_rationale(p)

    def new_question(self, ex: Example) -> tuple[str, str, str]:
        rng = random.Random(f"question-aug:{self.seed}:{ex.id}")
        meta = ex.meta or {}
        n_steps = len(meta.get("steps", [])) or 2
        while True:
            p = synthetic.random_program(rng, n_steps, n_steps, 30, 200)
            if not p.in_test():  # never train on a test program
                return synthetic.forward_text(p), synthetic.forward_rationale(p), str(p.values[-1])

    def alternative_cot(self, ex: Example) -> str:
        p = self._program(ex)
        vals = p.values
        expr = str(p.start)
        for o, n in p.steps:
            expr = f"({expr} {synthetic.SYMBOL[o]} {n})"
        lines = [f"Write the whole story as one expression: {expr[1:-1] if len(p.steps) == 1 else expr}.",
                 "Work from the innermost bracket outwards."]
        lines += [f"{vals[k]} {synthetic.SYMBOL[o]} {n} gives {vals[k + 1]}." for k, (o, n) in enumerate(p.steps)]
        lines.append(f"The answer is {vals[-1]}.")
        return "\n".join(lines)

    def backward(self, ex: Example) -> tuple[str, str]:
        p = self._program(ex)
        return synthetic.reverse_text(p), synthetic.reverse_rationale(p)


class LLMAugmenter:
    """The same calls through a chat backend (normally a ``CachedBackend``: reruns cost nothing)."""

    def __init__(self, chat, *, max_new_tokens: int = 1024):
        self.chat = chat
        self.name = f"{chat.kind}:{chat.model}"
        self.greedy = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
        self.sampled = SamplingConfig(max_new_tokens=max_new_tokens, temperature=ANSWER_AUG_TEMPERATURE)

    def _ask(self, batch: list[list[dict]], sampling) -> list[str]:
        return [c.text for c in self.chat.complete(batch, sampling)]

    def batch(self, items: Sequence[Example], cots: Sequence[str]) -> list[dict]:
        user = lambda text: [{"role": "user", "content": text}]
        reph = [_clean_question(t) for t in self._ask([user(REPHRASE_PROMPT.format(question=ex.question)) for ex in items], self.greedy)]
        newq = [_clean_question(t) for t in self._ask([user(QUESTION_AUG_PROMPT.format(question=ex.question, answer=ex.answer))
                                                        for ex in items], self.greedy)]
        backq = [_clean_question(t) for t in self._ask([user(BACKWARD_TASK.split("\n\n", 1)[1].format(question=ex.question, answer=ex.answer))
                                                         for ex in items], self.greedy)]
        # teacher CoTs for the rephrased, new and backward questions; a second sampled CoT for Q itself
        variants = lambda qs: [Example(f"{ex.id}:v", ex.dataset, q or ex.question, ex.answer, ex.choices) for ex, q in zip(items, qs)]
        reph_cot = self._ask([prompts.messages_for(v) for v in variants(reph)], self.greedy)
        newq_cot = self._ask([prompts.messages_for(Example(f"{ex.id}:n", ex.dataset, q or ex.question, "", None, meta={"answer_type": answers.answer_type(ex)}))
                              for ex, q in zip(items, newq)], self.greedy)
        back_cot = self._ask([prompts.messages_for(Example(f"{ex.id}:b", ex.dataset, q or "", "", None, meta={"answer_type": "text"}))
                              for ex, q in zip(items, backq)], self.greedy)
        alt_cot = self._ask([prompts.messages_for(ex) for ex in items], self.sampled)
        out = []
        for i, ex in enumerate(items):
            out.append({
                "rephrased": ({"question": reph[i], "cot": reph_cot[i]} if reph[i] and answers.is_correct(ex, reph_cot[i]) else None),
                "new_question": ({"question": newq[i], "cot": newq_cot[i]} if newq[i] else None),
                "alt_cot": alt_cot[i] if answers.is_correct(ex, alt_cot[i]) else None,
                "backward": ({"question": backq[i], "cot": back_cot[i]} if backq[i] else None),
            })
        return out


def build_baseline_data(items: Sequence[Example], cots: Sequence[str], augmenter, out_path: str | Path) -> list[dict]:
    """One record per item: the item, the teacher CoT and every augmentation (None when not kept)."""
    if isinstance(augmenter, ProgramAugmenter):
        extra = []
        for ex in items:
            rq, rc = augmenter.rephrase(ex)
            nq, nc, na = augmenter.new_question(ex)
            bq, bc = augmenter.backward(ex)
            extra.append({"rephrased": {"question": rq, "cot": rc}, "new_question": {"question": nq, "cot": nc, "answer": na},
                          "alt_cot": augmenter.alternative_cot(ex), "backward": {"question": bq, "cot": bc}})
    else:
        extra = augmenter.batch(items, cots)
    records = [{"id": ex.id, "dataset": ex.dataset, "item": ex.to_dict(), "teacher_cot": cot, **more}
               for ex, cot, more in zip(items, cots, extra)]

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_path, "".join(json.dumps(r) + "\n" for r in records))
    return records


def load_baseline_data(path: str | Path) -> list[dict]:
    records = []
    for line, rec in iter_jsonl(path):
        for key in ("id", "item", "teacher_cot"):
            if key not in rec:
                raise ValueError(f"{path}: line {line}: missing field {key!r}")
        records.append(rec)
    return records


def _row(prompt_msgs: list[dict], target: str, source: str, qid: str) -> dict:
    return {"prompt": prompt_msgs, "completion": [{"role": "assistant", "content": target}], "source": source, "question_id": qid}


def baseline_rows(records: Sequence[dict], baseline: str) -> list[dict]:
    """SFT prompt-completion rows of one baseline (see the module docstring)."""
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; known: {', '.join(BASELINES)}")
    user = lambda text: [{"role": "user", "content": text}]
    rows = []
    for rec in records:
        item, cot, qid = Example.from_dict(rec["item"]), rec["teacher_cot"], rec["id"]
        if baseline == "dss":
            rows.append(_row(prompts.messages_for(item), label_text(item), "label", qid))
            rows.append(_row(user(RATIONALE_TASK.format(question=item.question)), rationale_of(cot), "rationale", qid))
            continue
        rows.append(_row(prompts.messages_for(item), cot, "original", qid))
        if baseline == "rephrase" and rec.get("rephrased"):
            q = Example(f"{qid}:r", item.dataset, rec["rephrased"]["question"], item.answer, item.choices)
            rows.append(_row(prompts.messages_for(q), rec["rephrased"]["cot"], "rephrased", qid))
        elif baseline == "question_aug" and rec.get("new_question"):
            q = Example(f"{qid}:n", item.dataset, rec["new_question"]["question"], rec["new_question"].get("answer", ""), None,
                        meta={"answer_type": answers.answer_type(item)})
            rows.append(_row(prompts.messages_for(q), rec["new_question"]["cot"], "new_question", qid))
        elif baseline == "answer_aug" and rec.get("alt_cot"):
            rows.append(_row(prompts.messages_for(item), rec["alt_cot"], "alt_cot", qid))
        elif baseline == "revthink" and rec.get("backward"):
            rows.append(_row(user(BACKWARD_TASK.format(question=item.question, answer=item.answer)),
                             rec["backward"]["question"], "backward_question", qid))
            back = Example(f"{qid}:b", item.dataset, rec["backward"]["question"], "", None,
                           meta={"answer_type": "number" if item.dataset.startswith("arith") else "text"})
            rows.append(_row(prompts.messages_for(back), rec["backward"]["cot"], "backward_reasoning", qid))
    return rows


def prepare_baseline_data(ei_records_path: str | Path, out_path: str | Path, *,
                          teacher: TeacherSettings = TeacherSettings(), cache_path: str = "") -> list[dict]:
    """Baseline data for the items of an EI run (``ei_records.jsonl``: same items, same teacher CoTs).

    Items whose teacher CoT was wrong are left out, as in the EI pipeline. An existing file made by
    the same teacher is reused; LLM teacher calls go through the completion cache, so a rerun after an
    interruption pays only for what it had not received."""

    out_path = Path(out_path)
    meta_path = out_path.with_suffix(".teacher.json")
    ident = {"teacher": teacher.teacher, "teacher_model": teacher.teacher_model, "teacher_base_url": teacher.teacher_base_url,
             "teacher_max_new_tokens": teacher.teacher_max_new_tokens, "source": Path(ei_records_path).name,
             "source_digest": file_digest(ei_records_path)}  # other EI items: the data is made again, never reused
    if out_path.exists() and meta_path.exists() and json.loads(meta_path.read_text()) == ident:
        return load_baseline_data(out_path)
    items, cots = [], []
    for line, rec in iter_jsonl(ei_records_path):
        if "item" not in rec or "teacher_cot" not in rec:
            raise ValueError(f"{ei_records_path}: line {line}: not an EI record (needs 'item' and 'teacher_cot')")
        if rec.get("teacher_correct"):
            items.append(Example.from_dict(rec["item"]))
            cots.append(rec["teacher_cot"])
    if not items:
        raise ValueError(f"{ei_records_path}: no item with a correct teacher CoT")
    if teacher.teacher == "program":
        augmenter = ProgramAugmenter()
    else:
        cache = CompletionCache(cache_path or cache_dir() / "completions.sqlite")
        t = build_teacher(teacher.teacher, load_rules(), model=teacher.teacher_model, base_url=teacher.teacher_base_url,
                          api_key_env=teacher.teacher_api_key_env, max_in_flight=teacher.teacher_max_in_flight,
                          max_new_tokens=teacher.teacher_max_new_tokens, cache=cache)
        augmenter = LLMAugmenter(t.chat, max_new_tokens=teacher.teacher_max_new_tokens)
    records = build_baseline_data(items, cots, augmenter, out_path)

    atomic_write_json(meta_path, ident)
    return records


def data_stats(records: Sequence[dict]):
    """Rows per baseline and how many items each augmentation kept (a table for notebook 05)."""

    rows = []
    for b in BASELINES:
        r = baseline_rows(records, b)
        rows.append({"baseline": b, "label": LABELS[b], "items": len(records), "rows": len(r),
                     "rows_per_item": round(len(r) / max(1, len(records)), 2)})
    return pd.DataFrame(rows)
