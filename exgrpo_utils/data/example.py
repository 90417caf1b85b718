"""The one item type every stage passes around: a question, its canonical gold answer, its options."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

LETTERS = "ABCDEFGH"  # option letters, in order


@dataclass(frozen=True)
class Example:
    id: str
    dataset: str
    question: str
    answer: str
    choices: tuple[str, ...] | None = None
    rationale: str | None = None
    # Extra structure some sources carry (the synthetic family's program, TabMWP's question type...).
    meta: Mapping[str, Any] | None = field(default=None, compare=False, hash=False, repr=False)

    def to_dict(self) -> dict:
        return {
            "id": self.id, "dataset": self.dataset, "question": self.question, "answer": self.answer,
            "choices": list(self.choices) if self.choices is not None else None,
            "rationale": self.rationale, "meta": dict(self.meta) if self.meta else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Example":
        return cls(id=d["id"], dataset=d["dataset"], question=d["question"], answer=d["answer"],
                   choices=tuple(d["choices"]) if d.get("choices") is not None else None,
                   rationale=d.get("rationale"), meta=d.get("meta"))
