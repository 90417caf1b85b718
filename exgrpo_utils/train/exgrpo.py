"""Stage 3 (method.md section 4): ExGRPO on TRL's GRPOTrainer.

How Eq. 4-8 map onto the code:

* dialogues: ``dialogue.plan_group`` (k probes without replacement; Scenario A full, Scenario B a
  random prefix of k' < k probes) and ``rollout_dialogues`` below, plugged into TRL through its
  ``rollout_func`` extension point. The multi-turn completion carries an ``env_mask`` so that only
  the student's own tokens (its probe answers and its final answer) are policy tokens;
* Eq. 4 and Eq. 5-6: ``rewards.r_base`` and ``rewards.exgrpo_group_rewards`` in ``ExGRPOReward``;
* Eq. 7: TRL's clipped surrogate with group-normalised advantages (``loss_type="grpo"``,
  ``scale_rewards="group"``) and ``beta`` * KL to the reference. The reference is the SFT model:
  the SFT weights are the frozen base and ExGRPO trains a fresh LoRA adapter on top, so TRL's
  reference (adapter disabled) is exactly the SFT warm-up model;
* Eq. 8: ``ExGRPOTrainer.compute_loss`` adds lambda * the mean token NLL of the teacher's answers at
  every probe turn of the teacher-forced dialogue (same probes, same order).

Every loss-relevant TRL setting is written out in ``grpo_config`` (TRL's defaults have changed
between releases). Variants for the ablations: ``mode="grpo"`` (R_base only, each probe and each
original question an independent single-turn sample), ``aux_lambda=0`` (no aux SFT), and a cold
start (``init_model`` = the base student instead of the SFT output).

Fair comparison of the two modes (kit design, the paper is silent): both draw the same original
questions at every step (``QuestionBlockSampler``: one seeded order of questions; in grpo mode each
question brings its block of rows, k probes and the question, sampled G times each); both use the
same probes (``rl_records``: answer-revealing probes excluded unless ``revealing_probes="allow"``);
grpo's aux SFT loss trains on the probe answers only, like Eq. 8; and every step logs the tokens of
each kind a method spends (``tokens/*``: generated, context, update, reference, aux SFT), which
sum to a run's ``train_tokens``.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

from ..common.fingerprint import digest, weights_digest
from ..common.paths import portable
from ..data import prompts
from ..data.example import Example
from ..models.engine import SlotEngine, Turn, single_turn
from ..models.generation import cut_at_stop, use_turn_stops
from ..models.registry import default_device, ensure_local, load_model
from ..teach.inversion import reveals_answer
from ..teach.rules import RuleSet, load_rules
from . import rewards
from .common import Built, NoTrainingData, lora_config, train_and_save, training_precision
from .dialogue import ChatLayout, DialogueTokens, plan_group, teacher_forced
from .settings import ExGRPOSettings

# torch, trl and datasets are imported inside the functions that need them (heavy; the reward and
# dialogue code above them is tested without a model).


def grpo_config(settings: ExGRPOSettings, out_dir: Path, *, device: str, bf16: bool, stop_ids: Sequence[int] = ()):
    """TRL GRPOConfig with every loss-relevant field explicit. ``stop_ids``: the chat template's
    end-of-turn tokens, added to vLLM's stop tokens (vLLM path only)."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=str(out_dir / "checkpoints"),
        # Eq. 7: clipped surrogate, group-normalised advantages, KL to the reference
        loss_type="grpo", scale_rewards="group", multi_objective_aggregation="sum_then_normalize",
        epsilon=settings.epsilon, epsilon_high=settings.epsilon, delta=None, beta=settings.beta,
        importance_sampling_level="token", num_iterations=1, steps_per_generation=1,
        mask_truncated_completions=False, top_entropy_quantile=1.0, use_bias_correction_kl=False,
        sync_ref_model=False, disable_dropout=True,
        # sampling
        num_generations=settings.G, temperature=settings.temperature, top_p=1.0, top_k=0,
        max_completion_length=settings.max_final_tokens,
        # batch: whole groups on each process (the DSU bonus needs all G rollouts of a question)
        per_device_train_batch_size=settings.G * settings.questions_per_step * rows_per_question(settings),
        gradient_accumulation_steps=1,
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


