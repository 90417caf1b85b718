"""Typed Explanatory Inversion records: what became of each item and each of its probes (method.md section 2).

``ei_records.jsonl`` holds one ``ItemRecord`` per line, its fate as ``kept`` plus a ``drop_reason``
text, and a ``ProbeEntry`` per rule, its fate as a ``status`` text. The JSON is unchanged from the
kit's first releases (``to_dict`` writes it key for key; ``from_dict`` reads it back and fails with
the line's problem on a text it does not know), so the committed runs load as they are. Code that
needs a fate asks the enums, never the texts:

>>> ProbeStatus.parse("malformed: no parseable answer")
(<ProbeStatus.MALFORMED: 'malformed'>, 'no parseable answer')
>>> ProbeEntry.from_dict({"rule": "why", "probe": "Why 5?", "status": "kept"}).kept
True
>>> ItemStatus.parse("Eq. 2: too easy (Λ = N' = 3)")
(<ItemStatus.TOO_EASY: 'Eq. 2: too easy'>, "Λ = N' = 3")
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from ..data.example import Example
from ..infra.files import iter_jsonl


class ProbeStatus(Enum):
    """The fate of one probe; the record stores it as ``text(detail)``."""

    KEPT = "kept"  # answered, and passed Eq. 1
    NOT_APPLICABLE = "not applicable"  # the rule does not fit the item: no probe written
    MALFORMED = "malformed"  # empty, restates the question, or no parseable teacher answer
    DROPPED_EQ1 = "dropped: Eq. 1"  # the probe derails the original question (Eq. 1)

    def text(self, detail: str | None = None) -> str:
        """The stored form.

        >>> ProbeStatus.DROPPED_EQ1.text(EQ1_DETAIL), ProbeStatus.KEPT.text()
        ('dropped: Eq. 1 (the probe derails the original question)', 'kept')
        """
        if self is ProbeStatus.KEPT:
            return self.value
        if self is ProbeStatus.DROPPED_EQ1:
            return f"{self.value} ({detail or ''})"
        return f"{self.value}: {detail or ''}"

    @classmethod
    def parse(cls, text: str) -> tuple["ProbeStatus", str | None]:
        """(status, detail) of a stored ``status`` text; ValueError on any other text."""
        if text == cls.KEPT.value:
            return cls.KEPT, None
        m = _PROBE_TEXT.fullmatch(text or "")
        if m is None:
            raise ValueError(f"unknown probe status {text!r} (expected 'kept', 'not applicable: ...', "
                             "'malformed: ...' or 'dropped: Eq. 1 (...)')")
        if m["eq1"] is not None:
            return cls.DROPPED_EQ1, m["eq1"]
        return cls(m["kind"]), m["detail"]


_PROBE_TEXT = re.compile(r"(?:(?P<kind>not applicable|malformed): (?P<detail>.*))|(?:dropped: Eq\. 1 \((?P<eq1>.*)\))",
                         re.DOTALL)
EQ1_DETAIL = "the probe derails the original question"
NO_ANSWER = "no parseable answer"


@dataclass(frozen=True)
class ProbeDraft:
    """What a teacher wrote for one rule and item: the probe's text, or None with the reason and the
    status saying why (``NOT_APPLICABLE``: the rule does not fit the item; ``MALFORMED``: the reply
    was empty or restated the question). ``gold`` and ``explanation``: the exact answer and its
    worked steps, when the teacher knows them (the program teacher); ``states_answer``: the teacher
    knows its probe states the original question's answer (the program teacher's inversion probe
    gives the final count as a premise), whatever the text test ``inversion.reveals_answer`` finds.

    >>> ProbeDraft.not_applicable("hypothesis", "rule not applicable to this item").failure
    <ProbeStatus.NOT_APPLICABLE: 'not applicable'>
    >>> ProbeDraft("why", None, "empty probe").failure, ProbeDraft("why", "Why 5?").failure
    (<ProbeStatus.MALFORMED: 'malformed'>, None)
    """
    rule: str
    text: str | None
    reason: str | None = None
    gold: str | None = None
    explanation: tuple[str, ...] | None = None
    status: ProbeStatus | None = None  # for a draft without text: NOT_APPLICABLE, else MALFORMED
    states_answer: bool = False

    @classmethod
    def not_applicable(cls, rule: str, reason: str) -> "ProbeDraft":
        return cls(rule, None, reason, status=ProbeStatus.NOT_APPLICABLE)

    @property
    def failure(self) -> ProbeStatus | None:
        """The status of a draft without text (None when the teacher wrote a probe)."""
        if self.text is not None:
            return None
        return self.status or ProbeStatus.MALFORMED


class ItemStatus(Enum):
    """The fate of one item (original question); the record stores ``kept`` and ``drop_reason(detail)``."""

    KEPT = "kept"
    TEACHER_WRONG = "teacher CoT is wrong"  # ei_require_teacher_correct (kit default)
    NO_CONSISTENT_PROBE = "Eq. 2: no probe survived Eq. 1 (N' = 0)"
    TOO_EASY = "Eq. 2: too easy"  # Λ = N', or Λ above ei_max_correct
    TOO_HARD = "Eq. 2: too hard"  # Λ below ei_min_correct

    def drop_reason(self, detail: str | None = None) -> str | None:
        """The stored ``drop_reason``: None for a kept item.

        >>> ItemStatus.TOO_HARD.drop_reason("Λ = 0 < 1"), ItemStatus.KEPT.drop_reason()
        ('Eq. 2: too hard (Λ = 0 < 1)', None)
        """
        if self is ItemStatus.KEPT:
            return None
        return f"{self.value} ({detail})" if detail is not None else self.value

    @classmethod
    def parse(cls, drop_reason: str | None) -> tuple["ItemStatus", str | None]:
        """(status, detail) of a stored ``drop_reason`` (None: kept); ValueError on any other text."""
        if drop_reason is None:
            return cls.KEPT, None
        for status in list(cls)[1:]:
            if drop_reason == status.value:
                return status, None
            if drop_reason.startswith(status.value + " (") and drop_reason.endswith(")"):
                return status, drop_reason[len(status.value) + 2:-1]
        raise ValueError(f"unknown drop reason {drop_reason!r} (expected one of {[s.value for s in cls][1:]})")


# The probe fields the trainings read (``probe_dataset.jsonl``).
TRAINING_FIELDS = ("rule", "probe", "reveals_answer", "teacher_response", "teacher_answer", "answer_type")


@dataclass
class ProbeEntry:
    """One rule's probe for one item and what became of it; ``status`` None while still in the pipeline."""

    rule: str
    probe: str | None
    reveals_answer: bool = False
    teacher_response: str | None = None
    teacher_answer: str | None = None
    answer_type: str | None = None
    recheck: str | None = None  # the teacher's Eq. 1 answer to Q with the probe as context
    student_response: str | None = None  # Eq. 2
    student_correct: bool | None = None
    status: ProbeStatus | None = None
    detail: str | None = None  # why, for a probe that is not kept

    @property
    def kept(self) -> bool:
        return self.status is ProbeStatus.KEPT

    def mark(self, status: ProbeStatus, detail: str | None = None) -> "ProbeEntry":
        self.status, self.detail = status, detail
        return self

    def to_dict(self) -> dict:
        """The JSON object of ``ei_records.jsonl``, keys in their stored order."""
        return {"rule": self.rule, "probe": self.probe, "reveals_answer": self.reveals_answer,
                "teacher_response": self.teacher_response, "teacher_answer": self.teacher_answer,
                "answer_type": self.answer_type, "recheck": self.recheck, "student_response": self.student_response,
                "student_correct": self.student_correct,
                "status": self.status.text(self.detail) if self.status is not None else None}

    def training_view(self) -> dict:
        """The fields ``probe_dataset.jsonl`` keeps of a kept probe."""
        return {k: getattr(self, k) for k in TRAINING_FIELDS}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ProbeEntry":
        status, detail = ProbeStatus.parse(d["status"]) if d.get("status") is not None else (None, None)
        return cls(rule=d["rule"], probe=d.get("probe"), reveals_answer=d.get("reveals_answer", False),
                   teacher_response=d.get("teacher_response"), teacher_answer=d.get("teacher_answer"),
                   answer_type=d.get("answer_type"), recheck=d.get("recheck"),
                   student_response=d.get("student_response"), student_correct=d.get("student_correct"),
                   status=status, detail=detail)


