"""Stage 3 (method.md section 4): ExGRPO, and plain GRPO for its baseline, on TRL's GRPOTrainer.

``train_exgrpo`` is the entry point: it merges the starting adapter once (``prepare_init``), builds
the trainer (``build_trainer``) and runs it through the kit's common train-and-save path. One RL step,
module by module, following the calls:

1. data (``rl_data``): the questions and the probes their dialogues may use (``rl_records``), their
   prompt rows (``training_rows``: the question; grpo: k probes, then the question), whole questions
   per step (``QuestionBlockSampler``);
2. rollout (``rollouts``): ``DialogueRollout`` plans the G dialogues of each question (Scenario A:
   all k probes; Scenario B: a random prefix of k' < k; ``dialogue.plan_group``) and runs them turn
   by turn (``rollout_dialogues``); only the student's own tokens are policy tokens (``env_mask``).
   It returns TRL's fields and Eq. 8's teacher-forced dialogues together (``Rollout``);
3. reward (``rewards.ExGRPOReward``): Eq. 4 per final answer, Eq. 5-6 per question's group;
4. advantages: TRL's normalisation (Eq. 7, ``scale_rewards`` = the ``scale_rewards`` setting, "group" by default);
5. loss (``exgrpo_trainer.ExGRPOTrainer.compute_loss``): TRL's clipped surrogate with ``beta`` * KL
   to the reference (Eq. 7) plus lambda * ``aux_sft_loss`` (Eq. 8). The reference is the SFT model:
   the SFT weights are the frozen base and ExGRPO trains a fresh LoRA adapter on top, so TRL's
   reference (adapter disabled) is exactly the SFT warm-up model.

Every loss-relevant TRL setting is written out in ``grpo_config`` (TRL's defaults have changed
between releases). Variants for the ablations: ``mode="grpo"`` (R_base only, each probe and each
original question an independent single-turn sample), ``aux_lambda=0`` (no aux SFT), and a cold
start (``init_model`` = the base student instead of the SFT output). grpo's aux SFT loss trains on
the probe answers only, like Eq. 8; every step logs the tokens of each kind a method spends
(``tokens/*``: generated, context, update, reference, aux SFT), which sum to a run's ``train_tokens``.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from ..data import prompts
from ..infra.files import waiting_lock
from ..infra.fingerprint import digest
from ..infra.layout import RL_SUMMARY
from ..infra.paths import portable
from ..models.generation import use_turn_stops
from ..models.registry import default_device, ensure_local, load_model, model_identity
from ..teach.rules import RuleSet, load_rules
from .dialogue import ChatLayout
from .loop import Built, lora_config, train_and_save, training_precision
from .rewards import ExGRPOReward
from .rl_data import rl_records, rows_per_question, training_rows
from .rollouts import DialogueRollout, SingleTurnRollout
from .settings import ExGRPOSettings
from .trainlog import QUESTION_VISITS, QuestionVisitsLog

SUMMARY_NAME = RL_SUMMARY  # the summary a finished training writes beside final/

# trl, datasets and the trainer module (which imports TRL and torch) are imported inside the functions
# that need them: heavy, and the data, rollout bookkeeping and rewards are tested without them.


def grpo_config(settings: ExGRPOSettings, out_dir: Path, *, device: str, bf16: bool, stop_ids: Sequence[int] = ()):
    """TRL GRPOConfig with every loss-relevant field explicit. ``stop_ids``: the chat template's
    end-of-turn tokens, added to vLLM's stop tokens (vLLM path only)."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=str(out_dir / "checkpoints"),
        # Eq. 7: clipped surrogate, group-normalised advantages, KL to the reference
        loss_type="grpo", scale_rewards=settings.scale_rewards, multi_objective_aggregation="sum_then_normalize",
        epsilon=settings.epsilon, epsilon_high=settings.epsilon, delta=None, beta=settings.beta,
        importance_sampling_level="token", num_iterations=1,
        mask_truncated_completions=False, top_entropy_quantile=1.0, use_bias_correction_kl=False,
        sync_ref_model=False, disable_dropout=True,
        # sampling
        num_generations=settings.G, temperature=settings.temperature, top_p=1.0, top_k=0,
        max_completion_length=settings.max_final_tokens,
        # batch: whole groups on each process (the DSU bonus needs all G rollouts of a question). The step's
        # questions are rolled out together (one engine run, G x questions_per_step dialogues in flight),
        # rewarded and normalised together, then the update runs one micro-batch per question (its rows in
        # order, ExGRPOTrainer._prepare_inputs), accumulated into one optimiser step: the memory of one
        # question whatever questions_per_step is
        per_device_train_batch_size=settings.G * rows_per_question(settings),
        gradient_accumulation_steps=settings.questions_per_step, steps_per_generation=settings.questions_per_step,
        learning_rate=settings.learning_rate, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, max_steps=settings.max_steps, save_steps=settings.save_steps, save_total_limit=3,
        logging_steps=1, seed=settings.seed, data_seed=settings.seed, bf16=bf16, use_cpu=device == "cpu",
        gradient_checkpointing=False, report_to="none", remove_unused_columns=False,
        use_vllm=settings.use_vllm, vllm_mode=settings.vllm_mode,
        # the rollouts return vLLM's per-token logprobs (context tokens: none, so no correction there);
        # per-token ratios truncated at 3 (kit default): a sequence-level mode would multiply the ratios
        # of every student token of a dialogue (k probe answers and the final answer) and mask whole
        # dialogues, more often the longer they are
        vllm_importance_sampling_correction=True, vllm_importance_sampling_mode="token_truncate",
        vllm_importance_sampling_clip_max=3.0, vllm_importance_sampling_clip_min=None,
        generation_kwargs={"stop_token_ids": list(stop_ids)} if settings.use_vllm and stop_ids else None,
        vllm_gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
        vllm_server_base_url=settings.vllm_server_base_url or None,
        log_completions=False, dataloader_num_workers=0, shuffle_dataset=True)


