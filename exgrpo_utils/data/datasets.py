"""The 12 evaluation datasets of the paper (method.md section 5) plus the synthetic ``arith`` family.

``load(name, split)`` returns a list of :class:`Example`. Rows come from a local data directory laid
out as ``<data_dir>/<name>/<split>.jsonl`` (the argument, else the ``EXGRPO_DATA_DIR`` environment
variable), else from the Hugging Face hub ids below. Each dataset has one parser that turns a source
row into an Example; hub rows are first converted to the local layout so the same parser serves both.

Canonical gold answers (``Example.answer``):
  yes/no   -> "yes" / "no"
  letter   -> "A".."F" (options are written into ``question`` as "(A) text")
  number   -> a plain number string, separators removed ("1080", "-3", "0.5", "3/8")
  latex    -> the LaTeX inside the last ``\\boxed{}`` (MATH) or the TabMWP answer text
"""
from __future__ import annotations

import os
import random
import re
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Mapping

from ..common.files import iter_jsonl
from . import synthetic
from .example import LETTERS, Example

# datasets is imported inside the functions that use it (heavy, or needed only on some paths).

DATA_DIR_ENV = "EXGRPO_DATA_DIR"
ALLOW_PARTIAL_ENV = "EXGRPO_ALLOW_PARTIAL_DATA"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    role: str  # "held-in" | "ood" | "synthetic"
    answer_type: str  # "yesno" | "letter" | "number" | "latex"
    splits: tuple[str, ...]
    rows: Mapping[str, int]  # row counts of the local copies (MANIFEST.md)
    paired_with: str | None = None  # for OOD sets: the held-in task whose model is tested on it
    hf_id: str | None = None
    title: str = ""


DATASETS: dict[str, DatasetSpec] = {s.name: s for s in [
    DatasetSpec("strategyqa", "held-in", "yesno", ("train", "test"), {"train": 1603, "test": 687},
                hf_id="ChilleD/StrategyQA", title="StrategyQA"),
    DatasetSpec("csqa", "held-in", "letter", ("train", "test"), {"train": 9741, "test": 1221},
                hf_id="tau/commonsense_qa", title="CommonsenseQA"),
    DatasetSpec("arc_challenge", "held-in", "letter", ("train", "dev", "test"),
                {"train": 1119, "dev": 299, "test": 1172}, hf_id="allenai/ai2_arc", title="ARC-Challenge"),
    DatasetSpec("math", "held-in", "latex", ("train", "test"), {"train": 7500, "test": 5000},
                hf_id="EleutherAI/hendrycks_math", title="MATH"),
    DatasetSpec("gsm8k", "held-in", "number", ("train", "test"), {"train": 7473, "test": 1319},
                hf_id="openai/gsm8k", title="GSM8K"),
    DatasetSpec("tabmwp", "held-in", "latex", ("dev", "test"), {"dev": 1000, "test": 1000}, title="TabMWP"),
    DatasetSpec("anli", "held-in", "letter", ("dev", "test"), {"dev": 3200, "test": 3200},
                hf_id="facebook/anli", title="ANLI"),
    DatasetSpec("date_understanding", "held-in", "letter", ("train", "test"), {"train": 258, "test": 111},
                hf_id="tasksource/bigbench", title="Date Understanding"),
    DatasetSpec("boolq", "ood", "yesno", ("test",), {"test": 3270}, paired_with="strategyqa",
                hf_id="google/boolq", title="BoolQ"),
    DatasetSpec("openbookqa", "ood", "letter", ("train", "test"), {"train": 4957, "test": 500},
                paired_with="arc_challenge", hf_id="allenai/openbookqa", title="OpenBookQA"),
    DatasetSpec("esnli", "ood", "letter", ("test",), {"test": 9824}, paired_with="anli",
                hf_id="esnli", title="e-SNLI"),
    DatasetSpec("gsm8k_rev", "ood", "number", ("test",), {"test": 777}, paired_with="gsm8k",
                title="GSM8K-Reversal"),
    # Synthetic, generated offline (see synthetic.py); sizes are the kit defaults.
    DatasetSpec("arith", "synthetic", "number", ("train", "test"), {}, title="Arith (synthetic)"),
    DatasetSpec("arith_rev", "synthetic", "number", ("test",), {}, paired_with="arith",
                title="Arith-Reversal (synthetic)"),
]}

HELD_IN = [n for n, s in DATASETS.items() if s.role == "held-in"]
OOD = [n for n, s in DATASETS.items() if s.role == "ood"]
PAPER_DATASETS = HELD_IN + OOD


