"""Settings of notebook 05: which tables' methods run, over which seeds."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..data.datasets import HELD_IN
from ..infra.settings import setting


@dataclass(frozen=True)
class ExperimentSettings:
    """Notebook 05: which groups of methods (tables and figures) run, over which seeds."""
    PREFIX: ClassVar[str] = "exp_"
    tasks: tuple[str, ...] = setting(tuple(HELD_IN), "training tasks: one model per task and method, scored on the "
                                     "task's test set and its paired OOD sets (paper: the 8 held-in tasks); each needs "
                                     "notebook 01's probes (ei_datasets); empty: train_dataset only", "paper")
    groups: tuple[str, ...] = setting(("core", "baselines", "table3", "table4", "fraction"),
                                      "method groups to run (experiments.methods.GROUPS): core, baselines, "
                                      "table3, table4, fraction", "paper")
    seeds: tuple[int, ...] = setting((0,), "training seeds (seed 0 of everything runs first)")
    seed0_only_groups: tuple[str, ...] = setting((), "groups run for seed 0 only (to fit a time budget)")
    suite_keys: tuple[str, ...] = setting((),
                                          "methods whose train_dataset model (seed 0) is also scored on the 12-dataset "
                                          "suite: one model on every dataset, beside the paper's per-task protocol")
