"""Training data for the paper's SFT baselines (method.md section 6), through the same teachers.

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

``build_baseline_data`` asks a teacher (``ProgramAugmenter`` for ``arith``, an LLM teacher through
the cached backend otherwise, ``LLMAugmenter``) for every augmentation once, checks each one
(:func:`check_candidates`, the same checks on both paths) and writes one record per item: the kept
augmentations, and in ``dropped`` the reason for each one that failed its check (``data_stats`` counts
them). The rows for any baseline come from those records with ``baseline_rows``. Prompt wordings for
the LLM teacher and the checks on teacher-written questions are kit defaults (the paper gives none).
On-Policy Distillation is not SFT: see ``experiments.methods.opd_status``.
"""
from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..common.files import atomic_write_json, atomic_write_text, iter_jsonl
from ..common.fingerprint import file_digest
from ..common.paths import cache_dir
from ..data import answers, prompts, synthetic
from ..data.example import LETTERS, Example
from ..models.cache import CompletionCache
from ..models.generation import SamplingConfig
from ..teach.rules import load_rules
from ..teach.settings import TeacherSettings
from ..teach.teachers import endpoint, teacher_session

BASELINES = ("skd", "dss", "rephrase", "question_aug", "answer_aug", "revthink", "divide_conquer")
LABELS = {"skd": "SKD", "dss": "Distilling Step-by-Step", "rephrase": "Rephrase Question",
          "question_aug": "Question Aug", "answer_aug": "Answer Aug", "revthink": "RevThink",
          "divide_conquer": "Divide-or-Conquer"}
# The record field each augmenting baseline adds to the original pair (skd and dss add none).
AUGMENTATION = {"rephrase": "rephrased", "question_aug": "new_question", "answer_aug": "alt_cot",
                "revthink": "backward", "divide_conquer": "decomposition"}
DATA_VERSION = 2  # part of the data's identity: bump when the record layout or the checks change

# Kit-default task prompts (the training prompts of the baselines; evaluation always uses prompts.messages_for).
RATIONALE_TASK = "[rationale] Explain step by step how to answer the question, without stating the final answer.\n\n{question}"
BACKWARD_TASK = ("[backward question] Write the backward question of this question: one that takes its answer as "
                 "known and asks for a fact the question gives.\n\n{question}")  # RevThink: Q -> backward question
DECOMPOSITION_TARGET = "Sub-questions:\n{subquestions}\n\nAnswers:\n{solution}"  # Divide-or-Conquer's student target

# Kit-default teacher prompts for LLM teachers.
REPHRASE_PROMPT = ("Rephrase the following question so that it asks exactly the same thing and has the same answer, "
                   "in different words. Keep every number and every answer choice. Reply with the rephrased "
                   "question only.\n\nQuestion: {question}")
QUESTION_AUG_PROMPT = ("Here is a question and its answer. Write one new question of the same kind and difficulty "
                       "with a different answer. Reply with the new question only.\n\nQuestion: {question}\nAnswer: {answer}")
BACKWARD_PROMPT = ("Here is a question and its answer. Write the backward question: one that states this answer as "
                   "known and asks for one fact that the question gives (a number, a name, a condition). Then give "
                   "the value the backward question asks for, as the question gives it. Reply in this form:\n"
                   "Backward question: ...\nAnswer: ...\n\nQuestion: {question}\nAnswer: {answer}")
DECOMPOSE_PROMPT = ("Break the following question into the sub-questions that have to be answered, in order, to "
                    "solve it; the last sub-question asks for what the question asks. Do not answer them. Reply "
                    "with the numbered sub-questions only, one per line (1., 2., ...).\n\nQuestion: {question}")
SOLVE_PROMPT = ("{question}\n\nSub-questions:\n{subquestions}\n\nAnswer the sub-questions in order, each on a "
                "numbered line of its own (1., 2., ...), using the earlier answers; then answer the question. "
                "{instruction}")
ANSWER_AUG_TEMPERATURE = 0.7  # kit default: the second reasoning path is sampled (also Question Aug's second solution)

