"""Row parsers: one per dataset, each turning a source row into the fields of an Example.

Every parser has the signature ``(row, split, line_number) -> dict`` of Example fields (``id``
optional). It raises KeyError/ValueError/TypeError on a malformed row; the loader (datasets.py)
turns that into a DataError naming dataset, file and line. Hub rows are first converted to the local
layout (hub.py), so the same parser serves both. The registry (registry.py) pairs each dataset with
its parser.

Canonical gold answers (``Example.answer``):
  yes/no   -> "yes" / "no"
  letter   -> "A".."F" (options are written into ``question`` as "(A) text")
  number   -> a plain number string, separators removed ("1080", "-3", "0.5", "3/8")
  latex    -> the LaTeX inside the last ``\\boxed{}`` (MATH) or the TabMWP answer text
"""
from __future__ import annotations

import random
import re
from typing import Mapping

from .example import LETTERS
from .normalize import canonical_number, last_boxed

NLI_OPTIONS = ["entailment", "neutral", "contradiction"]
DATE_SHUFFLE_SEED = "date_understanding-options-v1"  # kit default: fixed seed for option order


def format_options(question: str, options: list[str]) -> str:
    """The question followed by its lettered options, as every multiple-choice Example writes them.

    >>> print(format_options("Where?", ["bank", "library"]))
    Where?
    Answer Choices:
    (A) bank
    (B) library
    """
    lines = [f"({LETTERS[i]}) {opt}" for i, opt in enumerate(options)]
    return question.rstrip() + "\nAnswer Choices:\n" + "\n".join(lines)


def _require(row: Mapping, key: str):
    if key not in row or row[key] is None:
        raise KeyError(key)
    return row[key]


def _ai2_choices(row: Mapping) -> tuple[str, list[str], str]:
    """ARC / OpenBookQA / CSQA layout: question.stem, question.choices[{label, text}], answerKey.
    Numeric labels 1-4 (about 1% of ARC rows) are mapped to letters by position."""
    q = _require(row, "question")
    stem = _require(q, "stem")
    choices = _require(q, "choices")
    labels = [str(c["label"]).strip() for c in choices]
    texts = [str(c["text"]).strip() for c in choices]
    key = str(_require(row, "answerKey")).strip()
    if key not in labels:
        raise ValueError(f"answerKey {key!r} not among labels {labels}")
    return stem, texts, LETTERS[labels.index(key)]


def parse_strategyqa(row, split, lineno):
    scores = _require(row, "target_scores")
    yes = {k.lower(): v for k, v in scores.items()}
    if set(yes) != {"yes", "no"} or sorted(yes.values()) != [0, 1]:
        raise ValueError(f"target_scores must be one-hot over Yes/No, got {scores}")
    answer = "yes" if yes["yes"] == 1 else "no"
    target = row.get("target") or ""
    rationale = target.split(".", 1)[1].strip() if "." in target else None
    return dict(question=_require(row, "input").strip(), answer=answer, rationale=rationale or None)


def parse_multiple_choice(row, split, lineno):
    """CSQA and OpenBookQA (and ARC's train/dev files): the AI2 layout."""
    stem, texts, letter = _ai2_choices(row)
    return dict(question=format_options(stem, texts), answer=letter, choices=tuple(texts), id=row.get("id"))


def parse_arc(row, split, lineno):
    if "query" in row:  # the test file's other layout: query, choices[list], gold index
        query = str(_require(row, "query")).strip()
        if query.startswith("Question:"):
            query = query[len("Question:"):].strip()
        texts = [str(t).strip() for t in _require(row, "choices")]
        gold = _require(row, "gold")
        if not isinstance(gold, int) or not 0 <= gold < len(texts):
            raise ValueError(f"gold index {gold!r} out of range for {len(texts)} choices")
        return dict(question=format_options(query, texts), answer=LETTERS[gold], choices=tuple(texts))
    return parse_multiple_choice(row, split, lineno)


def parse_math(row, split, lineno):
    solution = _require(row, "solution")
    boxed = last_boxed(solution)
    if not boxed:
        raise ValueError("no \\boxed{} answer in solution")
    meta = {"level": row.get("level"), "type": row.get("type")}
    return dict(question=_require(row, "problem").strip(), answer=boxed.strip(), rationale=solution, meta=meta)