# ---------------------------------------------------------------------------------------------
# Data

def probe_reveals(rec: dict, probe: dict) -> bool:
    """A probe's ``reveals_answer`` flag (computed for probe datasets written before it existed)."""
    if "reveals_answer" in probe:
        return bool(probe["reveals_answer"])
    return reveals_answer(Example.from_dict(rec["item"]), probe["probe"])


def rl_records(records: Sequence[dict], settings: ExGRPOSettings, log=print) -> list[dict]:
    """The questions RL trains on, each with the probes its dialogues (or grpo's probe rows) may use:
    with ``revealing_probes="exclude"`` the probes that state the original answer are removed, and a
    question left with none is not trained on (the count is printed)."""
    if settings.revealing_probes not in ("exclude", "allow"):
        raise ValueError(f"revealing_probes must be 'exclude' or 'allow', got {settings.revealing_probes!r}")
    out, dropped, removed = [], 0, 0
    for rec in records:
        probes = [dict(p, reveals_answer=probe_reveals(rec, p)) for p in rec["probes"]]
        if settings.revealing_probes == "exclude":
            removed += sum(p["reveals_answer"] for p in probes)
            probes = [p for p in probes if not p["reveals_answer"]]
        if not probes:
            dropped += 1
            continue
        out.append(dict(rec, probes=probes))
    if removed or dropped:
        log(f"RL data: {removed} answer-revealing probes left out (revealing_probes=exclude); "
            f"{dropped} of {len(records)} questions have no probe left and are not trained on")
    if not out:
        raise NoTrainingData("no training rows: no question has a probe the dialogues may use")
    return out


def rows_per_question(settings: ExGRPOSettings) -> int:
    """Rows of one question's block: exgrpo 1 (the question; its dialogues are built in the rollout),
    grpo k probes plus the question (``include_original_questions``)."""
    return 1 if settings.mode == "exgrpo" else settings.k + int(settings.include_original_questions)


def training_rows(records: Sequence[dict], rules: RuleSet, settings: ExGRPOSettings) -> list[dict]:
    """Prompt rows for TRL, in blocks of ``rows_per_question`` consecutive rows per question.

    exgrpo: the question. grpo: k of its probes (a seeded draw without replacement, cycled when it
    has fewer), each with its teacher answer as the aux SFT target, then the question (no aux target:
    the aux loss trains on probe answers only, as Eq. 8 does)."""
    rows = []
    for rec in records:
        item = Example.from_dict(rec["item"])
        question = {"prompt": prompts.messages_for(item), "question_id": rec["id"], "gold": item.answer,
                    "answer_type": "", "target": ""}
        if settings.mode == "exgrpo":
            rows.append(question)
            continue
        if not rec["probes"]:
            raise ValueError(f"question {rec['id']}: no probes for grpo's probe rows")
        order = random.Random(f"grpo-probes:{settings.seed}:{rec['id']}").sample(range(len(rec["probes"])), len(rec["probes"]))
        for j in range(settings.k):
            p = rec["probes"][order[j % len(order)]]
            rows.append({"prompt": [{"role": "user", "content": rules.answer_prompt(p["probe"])}], "question_id": rec["id"],
                         "gold": p["teacher_answer"], "answer_type": p["answer_type"], "target": p["teacher_response"]})
        if settings.include_original_questions:
            rows.append(question)
    if not rows:
        raise NoTrainingData("no training rows: the probe dataset has no kept questions")
    return rows


def question_blocks(question_ids: Sequence[str]) -> list[list[int]]:
    """Row indices grouped by question (consecutive rows of one question form its block)."""
    blocks: list[list[int]] = []
    for i, q in enumerate(question_ids):
        if blocks and question_ids[blocks[-1][0]] == q:
            blocks[-1].append(i)
        else:
            blocks.append([i])
    return blocks