# Drop reasons (``dropped`` in a record; ``data_stats`` counts them).
EMPTY = "empty or unparseable teacher output"
RESTATED = "restates the original question"
WRONG = "wrong answer"
NO_FORMAT_ANSWER = "no answer in the requested format"
DISAGREE = "the two teacher solutions disagree"
NO_VALUE = "no asked-for value stated"
BACKWARD_MISMATCH = "backward answer does not match the asked-for value"
ANSWER_NOT_STATED = "backward question does not state the answer"
VALUE_NOT_GIVEN = "asked-for value is not in the question"
UNANSWERED = "a sub-question is not answered"


def _clean_question(text: str) -> str | None:
    body = text.rsplit("Question:", 1)[-1].strip().strip('"').strip()
    return body or None


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text or "").strip().lower()


def _answer_text(item: Example) -> str:
    """The gold answer as the teacher should read it: a letter with its option's text."""
    if item.choices and len(item.answer) == 1 and item.answer in LETTERS[: len(item.choices)]:
        return f"({item.answer}) {item.choices[LETTERS.index(item.answer)]}"
    return item.answer


def label_text(item: Example) -> str:
    return f"The answer is {item.answer}."


def rationale_of(cot: str) -> str:
    """The teacher CoT without its closing answer sentence (Distilling Step-by-Step's rationale)."""
    lines = [ln for ln in cot.strip().splitlines() if not re.match(r"\s*the answer is", ln, re.I)]
    return "\n".join(lines).strip() or cot.strip()


_NUMBERED = re.compile(r"^[ \t*]*(?:sub-?question[ \t]*)?(\d+)[.):][ \t*]+(\S.*)", re.I | re.M)


def numbered_lines(text: str) -> dict[int, str]:
    """The text of each numbered line ("1. ...", "2) ...", "Sub-question 3: ..."), first occurrence per number."""
    out: dict[int, str] = {}
    for m in _NUMBERED.finditer(text or ""):
        out.setdefault(int(m.group(1)), m.group(2).strip())
    return out


def parse_subquestions(text: str) -> list[str] | None:
    """The teacher's decomposition: numbered lines 1, 2, ... in order (None when there is none)."""
    found = numbered_lines(text)
    subs = []
    while len(subs) + 1 in found:
        subs.append(found[len(subs) + 1])
    return subs or None


def parse_backward(text: str) -> tuple[str | None, str | None]:
    """(backward question, the value it asks for) from a reply to ``BACKWARD_PROMPT``; None where missing."""
    text = text or ""
    heads = list(re.finditer(r"backward question[ \t*]*:", text, re.I))
    if not heads:
        return None, None
    body = text[heads[-1].end():]
    parts = re.split(r"(?im)^[ \t*]*answer[ \t*]*:", body, maxsplit=1)
    question = parts[0].strip().strip('*"').strip() or None
    value = None
    if len(parts) == 2 and parts[1].strip():
        value = parts[1].strip().strip("*").strip().splitlines()[0].strip().strip('*"').strip().rstrip(".").strip() or None
    return question, value


def backward_example(item: Example, question: str, value: str, qid: str = "") -> Example:
    """The backward question as a scorable item whose gold is the value it asks for. Its answer type
    is a number or yes/no when the value is one, free text otherwise (kit default)."""
    kind = answers.infer_answer_type(value)
    kind = kind if kind in ("number", "yesno") else "text"
    return Example(f"{qid or item.id}:b", item.dataset, question, value, None, meta={"answer_type": kind})


def _new_question_example(item: Example, question: str, answer: str = "") -> Example:
    """A teacher-written question of the item's kind (its options, if any, are in its text)."""
    return Example(f"{item.id}:n", item.dataset, question, answer, None,
                   meta={"answer_type": answers.answer_type(item), "n_options": len(item.choices or ())})


def solve_prompt(item: Example, subquestions: Sequence[str]) -> str:
    """The teacher prompt that answers a decomposition's sub-questions, then the question (``SOLVE_PROMPT``)."""
    subs = "\n".join(f"{k}. {q}" for k, q in enumerate(subquestions, 1))
    instruction = prompts.INSTRUCTIONS[answers.answer_type(item)]
    return SOLVE_PROMPT.format(question=item.question, subquestions=subs, instruction=instruction)


def decomposition_target(decomposition: dict) -> str:
    """Divide-or-Conquer's student target: the numbered sub-questions, then the numbered answers and the
    final answer (``DECOMPOSITION_TARGET``, kit default wording)."""
    subs = "\n".join(f"{k}. {q}" for k, q in enumerate(decomposition["subquestions"], 1))
    return DECOMPOSITION_TARGET.format(subquestions=subs, solution=decomposition["solution"].strip())


