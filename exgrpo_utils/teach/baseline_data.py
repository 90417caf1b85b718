"""The teacher data of the paper's SFT baselines (method.md section 6): augmentations asked of a teacher.

Per item of an EI run (its question and the teacher's CoT), a teacher writes every augmentation the
baselines train on: a rephrasing of the question with its CoT (Rephrase Question), a new question of
the same kind, solved (Question Aug), a second, sampled CoT (Answer Aug), a backward question with the
value it asks for and its reasoning (RevThink) and a decomposition into answered sub-questions
(Divide-or-Conquer). ``ProgramAugmenter`` answers exactly for ``arith`` from the item's step program;
``LLMAugmenter`` asks an LLM teacher through the cached backend. ``build_baseline_data`` checks every
augmentation (``teach.baseline_checks.check_candidates``, the same checks on both paths) and writes
one record per item: the kept augmentations, and in ``dropped`` the reason for each one that failed.
``prepare_baseline_data`` does that for an EI run's items and reuses the file while its teacher and
items are unchanged. Turning the records into each baseline's training rows is
``experiments.baselines``'s job. Prompt wordings for the LLM teacher are kit defaults (the paper gives
none).
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Sequence

from ..data import answers, prompts, synthetic
from ..data.example import LETTERS, Example
from ..infra.files import atomic_write_json, atomic_write_text, iter_jsonl
from ..infra.fingerprint import file_digest
from ..infra.paths import cache_dir
from ..models.cache import CompletionCache
from ..models.generation import SamplingConfig
from .baseline_checks import backward_example, check_candidates, new_question_example, numbered_lines
from .rules import load_rules
from .settings import TeacherSettings
from .teachers import endpoint, teacher_session

DATA_VERSION = 2  # part of the data's identity: bump when the record layout or the checks change

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


def _clean_question(text: str) -> str | None:
    body = text.rsplit("Question:", 1)[-1].strip().strip('"').strip()
    return body or None


def _answer_text(item: Example) -> str:
    """The gold answer as the teacher should read it: a letter with its option's text."""
    if item.choices and len(item.answer) == 1 and item.answer in LETTERS[: len(item.choices)]:
        return f"({item.answer}) {item.choices[LETTERS.index(item.answer)]}"
    return item.answer


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


def solve_prompt(item: Example, subquestions: Sequence[str]) -> str:
    """The teacher prompt that answers a decomposition's sub-questions, then the question (``SOLVE_PROMPT``)."""
    subs = "\n".join(f"{k}. {q}" for k, q in enumerate(subquestions, 1))
    instruction = prompts.INSTRUCTIONS[answers.answer_type(item)]
    return SOLVE_PROMPT.format(question=item.question, subquestions=subs, instruction=instruction)


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
        newq_msgs = [prompts.messages_for(new_question_example(ex, q)) if q else None for ex, q in zip(items, newq)]
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
    """The records ``build_baseline_data`` wrote (each with its id, item and teacher CoT)."""
    records = []
    for line, rec in iter_jsonl(path):
        for key in ("id", "item", "teacher_cot"):
            if key not in rec:
                raise ValueError(f"{path}: line {line}: missing field {key!r}")
        records.append(rec)
    return records


def _ei_required_teacher_correct(ei_records_path: str | Path) -> bool:
    """Whether the EI run beside ``ei_records.jsonl`` dropped items whose teacher CoT was wrong
    (``ei_require_teacher_correct``, from its ``fingerprint.json``; True when there is none)."""
    fp = Path(ei_records_path).with_name("fingerprint.json")
    try:
        return bool(json.loads(fp.read_text())["settings"].get("require_teacher_correct", True))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return True


def _ei_items(ei_records_path: str | Path, every_item: bool, same_questions: bool = True) -> tuple[list[Example], list[str]]:
    """(items, teacher CoTs) of an EI run: those whose teacher CoT is correct, or all with ``every_item``;
    with ``same_questions`` only the questions EI kept (Eq. 1-2), the ones its methods train on."""
    items, cots, seen = [], [], 0
    for line, rec in iter_jsonl(ei_records_path):
        if "item" not in rec or "teacher_cot" not in rec:
            raise ValueError(f"{ei_records_path}: line {line}: not an EI record (needs 'item' and 'teacher_cot')")
        seen += 1
        if (rec.get("teacher_correct") or every_item) and (rec.get("kept", True) or not same_questions):
            items.append(Example.from_dict(rec["item"]))
            cots.append(rec["teacher_cot"])
    if not items and same_questions and seen:
        return [], []  # EI kept no question of this task: its baselines, like its EI methods, have none
    if not items:
        raise ValueError(f"{ei_records_path}: no item with a correct teacher CoT (ei_require_teacher_correct false "
                         "in notebook 01 keeps the others, for the EI methods and the baselines alike)")
    return items, cots


def prepare_baseline_data(ei_records_path: str | Path, out_path: str | Path, *,
                          teacher: TeacherSettings = TeacherSettings(), cache_path: str = "",
                          same_questions: bool = True) -> list[dict]:
    """Baseline data for the items of an EI run (``ei_records.jsonl``: same items, same teacher CoTs).

    ``same_questions`` (kit default, so that Table 1 compares methods trained on the same questions):
    only the questions EI kept after Eq. 1 and Eq. 2, the EI methods' training questions; false: every
    item of the EI run (the questions Eq. 2 dropped as too easy or without a surviving probe too).
    With it, a task where EI kept no question gets empty baseline data (its baselines are then
    recorded as skipped, as its EI methods are).

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
             "data_version": DATA_VERSION, **({"teacher_wrong_items": "kept, as in EI"} if every_item else {}),
             "questions": "kept by EI (Eq. 1-2)" if same_questions else "every EI item"}
    if out_path.exists() and meta_path.exists() and json.loads(meta_path.read_text()) == ident:
        return load_baseline_data(out_path)
    items, cots = _ei_items(ei_records_path, every_item, same_questions)
    if not items:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_path, "")
        atomic_write_json(meta_path, ident)
        return []
    if teacher.teacher == "program":
        records = build_baseline_data(items, cots, ProgramAugmenter(), out_path)
    else:
        cache = CompletionCache(cache_path or cache_dir() / "completions.sqlite")
        with teacher_session(teacher, load_rules(), cache=cache) as t:  # teacher_serve: its server meanwhile
            records = build_baseline_data(items, cots, LLMAugmenter(t.chat, max_new_tokens=teacher.teacher_max_new_tokens),
                                          out_path)

    atomic_write_json(meta_path, ident)
    return records