def prepare_init(init_model: str, out_dir: Path) -> str:
    """The starting weights as a plain checkpoint: an SFT adapter is merged once, and the merged model
    becomes the frozen base (and so TRL's reference policy). An adapter saved as ``<run>/final`` is
    merged into ``<run>/merged``, shared by every RL run that starts from it; others into ``out_dir/init``.
    The merged model is rebuilt whenever the adapter's files differ from those it was merged from."""
    source = ensure_local(init_model)
    if not (Path(source) / "adapter_config.json").exists():
        return source
    target = Path(source).parent / "merged" if Path(source).name == "final" else out_dir / "init"
    marker = target / "exgrpo_init.json"
    want = {"source": portable(source), "source_weights": digest(model_identity(source))}
    with waiting_lock(target):  # under accelerate launch: one process merges, the others find it merged
        if marker.exists() and json.loads(marker.read_text()) == want:  # merged from these very adapter weights
            return str(target)
        model, tok = load_model(source, dtype="float32", device="cpu")  # merges the adapter
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".init."))
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "exgrpo_init.json").write_text(json.dumps(want))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    return str(target)


def build_trainer(*, init_model: str, probe_records: Sequence[dict], out_dir: Path, settings: ExGRPOSettings,
                  rules: RuleSet) -> Built:
    """The ExGRPO (or plain GRPO) trainer for ``train_exgrpo``, untrained."""
    import datasets

    from .exgrpo_trainer import ExGRPOTrainer

    device = default_device()
    dtype, bf16 = training_precision(settings.bf16, device)
    base_path = prepare_init(init_model, out_dir)
    model, tok = load_model(base_path, dtype=dtype, device=device, for_training=True)
    tok.padding_side = "left"
    use_turn_stops(model, tok)  # TRL's own generation (grpo mode without the engine) stops on them too
    layout = ChatLayout(tok)
    records = rl_records(probe_records, settings)
    rows = training_rows(records, rules, settings)
    if settings.mode == "exgrpo":
        rollout = DialogueRollout(records, rules, settings, tok)
    elif settings.rollout_backend == "fast" and not settings.use_vllm:
        rollout = SingleTurnRollout(rows, settings, tok)
    else:  # TRL's own generation (transformers generate, or its vLLM engine)
        rollout = None
    trainer = ExGRPOTrainer(
        model=model, reward_funcs=[ExGRPOReward(records, settings)],
        args=grpo_config(settings, out_dir, device=device, bf16=bf16, stop_ids=layout.stop_ids),
        train_dataset=datasets.Dataset.from_list(rows), processing_class=tok,
        peft_config=lora_config(settings.lora_r, settings.lora_alpha, 0.0) if settings.lora else None,
        rollout=rollout, aux_lambda=settings.aux_lambda, layout=layout, visits=QuestionVisitsLog(out_dir / QUESTION_VISITS))
    return Built(trainer, tok, {"base": portable(base_path), "rows": len(rows), "questions": len(records)})


def check_modes(settings: ExGRPOSettings) -> None:
    """A clear error for a mode, probe-answer or rollout-backend setting the kit does not have."""
    if settings.mode not in ("exgrpo", "grpo"):
        raise ValueError(f"mode must be 'exgrpo' or 'grpo', got {settings.mode!r}")
    if settings.probe_answers not in ("student", "teacher"):
        raise ValueError(f"probe_answers must be 'student' or 'teacher', got {settings.probe_answers!r}")
    if settings.rollout_backend not in ("fast", "generate"):
        raise ValueError(f"rollout_backend must be 'fast' or 'generate', got {settings.rollout_backend!r}")


def train_exgrpo(*, init_model: str, probe_records: Sequence[dict], out_dir: str | Path,
                 settings: ExGRPOSettings = ExGRPOSettings(), rules: RuleSet | None = None, resume: bool = True,
                 report_to: Sequence[str] = (), fresh: bool = False) -> dict:
    """Train from ``init_model`` (the SFT output, or the base student for a cold start); save ``out_dir/final``."""
    check_modes(settings)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    out_dir = Path(out_dir)

    rule_set = rules or load_rules()
    data = digest({"probe_records": probe_records, "rules": rule_set.content, "prompt": prompts.PROMPT_VERSION})

    def build() -> Built:
        return build_trainer(init_model=init_model, probe_records=probe_records, out_dir=out_dir, settings=settings,
                             rules=rule_set)

    out_dir.mkdir(parents=True, exist_ok=True)
    return train_and_save(out_dir=out_dir, summary_name=SUMMARY_NAME, settings=settings,
                          identity={"init_model": init_model}, data=data, max_steps=settings.max_steps, build=build,
                          resume=resume, report_to=report_to, fresh=fresh)
