"""Settings of the training stages: SFT warm-up (Eq. 3), ExGRPO and plain GRPO (Eq. 4-8), On-Policy
Distillation. Every field is part of what a training run's summary records (and so of whether a
finished run may be reused); settings that cannot change a result (``report_to``) are arguments."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..infra.settings import setting


@dataclass(frozen=True)
class SFTSettings:
    """SFT warm-up on the probe dataset (method.md section 3, Eq. 3), and every SFT baseline."""
    PREFIX: ClassVar[str] = "sft_"
    epochs: float = setting(3.0, "passes over the SFT rows", "paper")
    include_original_cot: bool = setting(True, "also train on the original (Q, R_T, A) items")
    rules: tuple[str, ...] = setting((), "probes of these rules only (Table 4's single-rule SFT); empty: all rules")
    data_fraction: float = setting(1.0, "fraction of the questions kept, seeded (Figure 4 varies it)", "paper")
    lora: bool = setting(True, "LoRA adapter; false: full fine-tuning")
    lora_r: int = setting(32, "LoRA rank")
    lora_alpha: int = setting(64, "LoRA alpha")
    lora_dropout: float = setting(0.05, "LoRA dropout")
    learning_rate: float = setting(2e-4, "peak learning rate, cosine schedule (about 1e-5 for full fine-tuning)")
    batch_size: int = setting(8, "rows per device and step")
    gradient_accumulation_steps: int = setting(1, "steps accumulated per optimiser update")
    max_length: int = setting(2048, "tokens per row; longer rows are cut")
    group_by_length: bool = setting(True, "batches of rows of similar length (less padding: "
                                    "benchmarks/bench_sft.py); false: random batches")
    max_steps: int = setting(-1, "positive: stop after this many steps instead of after the epochs")
    save_steps: int = setting(50, "checkpoint interval in steps (a rerun resumes from the last)", "speed only")
    logging_steps: int = setting(1, "log interval in steps", "speed only")
    seed: int = setting(0, "training seed (data order, LoRA init, subsampling)")
    bf16: bool | None = setting(None, "null: bf16 weights where the hardware is fast at it (GPU autocast; CPU "
                                "with AMX), else float32; true/false force it")


@dataclass(frozen=True)
class ExGRPOSettings:
    """ExGRPO (method.md section 4): dialogues, DSU bonus, clipped surrogate with KL, aux SFT loss."""
    PREFIX: ClassVar[str] = "rl_"
    mode: str = setting("exgrpo", "exgrpo (probe dialogues + DSU bonus) or grpo (R_base only, each probe and "
                        "question an independent sample: the ablation)", "paper")
    k: int = setting(5, "probes per Scenario A dialogue (paper: about 5)", "paper")
    G: int = setting(8, "rollouts per question, half Scenario A and half Scenario B")
    delta: float = setting(0.5, "δ: size of the DSU bonus (Eq. 5); 0 turns the bonus off (an ablation)")
    nu: float = setting(1.0, "ν >= 1: margin of the DSU condition (Eq. 5)")
    scale_rewards: str = setting("group", "Eq. 7's scaling of the rewards into advantages, after subtracting the group "
                                 "mean: group (divide by the group's standard deviation, the paper's Eq. 7 and TRL's "
                                 "default), batch (by the step's) or none (no division: a DSU bonus on a group "
                                 "whose correct rollouts are all full dialogues then still acts)",
                                 choices=("group", "batch", "none"))
    beta: float = setting(0.04, "β: weight of the KL term to the SFT model (Eq. 7)")
    epsilon: float = setting(0.2, "ε: clip range of the surrogate (Eq. 7)")
    aux_lambda: float = setting(0.1, "λ: weight of the aux SFT loss (Eq. 8); 0 disables it")
    temperature: float = setting(1.0, "rollout sampling temperature")
    probe_answers: str = setting("student", "who answers the probe turns of a rollout: student or teacher")
    max_probe_tokens: int = setting(256, "token budget of each probe answer in a rollout")
    max_final_tokens: int = setting(1024, "token budget of the final answer in a rollout")
    rollout_backend: str = setting("fast", "how rollouts are sampled without vLLM: fast (the kit's engine: all "
                                   "rollouts of a step together, each dialogue's KV cache kept across turns) or "
                                   "generate (transformers generate, one turn of every dialogue at a time, the "
                                   "dialogue re-encoded each turn; grpo mode: TRL's own generation)",
                                   choices=("fast", "generate"))
    revealing_probes: str = setting("allow", "probes that state the original question's answer "
                                    "(reveals_answer): allow (the paper filters no probe by what it states; its own "
                                    "example probe states the answer; the cpu-rl run measured no reason to depart, "
                                    "docs/method.md) or exclude (Table 3's other row: the DSU bonus can then not "
                                    "reward copying an answer the dialogue showed); applies to both modes",
                                    source="paper", choices=("allow", "exclude"))
    include_original_questions: bool = setting(True, "mode grpo: the original questions are samples too")
    questions_per_step: int = setting(1, "original questions per optimisation step, in both modes: exgrpo samples "
                                      "G dialogues of each; grpo samples G answers to each question and to k of its "
                                      "probes (so both modes see the same questions at every step). A step's questions "
                                      "are rolled out together and updated one question at a time (accumulated "
                                      "micro-batches: the memory of one question)")
    questions: int = setting(0, "positive: RL trains on this many of its questions, a seeded draw per training seed "
                             "shared by every RL method at that seed (both probe policies too, where a drawn question "
                             "keeps a probe), so each is visited max_steps x questions_per_step / questions times; "
                             "0: every question", added=True)
    learning_rate: float = setting(1e-5, "learning rate (constant)")
    max_steps: int = setting(1000, "optimisation steps")
    save_steps: int = setting(50, "checkpoint interval in steps (a rerun resumes from the last)", "speed only")
    lora: bool = setting(True, "train a fresh LoRA adapter on the (merged) SFT model; false: full weights")
    lora_r: int = setting(32, "LoRA rank")
    lora_alpha: int = setting(64, "LoRA alpha")
    seed: int = setting(0, "training seed (dialogue plans, sampling, data order)")
    bf16: bool | None = setting(None, "as sft_bf16")
    use_vllm: bool = setting(False, "GPU only: every dialogue turn through TRL's vLLM engine (another sampler, so "
                             "part of the run's identity)")
    vllm_mode: str = setting("colocate", "colocate (same GPUs) or server (trl vllm-serve on other GPUs)", "speed only")
    vllm_gpu_memory_utilization: float = setting(0.3, "colocate: share of each GPU vLLM may take", "speed only")
    vllm_server_base_url: str = setting("", "server mode: e.g. http://127.0.0.1:8000", "run")


@dataclass(frozen=True)
class OPDSettings:
    """On-Policy Distillation (method.md section 6) with TRL's GKD trainer; notebook 05 derives it from
    the SFT settings (same budget, learning rate and adapter)."""
    PREFIX: ClassVar[str] = "opd_"
    lmbda: float = setting(1.0, "share of on-policy batches (1: every batch samples from the student)")
    beta: float = setting(1.0, "0 forward KL, 1 reverse KL, between: generalised JSD")
    temperature: float = setting(0.9, "student sampling temperature")
    max_new_tokens: int = setting(256, "student sample length")
    epochs: float = setting(1.0, "passes over the questions")
    max_steps: int = setting(-1, "positive: stop after this many steps")
    batch_size: int = setting(8, "questions per step")
    learning_rate: float = setting(2e-4, "learning rate (LoRA)")
    lora: bool = setting(True, "LoRA adapter; false: full fine-tuning")
    lora_r: int = setting(32, "LoRA rank")
    lora_alpha: int = setting(64, "LoRA alpha")
    max_length: int = setting(1024, "tokens per sequence")
    save_steps: int = setting(50, "checkpoint interval", "speed only")
    seed: int = setting(0, "training seed")
    bf16: bool | None = setting(None, "as sft_bf16")