class QuestionBlockSampler:
    """Row indices for TRL: questions in one seeded order, ``questions`` per generation batch, each
    question's block of rows in order and every row ``G`` times in a row (a GRPO group), the batch
    repeated ``repeat`` times (TRL's reuse of a generation). The order depends on the seed, the pass
    over the data (``set_epoch``) and the number of questions only, so exgrpo and grpo runs with the
    same seed and data see the same questions at every step, and a run resumed in a later pass gets
    that pass's order (the trainer calls ``set_epoch`` for the pass it resumes in). An incomplete last
    batch is left out."""

    def __init__(self, blocks: Sequence[Sequence[int]], *, G: int, questions: int, repeat: int = 1, seed: int = 0):
        sizes = {len(b) for b in blocks}
        if len(sizes) > 1:
            raise ValueError(f"question blocks of different sizes {sorted(sizes)}: every question needs the same rows")
        if questions < 1 or len(blocks) < questions:
            raise ValueError(f"{len(blocks)} questions cannot fill batches of {questions} questions")
        self.blocks, self.G, self.questions, self.repeat = [list(b) for b in blocks], G, questions, repeat
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        import torch

        generator = torch.Generator()
        generator.manual_seed(self.seed + 1_000_003 * self.epoch)  # pass 0: the run's seed itself
        order = torch.randperm(len(self.blocks), generator=generator).tolist()
        self.epoch += 1  # the next pass, unless the trainer sets it
        for start in range(0, len(order) - self.questions + 1, self.questions):
            batch = [row for q in order[start:start + self.questions] for row in self.blocks[q] for _ in range(self.G)]
            for _ in range(self.repeat):
                yield from batch

    def __len__(self) -> int:
        return (len(self.blocks) // self.questions) * self.questions * len(self.blocks[0]) * self.G * self.repeat


# ---------------------------------------------------------------------------------------------
# Multi-turn rollouts

def rollout_dialogues(model, tokenizer, layout: ChatLayout, dialogues: Sequence[list[str]],
                      teacher_answers: Sequence[list[str]] | None, *, temperature: float, max_probe_tokens: int,
                      max_final_tokens: int, sampler=None, backend: str = "fast", seed: int = 0,
                      ) -> list[tuple[DialogueTokens, str]]:
    """Run dialogues turn by turn. ``dialogues[i]``: the user turns (probes, then the original
    question). Returns each rollout's tokens with the policy mask, and its final answer.

    ``backend="fast"`` (default): every dialogue is one job of the kit's engine (``models.engine``):
    all rollouts of the step in flight together, each keeping its KV cache across turns (a turn reads
    only its new context), sampled from a generator seeded with ``seed``. ``backend="generate"``: all
    rollouts in lockstep, one turn at a time, each turn re-encoding the dialogue so far through
    ``sampler(contexts, temperature=, max_new_tokens=)`` (default ``model.generate``; on GPUs
    ``VLLMTurnSampler``, TRL's vLLM engine with the weights synced). A sampler returns, per context,
    the generated ids and their log-probabilities (or None), which the rollouts keep per token."""
    if sampler is None and backend == "fast":
        engine = SlotEngine(model, stop_ids=list(layout.stop_ids), pad_id=tokenizer.pad_token_id, slots=len(dialogues))
        jobs = [_dialogue_job(layout, tokenizer, turns, teacher_answers[i] if teacher_answers is not None else None,
                              max_probe_tokens, max_final_tokens) for i, turns in enumerate(dialogues)]
        return engine.run(jobs, temperature=temperature, seed=seed)
    if backend not in ("fast", "generate"):
        raise ValueError(f"rollout backend must be 'fast' or 'generate', got {backend!r}")
    if sampler is None:
        sampler = lambda contexts, **kw: _sample(model, tokenizer, contexts, stop_ids=layout.stop_ids, **kw)
    states = [DialogueTokens(layout.first_prompt(turns[0])) for turns in dialogues]
    finals = [""] * len(dialogues)
    n_turns = max(len(t) for t in dialogues)
    for t in range(n_turns):
        active = [i for i, turns in enumerate(dialogues) if t < len(turns)]
        to_generate = []
        for i in active:
            is_final = t == len(dialogues[i]) - 1
            if not is_final and teacher_answers is not None:  # teacher answers inserted as context
                ids = layout.encode(teacher_answers[i][t]) + [layout.turn_end_id]
                states[i].add(ids, trained=False)
                states[i].add(layout.next_turn(dialogues[i][t + 1], ended_with=layout.turn_end_id), trained=False)
            else:
                to_generate.append((i, is_final))
        for is_final in (False, True):
            idx = [i for i, f in to_generate if f == is_final]
            if not idx:
                continue
            outs = sampler([states[i].full_ids for i in idx], temperature=temperature,
                           max_new_tokens=max_final_tokens if is_final else max_probe_tokens)
            for i, (gen, logprobs) in zip(idx, outs):
                states[i].add(gen, trained=True, logprobs=logprobs)
                if is_final:
                    finals[i] = tokenizer.decode(gen, skip_special_tokens=True).strip()
                else:
                    states[i].add(layout.next_turn(dialogues[i][t + 1], ended_with=layout.ended_with(gen)), trained=False)
    return list(zip(states, finals))


def _dialogue_job(layout: ChatLayout, tokenizer, turns: list[str], teacher: list[str] | None, max_probe_tokens: int,
                  max_final_tokens: int):
    """One rollout as an engine job: the same tokens and mask as the lockstep path, but each turn
    sends only what is new (the engine keeps the dialogue's cache)."""
    state = DialogueTokens(layout.first_prompt(turns[0]))
    context = list(state.prompt_ids)
    for t in range(len(turns)):
        is_final = t == len(turns) - 1
        if not is_final and teacher is not None:  # teacher answers inserted as context
            ids = layout.encode(teacher[t]) + [layout.turn_end_id]
            after = layout.next_turn(turns[t + 1], ended_with=layout.turn_end_id)
            state.add(ids, trained=False)
            state.add(after, trained=False)
            context += ids + after
            continue
        gen = yield Turn(context, max_final_tokens if is_final else max_probe_tokens)
        state.add(gen, trained=True)
        if is_final:
            return state, tokenizer.decode(gen, skip_special_tokens=True).strip()
        context = layout.next_turn(turns[t + 1], ended_with=layout.ended_with(gen))
        state.add(context, trained=False)
    raise AssertionError("a dialogue ends with its final question")  # pragma: no cover


def rollout_single_turn(model, tokenizer, layout: ChatLayout, prompts_text: Sequence[str], budgets: Sequence[int], *,
                        temperature: float, seed: int = 0) -> list[DialogueTokens]:
    """Plain GRPO's samples through the same engine: one user turn each, every token a policy token."""
    starts = [layout.first_prompt(text) for text in prompts_text]
    engine = SlotEngine(model, stop_ids=list(layout.stop_ids), pad_id=tokenizer.pad_token_id, slots=len(starts))
    outs = engine.run([single_turn(ids, b) for ids, b in zip(starts, budgets)], temperature=temperature, seed=seed)
    rollouts = []
    for ids, gen in zip(starts, outs):
        d = DialogueTokens(list(ids))
        d.add(gen, trained=True)
        rollouts.append(d)
    return rollouts


def _sample(model, tokenizer, contexts: Sequence[list[int]], *, temperature: float, max_new_tokens: int,
            stop_ids: Sequence[int]) -> list[tuple[list[int], None]]:
    """Sample one continuation per context (left-padded batch); each ends at a stop token or the
    budget. No log-probabilities (the policy computes its own)."""
    import torch

    pad = tokenizer.pad_token_id
    width = max(len(c) for c in contexts)
    ids = torch.tensor([[pad] * (width - len(c)) + list(c) for c in contexts], device=model.device)
    attn = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts], device=model.device)
    kwargs = dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=0) if temperature > 0 else \
        dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens, pad_token_id=pad,
                             eos_token_id=list(stop_ids), **kwargs)
    return [(cut_at_stop(row, stop_ids, pad), None) for row in out[:, width:].tolist()]