# ---------------------------------------------------------------------------------------------
# Checks: what each augmentation must pass to be kept (both teacher paths)

def backward_consistency(item: Example, backward: dict | None) -> str | None:
    """RevThink's teacher consistency check: None when the backward question is consistent with the
    original question, else the reason it is dropped.

    ``backward`` holds the backward question (``question``), the value of the original question it
    asks for as the teacher stated it (``answer``) and the teacher's own reasoning for the backward
    question (``cot``). Checks, in order: the question and the value are there and the question is
    not the original one; the teacher's answer to the backward question (``answers.extract``,
    flexible) matches the value it asks for (``answers.matches`` on :func:`backward_example`); and,
    where they are numbers (kit default, exact and cheap), the backward question states the original
    answer and the value asked for is one of the numbers the original question gives.
    """
    if not backward or not backward.get("question") or not backward.get("cot"):
        return EMPTY
    if not backward.get("answer"):
        return NO_VALUE
    if _norm(backward["question"]) == _norm(item.question):
        return RESTATED
    back = backward_example(item, backward["question"], backward["answer"])
    if not answers.matches(back, answers.extract(back, backward["cot"])):
        return BACKWARD_MISMATCH
    if answers.answer_type(item) == "number" and not any(
            answers.numbers_equal(n, item.answer) for n in answers.number_spans(backward["question"])):
        return ANSWER_NOT_STATED
    if answers.answer_type(back) == "number" and not any(
            answers.numbers_equal(n, back.answer) for n in answers.number_spans(item.question)):
        return VALUE_NOT_GIVEN
    return None


def new_question_check(item: Example, new: dict | None) -> tuple[str | None, str | None]:
    """Question Aug: (the new question's answer, None) when kept, else (None, reason).

    A teacher-written question has no gold. With an exact answer (the program teacher) the CoT must
    reach it. Otherwise (kit default) the teacher solves the question twice, greedily (``cot``) and
    sampled at ``ANSWER_AUG_TEMPERATURE`` (``cot2``): the greedy CoT must state its answer in the
    format the original item's answer type asks for (``answers.extract``, strict), and the sampled
    CoT's answer (flexible) must match it (``answers.matches``). That answer becomes the new gold.
    """
    if not new or not new.get("question") or not new.get("cot"):
        return None, EMPTY
    if _norm(new["question"]) == _norm(item.question):
        return None, RESTATED
    if new.get("answer"):
        ex = _new_question_example(item, new["question"], new["answer"])
        return (new["answer"], None) if answers.is_correct(ex, new["cot"]) else (None, WRONG)
    first = answers.extract(_new_question_example(item, new["question"]), new["cot"], "strict")
    if first is None:
        return None, NO_FORMAT_ANSWER
    ex = _new_question_example(item, new["question"], first)
    if not new.get("cot2") or not answers.matches(ex, answers.extract(ex, new["cot2"])):
        return None, DISAGREE
    return first, None


def decomposition_check(item: Example, decomposition: dict | None) -> str | None:
    """Divide-or-Conquer: None when kept, else the reason. The decomposition has at least one
    sub-question, the solution has a numbered line for every sub-question (kit default) and its final
    answer matches the gold answer (``answers.is_correct``)."""
    if not decomposition or not decomposition.get("subquestions") or not decomposition.get("solution"):
        return EMPTY
    found = numbered_lines(decomposition["solution"])
    if any(k not in found for k in range(1, len(decomposition["subquestions"]) + 1)):
        return UNANSWERED
    return None if answers.is_correct(item, decomposition["solution"]) else WRONG


