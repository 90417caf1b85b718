"""The datasets of the paper (method.md section 5) plus the synthetic ``arith`` family: one entry each.

A :class:`DatasetSpec` holds everything about a dataset: its role in the protocol, its answer type
(which the scorer reads), its splits and their row counts, the parser of its rows (parsers.py) and
where it lives on the hub (hub.py). Adding a dataset is one entry in ``DATASETS`` plus its parser
(and hub adapter, if its hub rows differ from the local layout). Loading is in datasets.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from . import hub, parsers
from .hub import HubSource, one_part_each

# (row, split, line_number) -> Example fields; see parsers.py
RowParser = Callable[[Mapping[str, Any], str, int], dict]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    role: str  # "held-in" | "ood" | "synthetic"
    answer_type: str  # "yesno" | "letter" | "number" | "latex"
    splits: tuple[str, ...]
    rows: Mapping[str, int]  # row counts of the local copies (MANIFEST.md)
    parser: RowParser | None = None  # None only for the synthetic family, which is generated (synthetic.py)
    hub: HubSource | None = None  # None: no hub source the kit reads (a local copy is needed)
    paired_with: str | None = None  # for OOD sets: the held-in task whose model is tested on it
    title: str = ""

    def __post_init__(self):
        if (self.parser is None) != (self.role == "synthetic"):
            raise ValueError(f"{self.name}: a dataset read from files needs a parser, a synthetic one has none")

    @property
    def hf_id(self) -> str | None:
        """The Hugging Face hub id, or None when the kit reads no hub source for this dataset."""
        return self.hub.hf_id if self.hub else None


DATASETS: dict[str, DatasetSpec] = {s.name: s for s in [
    DatasetSpec("strategyqa", "held-in", "yesno", ("train", "test"), {"train": 1603, "test": 687},
                parser=parsers.parse_strategyqa, title="StrategyQA",
                hub=HubSource("ChilleD/StrategyQA", one_part_each(None, train="train", test="test"),
                              hub.strategyqa_row)),
    DatasetSpec("csqa", "held-in", "letter", ("train", "test"), {"train": 9741, "test": 1221},
                parser=parsers.parse_multiple_choice, title="CommonsenseQA",
                hub=HubSource("tau/commonsense_qa", one_part_each(None, train="train", test="validation"),
                              hub.ai2_row)),
    DatasetSpec("arc_challenge", "held-in", "letter", ("train", "dev", "test"),
                {"train": 1119, "dev": 299, "test": 1172}, parser=parsers.parse_arc, title="ARC-Challenge",
                hub=HubSource("allenai/ai2_arc",
                              one_part_each("ARC-Challenge", train="train", dev="validation", test="test"),
                              hub.ai2_row)),
    DatasetSpec("math", "held-in", "latex", ("train", "test"), {"train": 7500, "test": 5000},
                parser=parsers.parse_math, title="MATH",
                hub=HubSource("EleutherAI/hendrycks_math", hub.math_splits())),
    DatasetSpec("gsm8k", "held-in", "number", ("train", "test"), {"train": 7473, "test": 1319},
                parser=parsers.parse_gsm8k, title="GSM8K",
                hub=HubSource("openai/gsm8k", one_part_each("main", train="train", test="test"))),
    DatasetSpec("tabmwp", "held-in", "latex", ("dev", "test"), {"dev": 1000, "test": 1000},
                parser=parsers.parse_tabmwp, title="TabMWP"),
    DatasetSpec("anli", "held-in", "letter", ("dev", "test"), {"dev": 3200, "test": 3200},
                parser=parsers.parse_anli, title="ANLI",
                hub=HubSource("facebook/anli", hub.anli_splits(), hub.anli_row)),
    # The hub copy has its own train/validation split, not the reasoning-teacher split of the local files.
    DatasetSpec("date_understanding", "held-in", "letter", ("train", "test"), {"train": 258, "test": 111},
                parser=parsers.parse_date, title="Date Understanding",
                hub=HubSource("tasksource/bigbench",
                              one_part_each("date_understanding", train="train", test="validation"),
                              hub.date_row)),
    DatasetSpec("boolq", "ood", "yesno", ("test",), {"test": 3270}, parser=parsers.parse_boolq,
                paired_with="strategyqa", title="BoolQ",
                hub=HubSource("google/boolq", one_part_each(None, test="validation"), hub.boolq_row)),
    DatasetSpec("openbookqa", "ood", "letter", ("train", "test"), {"train": 4957, "test": 500},
                parser=parsers.parse_multiple_choice, paired_with="arc_challenge", title="OpenBookQA",
                hub=HubSource("allenai/openbookqa", one_part_each("main", train="train", test="test"),
                              hub.ai2_row)),
    DatasetSpec("esnli", "ood", "letter", ("test",), {"test": 9824}, parser=parsers.parse_esnli,
                paired_with="anli", title="e-SNLI",
                hub=HubSource("esnli", one_part_each(None, test="test"), hub.esnli_row)),
    DatasetSpec("gsm8k_rev", "ood", "number", ("test",), {"test": 777}, parser=parsers.parse_gsm8k_rev,
                paired_with="gsm8k", title="GSM8K-Reversal"),
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
    test set, then every OOD set paired with it (``paired_with``: BoolQ with StrategyQA, ...).

    >>> task_eval_sets("strategyqa")
    ['strategyqa', 'boolq']
    """
    if task not in DATASETS:
        raise ValueError(f"unknown dataset {task!r}; known: {', '.join(DATASETS)}")
    return [task] + [n for n, s in DATASETS.items() if s.paired_with == task]