class VLLMTurnSampler:
    """One dialogue turn through the trainer's vLLM engine (``use_vllm=True``: TRL syncs the policy
    weights into vLLM before each ``rollout_func`` call; colocate and server modes both work through
    ``VLLMGeneration.generate``). For the call, the turn's token budget and temperature are set and
    the chat template's end-of-turn tokens join vLLM's stop tokens; all are restored after. Returns
    each turn's ids, cut at its first stop token, with the sampled tokens' log-probabilities as vLLM
    reports them (TRL's importance-sampling correction subtracts them from the policy's)."""

    def __init__(self, vllm_generation, stop_ids: Sequence[int]):
        self.engine, self.stop_ids = vllm_generation, tuple(stop_ids)

    def __call__(self, contexts: Sequence[list[int]], *, temperature: float,
                 max_new_tokens: int) -> list[tuple[list[int], list[float | None] | None]]:
        if not contexts:
            return []
        saved = (self.engine.max_completion_length, self.engine.temperature, self.engine.generation_kwargs)
        kwargs = dict(saved[2] or {})
        kwargs["stop_token_ids"] = sorted(set(kwargs.get("stop_token_ids") or ()) | set(self.stop_ids))
        self.engine.max_completion_length, self.engine.temperature, self.engine.generation_kwargs = \
            max_new_tokens, temperature, kwargs
        try:
            _, completion_ids, logprobs, _ = self.engine.generate(prompts=[list(c) for c in contexts], images=None,
                                                                  num_generations=1)
        finally:
            self.engine.max_completion_length, self.engine.temperature, self.engine.generation_kwargs = saved
        out = []
        for i, row in enumerate(completion_ids):
            row = cut_at_stop(list(row), self.stop_ids)
            lps = None
            if logprobs is not None and logprobs[i] is not None:  # (tokens, top-n) per row; [0] is the sampled token's
                lps = [tok[0] if tok else None for tok in logprobs[i][: len(row)]]
            out.append((row, lps))
        return out