def task_eval_sets(task: str) -> list[str]:
    """The test sets a model trained on ``task`` is scored on in the paper's protocol: the task's own
    test set, then every OOD set paired with it (``paired_with``: BoolQ with StrategyQA, ...)."""
    if task not in DATASETS:
        raise ValueError(f"unknown dataset {task!r}; known: {', '.join(DATASETS)}")
    return [task] + [n for n, s in DATASETS.items() if s.paired_with == task]


class DataError(ValueError):
    """A source row or file that cannot be turned into an Example."""


class DataNotFoundError(FileNotFoundError):
    """No local copy and the hub could not provide the dataset."""


# --------------------------------------------------------------------------------------------------
# Answer normalisation shared by the loaders (the scorer has its own, richer parsing).

def canonical_number(text: str) -> str:
    """"1,080" -> "1080", "$18.00" -> "18", "-3" -> "-3", "3/8" -> "3/8". Raises ValueError otherwise."""

    s = str(text).strip().replace(",", "").replace("$", "").rstrip(".")
    if not s:
        raise ValueError("empty number")
    if "/" in s:
        num, den = s.split("/", 1)
        Fraction(int(num), int(den))  # validates
        return f"{int(num)}/{int(den)}"
    value = Fraction(s)  # accepts ints and decimals, rejects anything else
    if value.denominator == 1:
        return str(value.numerator)
    return s.rstrip("0") if "." in s else s


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, nested braces included."""
    best = None
    for marker in ("\\boxed", "\\fbox"):
        pos = text.rfind(marker)
        if pos > (best[0] if best else -1):
            best = (pos, marker)
    if best is None:
        return None
    i = best[0] + len(best[1])
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text) or text[i] != "{":
        # "\boxed 5" form
        rest = text[i:].strip().split()
        return rest[0].rstrip("$.") if rest else None
    depth, start = 0, i + 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[start:j]
    return None  # unbalanced


def format_options(question: str, options: list[str]) -> str:
    lines = [f"({LETTERS[i]}) {opt}" for i, opt in enumerate(options)]
    return question.rstrip() + "\nAnswer Choices:\n" + "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Row parsers: (row, split, line_number) -> Example fields. Each raises KeyError/ValueError/TypeError
# on a malformed row; load() turns that into a DataError naming dataset, file and line.

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


def _parse_strategyqa(row, split, lineno):
    scores = _require(row, "target_scores")
    yes = {k.lower(): v for k, v in scores.items()}
    if set(yes) != {"yes", "no"} or sorted(yes.values()) != [0, 1]:
        raise ValueError(f"target_scores must be one-hot over Yes/No, got {scores}")
    answer = "yes" if yes["yes"] == 1 else "no"
    target = row.get("target") or ""
    rationale = target.split(".", 1)[1].strip() if "." in target else None
    return dict(question=_require(row, "input").strip(), answer=answer, rationale=rationale or None)


def _parse_multiple_choice(row, split, lineno):
    stem, texts, letter = _ai2_choices(row)
    return dict(question=format_options(stem, texts), answer=letter, choices=tuple(texts), id=row.get("id"))


def _parse_arc(row, split, lineno):
    if "query" in row:  # the test file's other layout: query, choices[list], gold index
        query = str(_require(row, "query")).strip()
        if query.startswith("Question:"):
            query = query[len("Question:"):].strip()
        texts = [str(t).strip() for t in _require(row, "choices")]
        gold = _require(row, "gold")
        if not isinstance(gold, int) or not 0 <= gold < len(texts):
            raise ValueError(f"gold index {gold!r} out of range for {len(texts)} choices")
        return dict(question=format_options(query, texts), answer=LETTERS[gold], choices=tuple(texts))
    return _parse_multiple_choice(row, split, lineno)


def _parse_math(row, split, lineno):
    solution = _require(row, "solution")
    boxed = last_boxed(solution)
    if not boxed:
        raise ValueError("no \\boxed{} answer in solution")
    meta = {"level": row.get("level"), "type": row.get("type")}
    return dict(question=_require(row, "problem").strip(), answer=boxed.strip(), rationale=solution, meta=meta)


def _strip_calculator(text: str) -> str:
    return re.sub(r"<<[^>]*>>", "", text)


def _parse_gsm8k(row, split, lineno):
    answer = _require(row, "answer")
    if "####" not in answer:
        raise ValueError("answer has no '####' line")
    rationale, gold = answer.rsplit("####", 1)
    return dict(question=_require(row, "question").strip(), answer=canonical_number(gold),
                rationale=_strip_calculator(rationale).strip())


def _parse_tabmwp(row, split, lineno):
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
    return dict(question=text, answer=answer, choices=tuple(choices) if choices else None,
                rationale=row.get("solution"), meta=meta, id=f"tabmwp-{row['pid']}" if row.get("pid") else None)


NLI_OPTIONS = ["entailment", "neutral", "contradiction"]


def _nli_question(premise: str, hypothesis: str) -> str:
    return format_options(
        f"Premise: {premise.strip()}\nHypothesis: {hypothesis.strip()}\n"
        "Does the premise entail the hypothesis, contradict it, or neither?", NLI_OPTIONS)


def _parse_anli(row, split, lineno):
    label = {"e": "A", "n": "B", "c": "C"}.get(_require(row, "label"))
    if label is None:
        raise ValueError(f"label {row['label']!r} not one of e/n/c")
    return dict(question=_nli_question(_require(row, "context"), _require(row, "hypothesis")), answer=label,
                choices=tuple(NLI_OPTIONS), rationale=row.get("reason") or None, id=row.get("uid"))


def _parse_esnli(row, split, lineno):
    label = _require(row, "labels").strip()
    if label not in NLI_OPTIONS:
        raise ValueError(f"labels {label!r} not one of {NLI_OPTIONS}")
    return dict(question=_nli_question(_require(row, "s1"), _require(row, "s2")),
                answer=LETTERS[NLI_OPTIONS.index(label)], choices=tuple(NLI_OPTIONS),
                rationale=row.get("preproc1_expl_1"))


DATE_SHUFFLE_SEED = "date_understanding-options-v1"  # kit default: fixed seed for option order


def _parse_date(row, split, lineno):
    scores = _require(row, "target_scores")
    options = list(scores)
    correct = [o for o in options if scores[o] == 1]
    if len(correct) != 1:
        raise ValueError(f"target_scores needs exactly one correct option, got {scores}")
    # The source lists the correct option first in 364 of 369 rows: shuffle with a fixed seed.
    random.Random(f"{DATE_SHUFFLE_SEED}:{split}:{lineno}").shuffle(options)
    return dict(question=format_options(_require(row, "input").strip(), options),
                answer=LETTERS[options.index(correct[0])], choices=tuple(options))


def _parse_boolq(row, split, lineno):
    query = str(_require(row, "query")).strip()
    choices = [str(c).strip().lower() for c in _require(row, "choices")]
    gold = _require(row, "gold")
    if choices != ["no", "yes"] or gold not in (0, 1):
        raise ValueError(f"expected choices ['no','yes'] and gold 0/1, got {choices} / {gold!r}")
    if query.endswith("Answer:"):
        query = query[: -len("Answer:")].rstrip()
    return dict(question=query, answer=choices[gold])


def _parse_gsm8k_rev(row, split, lineno):
    return dict(question=_require(row, "question").strip(), answer=canonical_number(_require(row, "answer")),
                rationale=row.get("explanation") or None, id=row.get("id"))


PARSERS: dict[str, Callable] = {
    "strategyqa": _parse_strategyqa, "csqa": _parse_multiple_choice, "arc_challenge": _parse_arc,
    "math": _parse_math, "gsm8k": _parse_gsm8k, "tabmwp": _parse_tabmwp, "anli": _parse_anli,
    "date_understanding": _parse_date, "boolq": _parse_boolq, "openbookqa": _parse_multiple_choice,
    "esnli": _parse_esnli, "gsm8k_rev": _parse_gsm8k_rev,
}


# Source rows that are defective in the public data itself. They are skipped with a warning that
# names them (never silently); the MANIFEST row counts include them.
KNOWN_DEFECTS: dict[tuple[str, str, int], str] = {
    ("math", "train", 5530): "the source solution ends in an empty \\boxed{}",
    ("math", "train", 5532): "the source solution ends in an empty \\boxed{}",
}


def parse_row(name: str, row: Mapping, split: str, lineno: int, source: str) -> Example:
    """Turn one source row into an Example, or raise DataError naming dataset, source and line."""
    try:
        fields = PARSERS[name](row, split, lineno)
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
        what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise DataError(f"{name}: {source}:{lineno}: malformed row: {what}") from None
    row_id = fields.pop("id", None) or f"{name}-{split}-{lineno}"
    return Example(id=str(row_id), dataset=name, **fields)


# --------------------------------------------------------------------------------------------------
# Loading

def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    value = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        source = "data_dir argument" if data_dir is not None else f"${DATA_DIR_ENV}"
        raise DataNotFoundError(f"{source} points at {path}, which is not a directory")
    return path


def load(name: str, split: str = "test", *, data_dir: str | os.PathLike | None = None,
         limit: int | None = None, sample_seed: int | None = None,
         synthetic_options: Mapping[str, Any] | None = None, allow_partial: bool | None = None) -> list[Example]:
    """Load ``split`` of dataset ``name`` as a list of Examples.

    With a data directory (the argument, else ``$EXGRPO_DATA_DIR``) rows come from
    ``<data_dir>/<name>/<split>.jsonl`` only, and its row count must equal the dataset's (unless
    ``allow_partial``, default ``$EXGRPO_ALLOW_PARTIAL_DATA``); without one, from the hub. Ids must
    be unique.

    ``limit`` keeps the first ``limit`` rows, or (with ``sample_seed``) a seeded random sample of
    ``limit`` rows kept in source order: the fixed subsamples of the CPU presets.
    ``synthetic_options`` is passed to the generator of the ``arith`` family (see synthetic.py).
    """
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    spec = DATASETS[name]
    if split not in spec.splits:
        raise KeyError(f"dataset {name!r} has no split {split!r}; it has {', '.join(spec.splits)}")
    if spec.role == "synthetic":
        examples = synthetic.load(name, split, **dict(synthetic_options or {}))
    else:
        root = resolve_data_dir(data_dir)
        if root is None:
            examples = _load_from_hub(spec, split, None)
        else:
            examples = _load_local(spec, split, root / name / f"{split}.jsonl", allow_partial)
        _check_unique_ids(examples, name, split)
    return subsample(examples, limit, sample_seed)


def partial_copies_allowed() -> bool:
    """``$EXGRPO_ALLOW_PARTIAL_DATA=1``: accept local files whose row counts differ from the specs."""
    return os.environ.get(ALLOW_PARTIAL_ENV, "") in ("1", "true", "yes")


def _load_local(spec: DatasetSpec, split: str, path: Path, allow_partial: bool | None) -> list[Example]:
    """A local copy: every row parsed, the row count checked against the spec, no hub fallback."""
    if not path.exists():
        raise DataNotFoundError(f"{spec.name}/{split}: {path} does not exist. A data directory was given, so the hub "
                                f"is not tried; copy the file there, or unset the data directory to load from the hub.")
    examples, rows = [], 0
    for lineno, row in iter_jsonl(path):
        rows += 1
        defect = KNOWN_DEFECTS.get((spec.name, split, lineno))
        if defect:
            warnings.warn(f"{spec.name}: {path}:{lineno}: skipped known source defect: {defect}", stacklevel=3)
            continue
        examples.append(parse_row(spec.name, row, split, lineno, str(path)))
    expected = spec.rows.get(split)
    allowed = partial_copies_allowed() if allow_partial is None else allow_partial
    if expected is not None and rows != expected and not allowed:
        raise DataError(f"{spec.name}/{split}: {path} has {rows} rows, the dataset has {expected}. A cut or extended "
                        f"copy changes every seeded subsample; restore the file, or allow a partial copy explicitly "
                        f"(load(..., allow_partial=True) or ${ALLOW_PARTIAL_ENV}=1).")
    return examples


def _check_unique_ids(examples: list[Example], name: str, split: str) -> None:
    seen: dict[str, int] = {}
    for i, ex in enumerate(examples):
        if ex.id in seen:
            raise DataError(f"{name}/{split}: id {ex.id!r} appears twice (items {seen[ex.id] + 1} and {i + 1}); "
                            "ids must be unique (evaluations and probe records are keyed by them)")
        seen[ex.id] = i


def subsample(examples: list[Example], limit: int | None, seed: int | None) -> list[Example]:
    if limit is None or limit >= len(examples):
        return list(examples)
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if seed is None:
        return list(examples[:limit])
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]


# --------------------------------------------------------------------------------------------------
# Hub path: each adapter converts hub rows into the local layout, so parse_row() serves both.

def _hub_rows_ai2(row):  # ARC / OpenBookQA / CSQA on the hub: choices = {"label": [...], "text": [...]}
    stem = row.get("question_stem") or row["question"]
    ch = row["choices"]
    return {"id": row.get("id"), "answerKey": row["answerKey"],
            "question": {"stem": stem, "choices": [{"label": l, "text": t} for l, t in zip(ch["label"], ch["text"])]}}


def _hub_rows_date(row):
    return {"input": row["inputs"], "target_scores": dict(zip(row["multiple_choice_targets"], row["multiple_choice_scores"]))}


def _hub_rows_esnli(row):
    return {"s1": row["premise"], "s2": row["hypothesis"], "labels": NLI_OPTIONS[row["label"]],
            "preproc1_expl_1": row.get("explanation_1")}


HUB_SOURCES: dict[str, dict[str, Any]] = {
    # name: {split: [(config, hub split), ...]}, adapter
    "strategyqa": {"splits": {"train": [(None, "train")], "test": [(None, "test")]},
                   "adapter": lambda r: {"input": r["question"], "target_scores": {"Yes": int(bool(r["answer"])), "No": int(not r["answer"])},
                                         "target": ("Yes. " if r["answer"] else "No. ") + " ".join(r.get("facts") or [])}},
    "csqa": {"splits": {"train": [(None, "train")], "test": [(None, "validation")]}, "adapter": _hub_rows_ai2},
    "arc_challenge": {"splits": {s: [("ARC-Challenge", h)] for s, h in [("train", "train"), ("dev", "validation"), ("test", "test")]},
                      "adapter": _hub_rows_ai2},
    "math": {"splits": {s: [(c, s) for c in ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                                               "number_theory", "prealgebra", "precalculus")] for s in ("train", "test")},
             "adapter": lambda r: r},
    "gsm8k": {"splits": {s: [("main", s)] for s in ("train", "test")}, "adapter": lambda r: r},
    "anli": {"splits": {s: [(None, f"{s}_r{k}") for k in (1, 2, 3)] for s in ("dev", "test")},
             "adapter": lambda r: {"uid": r["uid"], "context": r["premise"], "hypothesis": r["hypothesis"],
                                   "label": "enc"[r["label"]], "reason": r.get("reason")}},
    # The hub copy has its own train/validation split, not the reasoning-teacher split of the local files.
    "date_understanding": {"splits": {"train": [("date_understanding", "train")], "test": [("date_understanding", "validation")]},
                           "adapter": _hub_rows_date},
    "boolq": {"splits": {"test": [(None, "validation")]},
              "adapter": lambda r: {"query": f"Passage: {r['passage']}\nQuestion: {r['question']}?", "choices": ["no", "yes"],
                                    "gold": int(bool(r["answer"]))}},
    "openbookqa": {"splits": {s: [("main", h)] for s, h in [("train", "train"), ("test", "test")]}, "adapter": _hub_rows_ai2},
    "esnli": {"splits": {"test": [(None, "test")]}, "adapter": _hub_rows_esnli},
}


def _load_from_hub(spec: DatasetSpec, split: str, local: Path | None) -> list[Example]:
    where = f"no local copy at {local}" if local else f"no data directory given (argument or ${DATA_DIR_ENV})"
    hint = (f"Point ${DATA_DIR_ENV} (or data_dir=) at a folder laid out as <name>/<split>.jsonl, "
            "e.g. the kit's ../shared/datasets.")
    if spec.hf_id is None or spec.name not in HUB_SOURCES:
        raise DataNotFoundError(f"{spec.name}/{split}: {where}, and this dataset has no Hugging Face hub source. {hint}")
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True") or os.environ.get("HF_DATASETS_OFFLINE") in ("1", "true"):
        raise DataNotFoundError(f"{spec.name}/{split}: {where}, and the hub is disabled (HF_HUB_OFFLINE). {hint}")
    source = HUB_SOURCES[spec.name]
    try:
        import datasets as hf_datasets
    except ImportError as exc:  # pragma: no cover - datasets is a pinned dependency
        raise DataNotFoundError(f"{spec.name}/{split}: {where}, and the 'datasets' package is missing") from exc
    examples: list[Example] = []
    for config, hub_split in source["splits"][split]:
        label = f"hub:{spec.hf_id}" + (f"/{config}" if config else "") + f"[{hub_split}]"
        try:
            ds = hf_datasets.load_dataset(spec.hf_id, config, split=hub_split)
        except Exception as exc:  # network errors come in many types; all mean the same here
            raise DataNotFoundError(f"{spec.name}/{split}: {where}, and {label} could not be loaded "
                                    f"({type(exc).__name__}: {str(exc)[:200]}). {hint}") from None
        for i, row in enumerate(ds, start=1):
            try:
                local_row = source["adapter"](row)
            except (KeyError, IndexError, TypeError) as exc:
                raise DataError(f"{spec.name}: {label}:{i}: hub row not in the expected layout ({exc})") from None
            examples.append(parse_row(spec.name, local_row, split, len(examples) + 1, label))
    return examples
