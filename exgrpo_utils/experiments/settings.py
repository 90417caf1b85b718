"""Settings of notebook 05: which tables' methods run, over which seeds."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..common.settings import setting


@dataclass(frozen=True)
class ExperimentSettings:
    """Notebook 05: which groups of methods (tables and figures) run, over which seeds."""
    PREFIX: ClassVar[str] = "exp_"
    groups: tuple[str, ...] = setting(("core", "baselines", "table3", "table4", "fraction"),
                                      "method groups to run (experiments.methods.GROUPS): core, baselines, "
                                      "table3, table4, fraction", "paper")
    seeds: tuple[int, ...] = setting((0,), "training seeds (seed 0 of everything runs first)")
    seed0_only_groups: tuple[str, ...] = setting((), "groups run for seed 0 only (to fit a time budget)")
    suite_keys: tuple[str, ...] = setting(("zero-shot", "sft", "sft-grpo", "exgrpo", "skd", "dss", "rephrase",
                                           "question-aug", "answer-aug", "revthink", "divide-conquer"),
                                          "methods also evaluated on the 12-dataset suite (seed 0)", "paper")