def check_candidates(item: Example, cand: dict) -> tuple[dict, dict]:
    """(kept, dropped) for one item's teacher outputs: ``kept`` has every augmentation field (None
    where it failed), ``dropped`` the reason per failed field.

    Teacher CoTs for a question with a gold answer (the rephrased question, the second CoT, the
    decomposition's solution) are kept only when their answer matches the gold (``answers.is_correct``,
    flexible extraction, as the EI pipeline checks the teacher's CoT); the new question by
    :func:`new_question_check`, the backward question by :func:`backward_consistency`."""
    kept: dict = {}
    dropped: dict = {}
    reph = cand.get("rephrased")
    if not reph or not reph.get("question") or not reph.get("cot"):
        dropped["rephrased"] = EMPTY
    elif _norm(reph["question"]) == _norm(item.question):
        dropped["rephrased"] = RESTATED
    elif not answers.is_correct(Example(f"{item.id}:r", item.dataset, reph["question"], item.answer, item.choices), reph["cot"]):
        dropped["rephrased"] = WRONG
    kept["rephrased"] = None if "rephrased" in dropped else {"question": reph["question"], "cot": reph["cot"]}

    new = cand.get("new_question")
    answer, reason = new_question_check(item, new)
    if reason:
        dropped["new_question"] = reason
    kept["new_question"] = None if reason else {"question": new["question"], "cot": new["cot"], "answer": answer}

    alt = cand.get("alt_cot")
    if not alt:
        dropped["alt_cot"] = EMPTY
    elif not answers.is_correct(item, alt):
        dropped["alt_cot"] = WRONG
    kept["alt_cot"] = None if "alt_cot" in dropped else alt

    back = cand.get("backward")
    reason = backward_consistency(item, back)
    if reason:
        dropped["backward"] = reason
    kept["backward"] = None if reason else {
        "question": back["question"], "answer": back["answer"], "cot": back["cot"],
        "answer_type": answers.answer_type(backward_example(item, back["question"], back["answer"]))}

    dec = cand.get("decomposition")
    reason = decomposition_check(item, dec)
    if reason:
        dropped["decomposition"] = reason
    kept["decomposition"] = None if reason else {"subquestions": list(dec["subquestions"]), "solution": dec["solution"],
                                                 "answers": dec.get("answers") or []}
    return kept, dropped


# ---------------------------------------------------------------------------------------------
# Teachers: the augmentation calls (candidates; ``check_candidates`` decides what is kept)

# Divide-or-Conquer sub-question per program step (kit default wording; the numbering gives the order).
SUBQUESTION = {"add": "How many {i} does {name} have after getting {n} more?",
               "sub": "How many {i} does {name} have after giving away {n}?",
               "mul": "How many {i} does {name} have after the number becomes {n} times as large?",
               "div": "How many {i} does {name} have after splitting them into {n} equal groups and keeping one?"}


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

    def backward(self, ex: Example) -> tuple[str, str, str]:
        """(backward question, the value it asks for, its reasoning): the reverse problem asks for the start."""
        p = self._program(ex)
        return synthetic.reverse_text(p), str(p.start), synthetic.reverse_rationale(p)

    def decompose(self, ex: Example) -> dict:
        """Divide-or-Conquer: one sub-question per program step, answered with its exact value."""
        p = self._program(ex)
        vals = p.values
        subs = [SUBQUESTION[o].format(i=p.item, name=p.name, n=n) for o, n in p.steps]
        lines = [f"{k + 1}. {vals[k]} {synthetic.SYMBOL[o]} {n} = {vals[k + 1]}." for k, (o, n) in enumerate(p.steps)]
        return {"subquestions": subs, "answers": [str(v) for v in vals[1:]],
                "solution": "\n".join(lines + [f"The answer is {vals[-1]}."])}

    def batch(self, items: Sequence[Example], cots: Sequence[str]) -> list[dict]:
        out = []
        for ex in items:
            rq, rc = self.rephrase(ex)
            nq, nc, na = self.new_question(ex)
            bq, ba, bc = self.backward(ex)
            out.append({"rephrased": {"question": rq, "cot": rc}, "new_question": {"question": nq, "cot": nc, "answer": na},
                        "alt_cot": self.alternative_cot(ex), "backward": {"question": bq, "answer": ba, "cot": bc},
                        "decomposition": self.decompose(ex)})
        return out