@dataclass
class ItemRecord:
    """One original question through stage 1; ``status`` None while still in the pipeline."""

    example: Example = field(repr=False, compare=False)
    item: dict  # ``example`` as stored (``Example.to_dict``)
    teacher_cot: str | None = None
    teacher_correct: bool | None = None
    probes: list[ProbeEntry] = field(default_factory=list)
    n_student_correct: int | None = None  # Λ; None when Eq. 2 was not applied
    status: ItemStatus | None = None
    detail: str | None = None

    @classmethod
    def from_example(cls, ex: Example) -> "ItemRecord":
        return cls(example=ex, item=ex.to_dict())

    @property
    def id(self) -> str:
        return self.item["id"]

    @property
    def dataset(self) -> str:
        return self.item["dataset"]

    @property
    def n_consistent(self) -> int:
        """N': the probes that passed Eq. 1."""
        return sum(p.kept for p in self.probes)

    @property
    def kept(self) -> bool:
        return self.status is ItemStatus.KEPT

    @property
    def drop_reason(self) -> str | None:
        return self.status.drop_reason(self.detail) if self.status is not None else None

    def kept_probes(self) -> list[ProbeEntry]:
        return [p for p in self.probes if p.kept]

    def decide(self, status: ItemStatus, detail: str | None = None) -> "ItemRecord":
        self.status, self.detail = status, detail
        return self

    def to_dict(self) -> dict:
        """The JSON object of ``ei_records.jsonl``, keys in their stored order."""
        return {"id": self.id, "dataset": self.dataset, "item": self.item, "teacher_cot": self.teacher_cot,
                "teacher_correct": self.teacher_correct, "probes": [p.to_dict() for p in self.probes],
                "n_consistent": self.n_consistent, "n_student_correct": self.n_student_correct,
                "kept": self.kept, "drop_reason": self.drop_reason}

    def training_view(self) -> dict:
        """The line of ``probe_dataset.jsonl`` for a kept item: the item with its kept probes."""
        return {"id": self.id, "dataset": self.dataset, "item": self.item, "teacher_cot": self.teacher_cot,
                "probes": [p.training_view() for p in self.kept_probes()]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ItemRecord":
        """A stored record; ValueError when its fields disagree with each other or a fate is unknown."""
        status, detail = ItemStatus.parse(d.get("drop_reason"))
        if d.get("kept") is not None and bool(d["kept"]) != (status is ItemStatus.KEPT):
            if d["kept"] or d.get("drop_reason") is not None:
                raise ValueError(f"record {d.get('id')!r}: kept={d['kept']} but drop_reason={d.get('drop_reason')!r}")
            status = None  # neither kept nor dropped: written before its fate was decided
        if d.get("id") != d["item"].get("id") or d.get("dataset") != d["item"].get("dataset"):
            raise ValueError(f"record {d.get('id')!r}: id/dataset differ from its item's")
        rec = cls(example=Example.from_dict(d["item"]), item=dict(d["item"]), teacher_cot=d.get("teacher_cot"),
                  teacher_correct=d.get("teacher_correct"), probes=[ProbeEntry.from_dict(p) for p in d["probes"]],
                  n_student_correct=d.get("n_student_correct"), status=status, detail=detail)
        if "n_consistent" in d and d["n_consistent"] != rec.n_consistent:
            raise ValueError(f"record {rec.id!r}: n_consistent={d['n_consistent']} but {rec.n_consistent} kept probes")
        return rec


def as_records(records: Iterable[ItemRecord | Mapping[str, Any]]) -> list[ItemRecord]:
    """Typed records from typed ones or from their stored dicts (``ItemRecord.from_dict``)."""
    return [r if isinstance(r, ItemRecord) else ItemRecord.from_dict(r) for r in records]


def load_records(path: str | Path) -> list[ItemRecord]:
    """Read ``ei_records.jsonl`` as typed records; a ValueError names the file and line of a bad one."""
    out = []
    for lineno, d in iter_jsonl(Path(path)):
        try:
            out.append(ItemRecord.from_dict(d))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}:{lineno}: not an EI record ({type(exc).__name__}: {exc})") from exc
    return out