class DialogueRollout:
    """TRL ``rollout_func``: G consecutive copies of each question's prompt -> G dialogue rollouts."""

    def __init__(self, records: Sequence[dict], rules: RuleSet, settings: ExGRPOSettings, tokenizer):
        self.by_prompt = {prompts.messages_for(Example.from_dict(r["item"]))[-1]["content"]: r for r in records}
        self.rules, self.settings, self.tokenizer = rules, settings, tokenizer
        self.layout = ChatLayout(tokenizer)
        self.last_aux: list[DialogueTokens] = []

    def plans_for(self, prompt_list: Sequence[list[dict]], step: int):
        G = self.settings.G
        if len(prompt_list) % G:
            raise ValueError(f"rollout got {len(prompt_list)} prompts, not a multiple of G = {G}")
        groups = []
        for g in range(0, len(prompt_list), G):
            contents = {p[-1]["content"] for p in prompt_list[g:g + G]}
            if len(contents) != 1:
                raise ValueError("a rollout group mixes questions; TRL must give each question's G copies together")
            rec = self.by_prompt.get(contents.pop())
            if rec is None:
                raise KeyError("a prompt of the batch is not in the probe dataset")
            rng = random.Random(f"exgrpo:{self.settings.seed}:{step}:{rec['id']}:{g}")
            groups.append((rec, plan_group(rec["id"], len(rec["probes"]), G=G, k=self.settings.k, rng=rng)))
        return groups

    def __call__(self, prompt_list, trainer) -> dict:
        groups = self.plans_for(prompt_list, trainer.state.global_step)
        dialogues, teacher, meta = [], [], []
        revealing = {"A": 0, "B": 0}  # dialogues that contain a probe stating the original answer
        for rec, plans in groups:
            item = Example.from_dict(rec["item"])
            question = prompts.messages_for(item)[-1]["content"]
            for plan in plans:
                probes = [rec["probes"][j] for j in plan.probe_order]
                dialogues.append([self.rules.answer_prompt(p["probe"]) for p in probes] + [question])
                teacher.append([p["teacher_response"] for p in probes])
                meta.append((rec["id"], plan.scenario))
                revealing[plan.scenario] += any(probe_reveals(rec, p) for p in probes)
        _log_metric(trainer, "exgrpo/revealing_dialogues_A", revealing["A"])
        _log_metric(trainer, "exgrpo/revealing_dialogues_B", revealing["B"])
        sampler = VLLMTurnSampler(trainer.vllm_generation, self.layout.stop_ids) if getattr(trainer, "use_vllm", False) else None
        with _eval_mode(trainer) as model:
            out = rollout_dialogues(model, self.tokenizer, self.layout, dialogues,
                                    teacher if self.settings.probe_answers == "teacher" else None,
                                    temperature=self.settings.temperature, max_probe_tokens=self.settings.max_probe_tokens,
                                    max_final_tokens=self.settings.max_final_tokens, sampler=sampler,
                                    backend=self.settings.rollout_backend, seed=rollout_seed(self.settings, trainer))
        # Eq. 8's teacher-forced dialogues: the Scenario A probe order of each question
        self.last_aux = [teacher_forced(self.layout, [(self.rules.answer_prompt(rec["probes"][j]["probe"]),
                                                       rec["probes"][j]["teacher_response"]) for j in plans[0].probe_order])
                         for rec, plans in groups if plans[0].probe_order]
        if sampler is not None:  # a policy token without vLLM's logprob gets no importance-sampling correction
            _log_metric(trainer, "vllm/policy_tokens_without_logprob",
                        sum(lp is None for d, _ in out for lp, m in zip(d.logprobs, d.mask) if m))
        # TRL reads: prompt_ids, completion_ids, logprobs (per completion token; None entries become NaN
        # and get no importance-sampling correction: the environment's context tokens), env_mask (1 =
        # policy token), and passes every other key to the reward functions
        return {"prompt_ids": [d.prompt_ids for d, _ in out], "completion_ids": [d.completion_ids for d, _ in out],
                "logprobs": [d.logprobs for d, _ in out] if sampler is not None else None,
                "env_mask": [d.mask for d, _ in out], "final_text": [f for _, f in out],
                "question_id": [q for q, _ in meta], "scenario": [s for _, s in meta]}