class LLMAugmenter:
    """The same calls through a chat backend (normally a ``CachedBackend``: reruns cost nothing).

    Per item: a rephrasing and its CoT; a new question and two solutions of it (greedy and sampled);
    a second, sampled CoT of Q; a backward question with the value it asks for, and the teacher's
    reasoning for it; a decomposition into sub-questions and the teacher's answers to them. Calls whose
    input is missing (an unparseable earlier reply) are not made."""

    def __init__(self, chat, *, max_new_tokens: int = 1024):
        self.chat = chat
        self.name = f"{chat.kind}:{chat.model}"
        self.greedy = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
        self.sampled = SamplingConfig(max_new_tokens=max_new_tokens, temperature=ANSWER_AUG_TEMPERATURE)

    def _ask(self, batch: Sequence[list[dict] | None], sampling) -> list[str]:
        """Replies in order; "" where the request is None."""
        todo = [m for m in batch if m is not None]
        replies = iter([c.text for c in self.chat.complete(todo, sampling)] if todo else [])
        return ["" if m is None else next(replies) for m in batch]

    def batch(self, items: Sequence[Example], cots: Sequence[str]) -> list[dict]:
        g = self.greedy
        ask_each = lambda template: self._ask([[{"role": "user", "content": template.format(question=ex.question,
                                                                                            answer=_answer_text(ex))}]
                                               for ex in items], g)  # templates without {answer} ignore it
        reph = [_clean_question(t) for t in ask_each(REPHRASE_PROMPT)]
        newq = [_clean_question(t) for t in ask_each(QUESTION_AUG_PROMPT)]
        back = [parse_backward(t) for t in ask_each(BACKWARD_PROMPT)]
        subs = [parse_subquestions(t) for t in ask_each(DECOMPOSE_PROMPT)]

        variant = lambda ex, q: Example(f"{ex.id}:r", ex.dataset, q, ex.answer, ex.choices)
        reph_cot = self._ask([prompts.messages_for(variant(ex, q)) if q else None for ex, q in zip(items, reph)], g)
        newq_msgs = [prompts.messages_for(_new_question_example(ex, q)) if q else None for ex, q in zip(items, newq)]
        newq_cot, newq_cot2 = self._ask(newq_msgs, g), self._ask(newq_msgs, self.sampled)
        back_cot = self._ask([prompts.messages_for(backward_example(ex, q, v)) if q and v else None
                              for ex, (q, v) in zip(items, back)], g)
        alt_cot = self._ask([prompts.messages_for(ex) for ex in items], self.sampled)
        solve = self._ask([[{"role": "user", "content": solve_prompt(ex, s)}] if s else None for ex, s in zip(items, subs)], g)
        out = []
        for i, ex in enumerate(items):
            found = numbered_lines(solve[i])
            out.append({
                "rephrased": {"question": reph[i], "cot": reph_cot[i]},
                "new_question": {"question": newq[i], "cot": newq_cot[i], "cot2": newq_cot2[i]},
                "alt_cot": alt_cot[i],
                "backward": {"question": back[i][0], "answer": back[i][1], "cot": back_cot[i]},
                "decomposition": {"subquestions": subs[i] or [], "solution": solve[i],
                                  "answers": [found.get(k, "") for k in range(1, len(subs[i] or []) + 1)]},
            })
        return out


def build_baseline_data(items: Sequence[Example], cots: Sequence[str], augmenter, out_path: str | Path) -> list[dict]:
    """One record per item: the item, the teacher CoT, every augmentation that passed its check (None
    when not kept) and ``dropped``, the reason for each one that did not (:func:`check_candidates`).
    The teacher CoTs themselves are checked upstream (``prepare_baseline_data`` takes only the EI
    items whose teacher CoT is correct)."""
    records = []
    for ex, cot, cand in zip(items, cots, augmenter.batch(items, cots)):
        kept, dropped = check_candidates(ex, cand)
        records.append({"id": ex.id, "dataset": ex.dataset, "item": ex.to_dict(), "teacher_cot": cot, **kept, "dropped": dropped})

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


