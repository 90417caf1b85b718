"""The checks a baseline's teacher augmentation must pass to be kept (method.md section 6), on both teacher paths.

``check_candidates`` takes one item's teacher outputs (from ``teach.baseline_data``'s augmenters) and
returns what is kept and, per augmentation that failed, the reason (one of the drop reasons below;
``experiments.baselines.data_stats`` counts them). Teacher CoTs for a question with a gold answer must
reach it; a teacher-written question (Question Aug) has no gold, so the teacher solves it twice; a
backward question (RevThink) must be consistent with the original question; a decomposition
(Divide-or-Conquer) must answer every sub-question. The checks on teacher-written questions are kit
defaults (the paper gives none).
"""
from __future__ import annotations

import re

from ..data import answers
from ..data.example import Example

# Drop reasons (``dropped`` in a baseline data record).
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


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text or "").strip().lower()


_NUMBERED = re.compile(r"^[ \t*]*(?:sub-?question[ \t]*)?(\d+)[.):][ \t*]+(\S.*)", re.I | re.M)


def numbered_lines(text: str) -> dict[int, str]:
    """The text of each numbered line ("1. ...", "2) ...", "Sub-question 3: ..."), first occurrence per number."""
    out: dict[int, str] = {}
    for m in _NUMBERED.finditer(text or ""):
        out.setdefault(int(m.group(1)), m.group(2).strip())
    return out


def backward_example(item: Example, question: str, value: str, qid: str = "") -> Example:
    """The backward question as a scorable item whose gold is the value it asks for. Its answer type
    is a number or yes/no when the value is one, free text otherwise (kit default)."""
    kind = answers.infer_answer_type(value)
    kind = kind if kind in ("number", "yesno") else "text"
    return Example(f"{qid or item.id}:b", item.dataset, question, value, None, meta={"answer_type": kind})


def new_question_example(item: Example, question: str, answer: str = "") -> Example:
    """A teacher-written question of the item's kind (its options, if any, are in its text)."""
    return Example(f"{item.id}:n", item.dataset, question, answer, None,
                   meta={"answer_type": answers.answer_type(item), "n_options": len(item.choices or ())})


# ---------------------------------------------------------------------------------------------
# Checks: what each augmentation must pass to be kept

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
        ex = new_question_example(item, new["question"], new["answer"])
        return (new["answer"], None) if answers.is_correct(ex, new["cot"]) else (None, WRONG)
    first = answers.extract(new_question_example(item, new["question"]), new["cot"], "strict")
    if first is None:
        return None, NO_FORMAT_ANSWER
    ex = new_question_example(item, new["question"], first)
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