# ---------------------------------------------------------------------------------------------
# Outputs and statistics: each takes typed records or their stored dicts (``as_records``).

def probe_dataset(records: Sequence[ItemRecord | dict]) -> list[dict]:
    """The kept questions with their kept probes: what SFT and ExGRPO train on."""
    return [rec.training_view() for rec in as_records(records) if rec.kept]


def item_stats(records: Sequence[ItemRecord | dict]):
    """Per dataset: items in, teacher-correct, probes generated, kept by Eq. 1, items kept by Eq. 2."""

    records = as_records(records)
    rows = []
    for name in sorted({r.dataset for r in records}):
        recs = [r for r in records if r.dataset == name]
        probes = [p for r in recs for p in r.probes]
        reasons = Counter(r.drop_reason for r in recs if not r.kept)
        rows.append({"dataset": name, "items_in": len(recs), "teacher_correct": sum(bool(r.teacher_correct) for r in recs),
                     "probes_attempted": len(probes), "probes_generated": sum(p.probe is not None for p in probes),
                     "probes_answered": sum(p.teacher_answer is not None for p in probes),
                     "probes_kept_eq1": sum(p.kept for p in probes),
                     "items_with_kept_probes": sum(r.n_consistent > 0 for r in recs),
                     "items_kept_eq2": sum(r.kept for r in recs),
                     "probes_in_kept_items": sum(r.n_consistent for r in recs if r.kept),
                     **{f"dropped: {k}": v for k, v in sorted(reasons.items())}})
    return pd.DataFrame(rows)


def rule_stats(records: Sequence[ItemRecord | dict], rule_ids: Sequence[str]):
    """Per dataset and rule: generated, stating the original answer, not applicable, malformed, dropped
    by Eq. 1, kept by Eq. 1, student-correct, in kept items."""

    records = as_records(records)
    rows = []
    for name in sorted({r.dataset for r in records}):
        recs = [r for r in records if r.dataset == name]
        for rule in rule_ids:
            ps = [(r, p) for r in recs for p in r.probes if p.rule == rule]
            status = Counter(p.status for _, p in ps)
            kept = [p for _, p in ps if p.kept]
            rows.append({"dataset": name, "rule": rule, "attempted": len(ps),
                         "generated": sum(p.probe is not None for _, p in ps),
                         "reveals_answer": sum(bool(p.reveals_answer) for _, p in ps),
                         "not_applicable": status[ProbeStatus.NOT_APPLICABLE], "malformed": status[ProbeStatus.MALFORMED],
                         "failed_eq1": status[ProbeStatus.DROPPED_EQ1], "kept_eq1": len(kept),
                         "student_correct": sum(bool(p.student_correct) for p in kept),
                         "in_kept_items": sum(p.kept for r, p in ps if r.kept)})
    return pd.DataFrame(rows)