def _strip_calculator(text: str) -> str:
    return re.sub(r"<<[^>]*>>", "", text)


def parse_gsm8k(row, split, lineno):
    answer = _require(row, "answer")
    if "####" not in answer:
        raise ValueError("answer has no '####' line")
    rationale, gold = answer.rsplit("####", 1)
    return dict(question=_require(row, "question").strip(), answer=canonical_number(gold),
                rationale=_strip_calculator(rationale).strip())


def parse_tabmwp(row, split, lineno):
    question = _require(row, "question").strip()
    table = _require(row, "table")
    title = row.get("table_title")
    header = f"Table: {title}\n" if title else "Table:\n"
    text = f"{header}{table}\n\nQuestion: {question}"
    if row.get("unit"):
        text += f" (Unit: {row['unit']})"
    choices = row.get("choices")
    answer = str(_require(row, "answer")).strip()
    if choices:
        choices = [str(c).strip() for c in choices]
        if answer not in choices:
            raise ValueError(f"answer {answer!r} is not one of the choices {choices}")
        text = format_options(text, choices)
    else:
        answer = canonical_number(answer)
    meta = {"ques_type": row.get("ques_type"), "ans_type": row.get("ans_type"), "pid": row.get("pid")}
    row_id = f"tabmwp-{row['pid']}" if row.get("pid") else None
    return dict(question=text, answer=answer, choices=tuple(choices) if choices else None,
                rationale=row.get("solution"), meta=meta, id=row_id)


def _nli_question(premise: str, hypothesis: str) -> str:
    return format_options(
        f"Premise: {premise.strip()}\nHypothesis: {hypothesis.strip()}\n"
        "Does the premise entail the hypothesis, contradict it, or neither?", NLI_OPTIONS)


def parse_anli(row, split, lineno):
    label = {"e": "A", "n": "B", "c": "C"}.get(_require(row, "label"))
    if label is None:
        raise ValueError(f"label {row['label']!r} not one of e/n/c")
    return dict(question=_nli_question(_require(row, "context"), _require(row, "hypothesis")), answer=label,
                choices=tuple(NLI_OPTIONS), rationale=row.get("reason") or None, id=row.get("uid"))


def parse_esnli(row, split, lineno):
    label = _require(row, "labels").strip()
    if label not in NLI_OPTIONS:
        raise ValueError(f"labels {label!r} not one of {NLI_OPTIONS}")
    return dict(question=_nli_question(_require(row, "s1"), _require(row, "s2")),
                answer=LETTERS[NLI_OPTIONS.index(label)], choices=tuple(NLI_OPTIONS),
                rationale=row.get("preproc1_expl_1"))


def parse_date(row, split, lineno):
    scores = _require(row, "target_scores")
    options = list(scores)
    correct = [o for o in options if scores[o] == 1]
    if len(correct) != 1:
        raise ValueError(f"target_scores needs exactly one correct option, got {scores}")
    # The source lists the correct option first in 364 of 369 rows: shuffle with a fixed seed.
    random.Random(f"{DATE_SHUFFLE_SEED}:{split}:{lineno}").shuffle(options)
    return dict(question=format_options(_require(row, "input").strip(), options),
                answer=LETTERS[options.index(correct[0])], choices=tuple(options))


def parse_boolq(row, split, lineno):
    query = str(_require(row, "query")).strip()
    choices = [str(c).strip().lower() for c in _require(row, "choices")]
    gold = _require(row, "gold")
    if choices != ["no", "yes"] or gold not in (0, 1):
        raise ValueError(f"expected choices ['no','yes'] and gold 0/1, got {choices} / {gold!r}")
    if query.endswith("Answer:"):
        query = query[: -len("Answer:")].rstrip()
    return dict(question=query, answer=choices[gold])


def parse_gsm8k_rev(row, split, lineno):
    return dict(question=_require(row, "question").strip(), answer=canonical_number(_require(row, "answer")),
                rationale=row.get("explanation") or None, id=row.get("id"))
