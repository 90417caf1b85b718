"""Settings of notebook 05: which tables' methods run, over which seeds, and where their trainings run."""
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
                                      "method groups to run (experiments.methods.GROUPS): core, figure1, "
                                      "rl-test, probe-policy, baselines, table3, table4, fraction", "paper")
    seeds: tuple[int, ...] = setting((0,), "training seeds (seed 0 of everything runs first)")
    seed0_only_groups: tuple[str, ...] = setting((), "groups run for seed 0 only (to fit a time budget)")
    suite_keys: tuple[str, ...] = setting((),
                                          "methods whose train_dataset model (seed 0) is also scored on the 12-dataset "
                                          "suite: one model on every dataset, beside the paper's per-task protocol")
    executor: str = setting("inline", "where notebook 05's trainings run (experiments.dispatch): inline (one after "
                            "another in the notebook's process), accelerate (each an `accelerate launch` of train_cli "
                            "on this node's GPUs, exp_accelerate_config) or slurm (each a SLURM job through submitit, "
                            "a warm-up's RL after it as a SLURM dependency); the notebook then evaluates and records",
                            "speed only", choices=("inline", "accelerate", "slurm"))
    accelerate_config: str = setting("", "executor accelerate: the config file (configs/accelerate/multi_gpu.yaml for "
                                     "one 8-GPU node); empty: accelerate's default; executor slurm: when set, each "
                                     "job runs its training under accelerate launch with it (the job's GPUs)", "speed only")
    slurm_partition: str = setting("", "executor slurm: the partition; empty: the cluster's default", "speed only")
    slurm_gpus: int = setting(0, "executor slurm: GPUs per training job (--gres=gpu:N)", "speed only")
    slurm_cpus: int = setting(1, "executor slurm: CPUs per training job", "speed only")
    slurm_mem_gb: int = setting(0, "executor slurm: memory per training job in GB; 0: the partition's default",
                                "speed only")
    slurm_minutes: int = setting(240, "executor slurm: time limit per training job in minutes", "speed only")