class SingleTurnRollout:
    """TRL ``rollout_func`` of plain GRPO (``mode="grpo"``): each prompt one single-turn sample, through
    the kit's engine like ExGRPO's dialogues (so the two compare per generated token). A probe's
    budget is ``max_probe_tokens`` and an original question's ``max_final_tokens``, as in a dialogue."""

    def __init__(self, rows: Sequence[dict], settings: ExGRPOSettings, tokenizer):
        self.budget = {r["prompt"][-1]["content"]: settings.max_probe_tokens if r["answer_type"] else settings.max_final_tokens
                       for r in rows}
        self.settings, self.tokenizer = settings, tokenizer
        self.layout = ChatLayout(tokenizer)

    def __call__(self, prompt_list, trainer) -> dict:
        texts = [p[-1]["content"] for p in prompt_list]
        missing = [t for t in texts if t not in self.budget]
        if missing:
            raise KeyError(f"a prompt of the batch is not among the training rows: {missing[0][:80]!r}")
        with _eval_mode(trainer) as model:
            out = rollout_single_turn(model, self.tokenizer, self.layout, texts, [self.budget[t] for t in texts],
                                      temperature=self.settings.temperature, seed=rollout_seed(self.settings, trainer))
        return {"prompt_ids": [d.prompt_ids for d in out], "completion_ids": [d.completion_ids for d in out],
                "logprobs": None}


def _log_metric(trainer, key: str, value: float) -> None:
    """Add one value to the trainer's metrics of this step (TRL logs their mean)."""
    metrics = getattr(trainer, "_metrics", None)
    if metrics is not None:
        metrics["train"][key].append(value)


def rollout_seed(settings: ExGRPOSettings, trainer) -> int:
    """The sampling seed of one step's rollouts: fixed by the run's seed, the step and the process, so a
    resumed run samples what an uninterrupted one would."""
    process = getattr(getattr(trainer, "accelerator", None), "process_index", 0)
    return (settings.seed * 1_000_003 + trainer.state.global_step) * 1_009 + process


