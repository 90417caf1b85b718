"""Settings of the evaluations: the quick one on the training task and its pair (notebooks 02, 03, 05)
and the 12-dataset suite (notebooks 04, 05)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..data.datasets import PAPER_DATASETS
from ..infra.settings import setting


@dataclass(frozen=True)
class TaskEvalSettings:
    """Evaluation on the training task and its paired OOD set, before and after training."""
    PREFIX: ClassVar[str] = "eval_"
    datasets: tuple[str, ...] = setting(("gsm8k", "gsm8k_rev"), "test sets of the quick evaluation "
                                        "(the training task and its OOD pair)", "paper")
    limit: int | None = setting(None, "seeded subsample of test items per dataset, null for all", "paper")
    max_new_tokens: int = setting(1024, "greedy token budget per answer (paper lineage: 1024)", "paper")
    batch_size: int = setting(64, "generation batch size", "speed only")


@dataclass(frozen=True)
class SuiteSettings:
    """Evaluation on the paper's 12 datasets (method.md section 5)."""
    PREFIX: ClassVar[str] = "suite_"
    models: tuple[str, ...] = setting(("zero-shot", "sft", "exgrpo"),
                                      "notebook 04's models: method keys of this run (zero-shot is the student) "
                                      "or label=path entries (a checkpoint, adapter or registry name)", "run")
    datasets: tuple[str, ...] = setting(tuple(PAPER_DATASETS), "datasets (paper: 8 held-in + 4 OOD)", "paper")
    split: str = setting("test", "evaluation split", "paper")
    limit: int | None = setting(None, "seeded subsample of test items per dataset, null for all", "paper")
    max_new_tokens: int = setting(1024, "greedy token budget per answer (paper lineage: 1024)", "paper")
    batch_size: int = setting(256, "generation batch size; items of all datasets share batches", "speed only")
