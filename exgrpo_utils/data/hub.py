"""Where a dataset lives on the Hugging Face hub, and how its rows become rows of the local layout.

A :class:`HubSource` names the hub id, the hub (config, split) parts each kit split is read from, and
an adapter that converts one hub row into the local layout, so the dataset's one parser (parsers.py)
serves both paths. Reading the hub is the loader's job (datasets.py); nothing here touches the
network or imports the ``datasets`` package.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .parsers import NLI_OPTIONS

HubPart = tuple[str | None, str]  # (config, hub split)
Row = Mapping[str, Any]

MATH_CONFIGS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                "number_theory", "prealgebra", "precalculus")


def same_row(row: Row) -> Row:
    """The adapter of a hub copy whose rows already have the local layout."""
    return row


@dataclass(frozen=True)
class HubSource:
    hf_id: str
    splits: Mapping[str, tuple[HubPart, ...]]  # kit split -> the hub parts read, in order
    adapter: Callable[[Row], Row] = same_row  # hub row -> local row; KeyError/IndexError/TypeError if off-layout


def one_part_each(config: str | None, **kit_to_hub: str) -> dict[str, tuple[HubPart, ...]]:
    """Splits for a source where each kit split is one hub split of one config.

    >>> one_part_each(None, train="train", test="validation")
    {'train': ((None, 'train'),), 'test': ((None, 'validation'),)}
    """
    return {kit: ((config, hub),) for kit, hub in kit_to_hub.items()}


def math_splits() -> dict[str, tuple[HubPart, ...]]:
    """Hendrycks MATH on the hub: each kit split is the same split of all seven subject configs."""
    return {s: tuple((c, s) for c in MATH_CONFIGS) for s in ("train", "test")}


def anli_splits() -> dict[str, tuple[HubPart, ...]]:
    """ANLI on the hub: each kit split (dev, test) is the concatenation of rounds 1-3."""
    return {s: tuple((None, f"{s}_r{k}") for k in (1, 2, 3)) for s in ("dev", "test")}


# --------------------------------------------------------------------------------------------------
# Adapters: one hub row -> one row in the layout of the local copy.

def strategyqa_row(row: Row) -> Row:
    """ChilleD/StrategyQA: boolean answer and a list of facts -> BIG-bench target_scores and target."""
    question, answer = row["question"], row["answer"]
    return {"input": question,
            "target_scores": {"Yes": int(bool(answer)), "No": int(not answer)},
            "target": ("Yes. " if answer else "No. ") + " ".join(row.get("facts") or [])}


def ai2_row(row: Row) -> Row:
    """ARC / OpenBookQA / CSQA on the hub: choices = {"label": [...], "text": [...]}."""
    stem = row.get("question_stem") or row["question"]
    ch = row["choices"]
    key = row["answerKey"]
    choices = [{"label": label, "text": text} for label, text in zip(ch["label"], ch["text"])]
    return {"id": row.get("id"), "answerKey": key, "question": {"stem": stem, "choices": choices}}


def anli_row(row: Row) -> Row:
    """facebook/anli: integer label 0/1/2 -> the local e/n/c letter."""
    return {"uid": row["uid"], "context": row["premise"], "hypothesis": row["hypothesis"],
            "label": "enc"[row["label"]], "reason": row.get("reason")}


def date_row(row: Row) -> Row:
    """tasksource/bigbench: parallel target and score lists -> BIG-bench target_scores."""
    question = row["inputs"]
    return {"input": question, "target_scores": dict(zip(row["multiple_choice_targets"], row["multiple_choice_scores"]))}


def boolq_row(row: Row) -> Row:
    """google/boolq: passage, question, boolean answer -> the local query/choices/gold layout."""
    return {"query": f"Passage: {row['passage']}\nQuestion: {row['question']}?", "choices": ["no", "yes"],
            "gold": int(bool(row["answer"]))}


def esnli_row(row: Row) -> Row:
    """esnli: integer label -> the label word of the local copy."""
    return {"s1": row["premise"], "s2": row["hypothesis"], "labels": NLI_OPTIONS[row["label"]],
            "preproc1_expl_1": row.get("explanation_1")}