@contextmanager
def _eval_mode(trainer):
    """The unwrapped policy in eval mode (no dropout) for sampling; training mode restored after. The
    seconds spent are logged as ``timing/rollout_s`` (the rest of ``step_time`` is the update)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        yield model
    finally:
        model.train(was_training)
        _log_metric(trainer, "timing/rollout_s", time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# Rewards (Eq. 4-6)

class ExGRPOReward:
    """One reward function: R_total per rollout (Eq. 6), with R_base and DSU statistics logged."""

    __name__ = "exgrpo_reward"

    def __init__(self, records: Sequence[dict], settings: ExGRPOSettings):
        self.items = {r["id"]: Example.from_dict(r["item"]) for r in records}
        self.settings = settings

    def __call__(self, prompts, completions, question_id, log_metric=None, scenario=None, final_text=None,
                 gold=None, answer_type=None, **kwargs) -> list[float]:
        if self.settings.mode == "grpo":  # each sample scored against its own gold (probe or question)
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            base = []
            for qid, text, g, t in zip(question_id, texts, gold, answer_type):
                ex = (Example(qid, "probe", "", g, meta={"answer_type": t}) if t else self.items[qid])
                base.append(rewards.r_base(ex, text))
            if log_metric:
                log_metric("exgrpo/r_base", sum(base) / len(base))
            return base
        base = [rewards.r_base(self.items[q], f) for q, f in zip(question_id, final_text)]
        totals = [0.0] * len(base)
        fired, p_full, p_partial = [], [], []
        for qid in dict.fromkeys(question_id):  # groups in order of appearance
            idx = [i for i, q in enumerate(question_id) if q == qid]
            group_totals, stats = rewards.exgrpo_group_rewards([base[i] for i in idx], [scenario[i] for i in idx],
                                                               self.settings.delta, self.settings.nu)
            for i, v in zip(idx, group_totals):
                totals[i] = v
            fired.append(stats["fired"])
            p_full.append(stats["p_full"])
            p_partial.append(stats["p_partial"])
        if log_metric:
            log_metric("exgrpo/r_base", sum(base) / len(base))
            log_metric("exgrpo/bonus_fired", sum(fired) / len(fired))
            log_metric("exgrpo/p_full", sum(p_full) / len(p_full))
            log_metric("exgrpo/p_partial", sum(p_partial) / len(p_partial))
            log_metric("exgrpo/r_dsu", sum(t - b for t, b in zip(totals, base)) / len(base))
        return totals


# ---------------------------------------------------------------------------------------------
# Trainer

def make_trainer_class():
    from trl import GRPOTrainer

    class ExGRPOTrainer(GRPOTrainer):
        """GRPOTrainer plus Eq. 8's auxiliary SFT loss on the teacher's probe answers."""

        def __init__(self, *args, aux_lambda: float = 0.0, aux_source=None, layout=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.aux_lambda, self.aux_source, self.layout = aux_lambda, aux_source, layout
            self._aux_batch: list[DialogueTokens] = []

        def _get_train_sampler(self, dataset=None):
            dataset = self.train_dataset if dataset is None else dataset
            blocks = question_blocks(dataset["question_id"])
            per_question = self.num_generations * len(blocks[0])
            if self.args.generation_batch_size % per_question:
                raise ValueError(f"a generation batch of {self.args.generation_batch_size} rows does not hold whole "
                                 f"questions ({per_question} rows each)")
            return QuestionBlockSampler(blocks, G=self.num_generations,
                                        questions=self.args.generation_batch_size // per_question,
                                        repeat=self.num_iterations * self.args.steps_per_generation, seed=self.args.seed)

        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            self._log_tokens(output)
            if self.aux_lambda > 0:
                if self.aux_source is not None:  # exgrpo: the rollout built the teacher-forced dialogues
                    self._aux_batch = list(self.aux_source.last_aux)
                else:  # grpo: each row's own (prompt, teacher answer)
                    seen, batch = set(), []
                    for x in inputs:
                        key = (x["question_id"], x["prompt"][-1]["content"])
                        if key not in seen and x.get("target"):
                            seen.add(key)
                            batch.append(teacher_forced(self.layout, [(x["prompt"][-1]["content"], x["target"])]))
                    self._aux_batch = batch
                _log_metric(self, "tokens/aux_sft", sum(len(d.full_ids) for d in self._aux_batch))
            return output

        def _log_tokens(self, output) -> None:
            """This step's tokens by kind (this process): ``generated`` (sampled by the policy),
            ``context`` (dialogue turns the policy reads but did not write), ``update`` (prompt and
            completion through the policy's forward and backward), ``reference`` (the KL's reference
            pass), ``aux_sft`` (Eq. 8's teacher-forced rows, logged after the aux batch is built)."""
            prompt = int(output["prompt_mask"].sum())
            completion = int(output["completion_mask"].sum())
            tool = output.get("tool_mask")
            generated = int((output["completion_mask"] * tool).sum()) if tool is not None else completion
            _log_metric(self, "tokens/generated", generated)
            _log_metric(self, "tokens/context", completion - generated)
            _log_metric(self, "tokens/update", prompt + completion)
            _log_metric(self, "tokens/reference", prompt + completion if output.get("ref_per_token_logps") is not None else 0)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
            if self.aux_lambda > 0 and self._aux_batch and model.training:
                aux = aux_sft_loss(model, self._aux_batch, pad_id=self.processing_class.pad_token_id)
                loss = loss + self.aux_lambda * aux / self.current_gradient_accumulation_steps
                self._metrics["train"]["aux_sft_loss"].append(aux.item())
            return loss

    return ExGRPOTrainer


def aux_sft_loss(model, batch: Sequence[DialogueTokens], *, pad_id: int):
    """Eq. 8: mean token NLL of the target (teacher answer) tokens of teacher-forced dialogues.

    Kit default: a mean over target tokens rather than the paper's sum, so λ does not scale with length."""
    import torch

    width = max(len(d.full_ids) for d in batch)
    device = next(model.parameters()).device
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    for b, d in enumerate(batch):
        full = d.full_ids
        ids[b, : len(full)] = torch.tensor(full)
        attn[b, : len(full)] = 1
        offset = len(d.prompt_ids)
        for j, (tok_id, m) in enumerate(zip(d.completion_ids, d.mask)):
            if m:
                labels[b, offset + j] = tok_id
    out = model(input_ids=ids.to(device), attention_mask=attn.to(device), labels=labels.to(device))
    return out.loss


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
    want = {"source": portable(source), "source_weights": weights_digest(source)}
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
    trainer = make_trainer_class()(
        model=model, reward_funcs=[ExGRPOReward(records, settings)],
        args=grpo_config(settings, out_dir, device=device, bf16=bf16, stop_ids=layout.stop_ids),
        train_dataset=datasets.Dataset.from_list(rows), processing_class=tok,
        peft_config=lora_config(settings.lora_r, settings.lora_alpha, 0.0) if settings.lora else None,
        rollout_func=rollout, aux_lambda=settings.aux_lambda,
        aux_source=rollout if settings.mode == "exgrpo" else None, layout=layout)
    return Built(trainer, tok, {"base": portable(base_path), "rows": len(rows), "questions": len(records)})


def train_exgrpo(*, init_model: str, probe_records: Sequence[dict], out_dir: str | Path,
                 settings: ExGRPOSettings = ExGRPOSettings(), rules: RuleSet | None = None, resume: bool = True,
                 report_to: Sequence[str] = (), fresh: bool = False) -> dict:
    """Train from ``init_model`` (the SFT output, or the base student for a cold start); save ``out_dir/final``."""
    if settings.mode not in ("exgrpo", "grpo"):
        raise ValueError(f"mode must be 'exgrpo' or 'grpo', got {settings.mode!r}")
    if settings.probe_answers not in ("student", "teacher"):
        raise ValueError(f"probe_answers must be 'student' or 'teacher', got {settings.probe_answers!r}")
    if settings.rollout_backend not in ("fast", "generate"):
        raise ValueError(f"rollout_backend must be 'fast' or 'generate', got {settings.rollout_backend!r}")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    out_dir = Path(out_dir)

    rule_set = rules or load_rules()
    data = digest({"probe_records": probe_records, "rules": rule_set.content, "prompt": prompts.PROMPT_VERSION})

    def build() -> Built:
        return build_trainer(init_model=init_model, probe_records=probe_records, out_dir=out_dir, settings=settings,
                             rules=rule_set)

    out_dir.mkdir(parents=True, exist_ok=True)
    return train_and_save(out_dir=out_dir, summary_name="rl_summary.json", settings=settings,
                          identity={"init_model": init_model}, data=data, max_steps=settings.max_steps, build=build,
                          resume=resume, report_to=report_to, fresh=fresh)
