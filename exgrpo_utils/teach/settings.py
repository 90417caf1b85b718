"""Settings of stage 1, Explanatory Inversion (notebook 01; the teacher settings serve notebook 05 too)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..data.datasets import HELD_IN
from ..infra.settings import setting


@dataclass(frozen=True)
class TeacherSettings:
    """The teacher that writes chain-of-thought, probes and the baselines' data (one cached interface)."""
    PREFIX: ClassVar[str] = ""
    teacher: str = setting("openai", "program (exact, synthetic arith), openai (any OpenAI-compatible server), "
                           "transformers (local model) or vllm (GPU)", "paper")
    teacher_model: str = setting("gemini-1.5-pro", "model name of an LLM teacher (paper: Gemini-1.5-Pro; "
                                 "alternative Llama-3-70B-Instruct behind vllm serve)", "paper")
    teacher_base_url: str = setting("https://generativelanguage.googleapis.com/v1beta/openai",
                                    "OpenAI-compatible endpoint of teacher openai", "run")
    teacher_serve: bool = setting(False, "teacher openai only: serve teacher_model (a registry name or local checkpoint) "
                                  "on loopback with the kit's OpenAI-compatible server for the notebook's teacher calls, "
                                  "which then go over HTTP as to a remote API (paper-mini's stand-in teacher); "
                                  "teacher_base_url is then unused", "run")
    teacher_api_key_env: str = setting("GEMINI_API_KEY", "NAME of the environment variable holding the API key "
                                       "(never the key itself)", "run")
    teacher_max_in_flight: int = setting(16, "concurrent requests to an HTTP teacher", "speed only")
    teacher_max_new_tokens: int = setting(1024, "teacher token budget per reply")


@dataclass(frozen=True)
class EISettings:
    """Explanatory Inversion and its two filters (method.md section 2, Eq. 1 and Eq. 2)."""
    PREFIX: ClassVar[str] = "ei_"
    datasets: tuple[str, ...] = setting(tuple(HELD_IN), "datasets whose training items get probes "
                                        "(paper: the 8 held-in tasks)", "paper")
    split: str = setting("train", "split the probes are built from (dev where a dataset has no train split)", "paper")
    n_items: int | None = setting(None, "training items per dataset, null for all", "paper")
    rules_file: str = setting("", "YAML file of EI rules; empty: configs/rules/ei_rules.yaml", "run")
    rules: tuple[str, ...] = setting((), "subset of rule ids, empty for all 10 (paper: N = 10)", "paper")
    require_teacher_correct: bool = setting(True, "keep only items whose teacher CoT is correct (RevThink practice)")
    min_correct: int = setting(0, "Eq. 2: drop a question whose student gets fewer than this many of its N' probes "
                               "right (0: no lower bound)")
    max_correct: int | None = setting(None, "Eq. 2: drop a question whose student gets more than this many right; "
                                      "null or -1: no explicit bound (Λ = N', too easy, is always dropped)")
    student_max_new_tokens: int = setting(1024, "token budget of the untrained student's answers in Eq. 2 (greedy)")
    student_batch_size: int = setting(64, "generation batch size of the Eq. 2 student pass", "speed only")
    test_items: int = setting(0, "EI-Test (Figure 1): test questions of each dataset made into EI probes as the "
                              "training probes are (no Eq. 2), never trained on, and scored for every model of "
                              "notebook 05; 0: no EI-Test")
