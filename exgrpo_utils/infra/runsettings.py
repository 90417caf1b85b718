"""The settings every stage of one run shares (student, task, generation, tracking, ``fresh``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .settings import setting

# what models.registry.pick_dtype accepts, and models.generation.BACKENDS (tests keep them equal; infra
# holds no ML, so the lists are repeated here, not imported)
DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
BACKENDS = ("fast", "transformers", "vllm")


@dataclass(frozen=True)
class RunSettings:
    """What every stage of one run shares."""
    PREFIX: ClassVar[str] = ""
    run_name: str = setting("run", "outputs go to results/runs/<run_name>/ (the runner sets it from --run-name "
                            "or the preset)", "run")
    student: str = setting("qwen2.5-7b-instruct", "the student: a registry name (models.registry.MODELS), a local "
                           "checkpoint or adapter (paper: Qwen2.5-7B-Instruct, Gemma-7B-it)", "paper")
    train_dataset: str = setting("gsm8k", "the held-in task the student is trained on (paper: one model per task)",
                                 "paper")
    data_dir: str = setting("", "local datasets (<dir>/<name>/<split>.jsonl); empty: $EXGRPO_DATA_DIR, else the "
                            "Hugging Face hub", "run")
    dtype: str = setting("auto", "generation dtype: auto (bf16 on GPUs and AMX CPUs, else float32), "
                         "bfloat16, float16 or float32", choices=DTYPES)
    backend: str = setting("fast", "generation backend of the evaluations: fast (the kit's engine: continuous "
                           "batching, CPU/GPU), transformers (plain generate: the exact reference) or vllm (GPU); "
                           "part of an evaluation's identity (they need not agree token for token)",
                           choices=BACKENDS)
    sample_seed: int = setting(0, "seed of the fixed test subsamples (when a limit is set)")
    fresh: bool = setting(False, "a training or evaluation folder made from other inputs (settings, data, model) is "
                          "moved aside (<folder>.replaced-<n>) and redone, instead of stopping the run", "run")
    report_to: tuple[str, ...] = setting(("tensorboard",), "experiment trackers of every trainer: tensorboard "
                                         "(written to <training folder>/tensorboard), wandb, trackio; empty: none",
                                         "run")