def baseline_rows(records: Sequence[dict], baseline: str, *, fallback_original: bool = True) -> list[dict]:
    """SFT prompt-completion rows of one baseline (see the module docstring).

    ``divide_conquer`` trains one row per item, the evaluation prompt -> :func:`decomposition_target`;
    an item whose decomposition was dropped trains on its original CoT instead when
    ``fallback_original`` (kit default: every baseline trains on every item)."""
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
        if baseline == "divide_conquer":
            if rec.get("decomposition"):
                rows.append(_row(prompts.messages_for(item), decomposition_target(rec["decomposition"]), "decomposition", qid))
            elif fallback_original:
                rows.append(_row(prompts.messages_for(item), cot, "original", qid))
            continue
        rows.append(_row(prompts.messages_for(item), cot, "original", qid))
        if baseline == "rephrase" and rec.get("rephrased"):
            q = Example(f"{qid}:r", item.dataset, rec["rephrased"]["question"], item.answer, item.choices)
            rows.append(_row(prompts.messages_for(q), rec["rephrased"]["cot"], "rephrased", qid))
        elif baseline == "question_aug" and rec.get("new_question"):
            q = _new_question_example(item, rec["new_question"]["question"], rec["new_question"].get("answer", ""))
            rows.append(_row(prompts.messages_for(q), rec["new_question"]["cot"], "new_question", qid))
        elif baseline == "answer_aug" and rec.get("alt_cot"):
            rows.append(_row(prompts.messages_for(item), rec["alt_cot"], "alt_cot", qid))
        elif baseline == "revthink" and rec.get("backward"):
            b = rec["backward"]
            rows.append(_row(user(BACKWARD_TASK.format(question=item.question)), b["question"], "backward_question", qid))
            kind = b.get("answer_type") or ("number" if item.dataset.startswith("arith") else "text")
            back = Example(f"{qid}:b", item.dataset, b["question"], b.get("answer", ""), None, meta={"answer_type": kind})
            rows.append(_row(prompts.messages_for(back), b["cot"], "backward_reasoning", qid))
    return rows


def _ei_required_teacher_correct(ei_records_path: str | Path) -> bool:
    """Whether the EI run beside ``ei_records.jsonl`` dropped items whose teacher CoT was wrong
    (``ei_require_teacher_correct``, from its ``fingerprint.json``; True when there is none)."""
    fp = Path(ei_records_path).with_name("fingerprint.json")
    try:
        return bool(json.loads(fp.read_text())["settings"].get("require_teacher_correct", True))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return True


def prepare_baseline_data(ei_records_path: str | Path, out_path: str | Path, *,
                          teacher: TeacherSettings = TeacherSettings(), cache_path: str = "") -> list[dict]:
    """Baseline data for the items of an EI run (``ei_records.jsonl``: same items, same teacher CoTs).

    With ``teacher_serve`` the loopback teacher server runs only while data is written (not when the
    file is reused). Items whose teacher CoT was wrong are left out, as in the EI pipeline (kept when that EI run kept
    them: ``ei_require_teacher_correct`` false, as with paper-mini's stand-in teacher). An existing file made by
    the same teacher from the same EI records with the same ``DATA_VERSION`` is reused; LLM teacher
    calls go through the completion cache, so a rerun after an interruption pays only for what it had
    not received."""

    out_path = Path(out_path)
    meta_path = out_path.with_suffix(".teacher.json")
    every_item = not _ei_required_teacher_correct(ei_records_path)
    ident = {"teacher": teacher.teacher, "teacher_model": teacher.teacher_model, "teacher_base_url": endpoint(teacher),
             "teacher_max_new_tokens": teacher.teacher_max_new_tokens, "source": Path(ei_records_path).name,
             "source_digest": file_digest(ei_records_path),  # other EI items: the data is made again, never reused
             "data_version": DATA_VERSION, **({"teacher_wrong_items": "kept, as in EI"} if every_item else {})}
    if out_path.exists() and meta_path.exists() and json.loads(meta_path.read_text()) == ident:
        return load_baseline_data(out_path)
    items, cots = [], []
    for line, rec in iter_jsonl(ei_records_path):
        if "item" not in rec or "teacher_cot" not in rec:
            raise ValueError(f"{ei_records_path}: line {line}: not an EI record (needs 'item' and 'teacher_cot')")
        if rec.get("teacher_correct") or every_item:
            items.append(Example.from_dict(rec["item"]))
            cots.append(rec["teacher_cot"])
    if not items:
        raise ValueError(f"{ei_records_path}: no item with a correct teacher CoT (ei_require_teacher_correct false "
                         "in notebook 01 keeps the others, for the EI methods and the baselines alike)")
    if teacher.teacher == "program":
        records = build_baseline_data(items, cots, ProgramAugmenter(), out_path)
    else:
        cache = CompletionCache(cache_path or cache_dir() / "completions.sqlite")
        with teacher_session(teacher, load_rules(), cache=cache) as t:  # teacher_serve: its server meanwhile
            records = build_baseline_data(items, cots, LLMAugmenter(t.chat, max_new_tokens=teacher.teacher_max_new_tokens),
                                          out_path)

    atomic_write_json(meta_path, ident)
    return records


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
