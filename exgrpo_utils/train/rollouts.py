"""The rollouts of one RL step (method.md section 4, Eq. 4's dialogues), plugged into TRL's
``GRPOTrainer`` through its ``rollout_func`` extension point.

* ``DialogueRollout`` (ExGRPO): for each question, ``dialogue.plan_group`` draws the G dialogues
  (Scenario A: all k probes; Scenario B: a random prefix of k' < k), ``rollout_dialogues`` runs them
  turn by turn, and the result carries an ``env_mask`` so that only the student's own tokens (its
  probe answers and its final answer) are policy tokens. It also returns Eq. 8's teacher-forced
  dialogues (``Rollout.aux``), which the trainer takes from the rollout's result.
* ``SingleTurnRollout`` (plain GRPO): one single-turn sample per row, through the same engine.
* Turn samplers: the kit's engine (``models.engine``, default), ``model.generate`` in lockstep, or
  ``VLLMTurnSampler`` (TRL's vLLM engine with the policy's weights synced).
"""
from __future__ import annotations

import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Sequence

from ..data import prompts
from ..data.example import Example
from ..models.engine import SlotEngine, Turn, single_turn
from ..models.generation import cut_at_stop
from ..teach.rules import RuleSet
from .dialogue import ChatLayout, DialogueTokens, plan_group, teacher_forced
from .rl_data import probe_reveals
from .settings import ExGRPOSettings

# torch is imported inside _sample (heavy; the dialogue bookkeeping is tested without a model).


@dataclass
class Rollout:
    """One step's rollouts: ``fields`` is what TRL's ``rollout_func`` contract reads (prompt_ids,
    completion_ids, logprobs; env_mask; every other key goes to the reward functions), ``aux`` the
    teacher-forced dialogues of Eq. 8's auxiliary loss (None: the trainer builds them from its rows)."""
    fields: dict
    aux: list[DialogueTokens] | None = field(default=None)


def rollout_dialogues(model, tokenizer, layout: ChatLayout, dialogues: Sequence[list[str]],
                      teacher_answers: Sequence[list[str]] | None, *, temperature: float, max_probe_tokens: int,
                      max_final_tokens: int, sampler=None, backend: str = "fast", seed: int = 0,
                      slots: int | None = None) -> list[tuple[DialogueTokens, str]]:
    """Run dialogues turn by turn. ``dialogues[i]``: the user turns (probes, then the original
    question). Returns each rollout's tokens with the policy mask, and its final answer.

    ``backend="fast"`` (default): every dialogue is one job of the kit's engine (``models.engine``):
    all rollouts of the step in flight together, each keeping its KV cache across turns (a turn reads
    only its new context), sampled from a generator seeded with ``seed``. ``backend="generate"``: all
    rollouts in lockstep, one turn at a time, each turn re-encoding the dialogue so far through
    ``sampler(contexts, temperature=, max_new_tokens=)`` (default ``model.generate``; on GPUs
    ``VLLMTurnSampler``, TRL's vLLM engine with the weights synced). A sampler returns, per context,
    the generated ids and their log-probabilities (or None), which the rollouts keep per token.

    ``slots`` (fast backend): dialogues in flight at once (default: all); the rest wait in the engine's
    queue, so the engine's cache holds ``slots`` dialogues, not all of them (the pilot's ``--slots``)."""
    if sampler is None and backend == "fast":
        engine = SlotEngine(model, stop_ids=list(layout.stop_ids), pad_id=tokenizer.pad_token_id,
                            slots=min(slots, len(dialogues)) if slots else len(dialogues))
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

    def dialogues_for(self, groups):
        """The user turns of each planned rollout (its probes, then the original question), the teacher's
        answers to those probes, (question id, scenario) per rollout, and how many dialogues of each
        scenario contain a probe stating the original answer."""
        dialogues, teacher, meta = [], [], []
        revealing = {"A": 0, "B": 0}
        for rec, plans in groups:
            item = Example.from_dict(rec["item"])
            question = prompts.messages_for(item)[-1]["content"]
            for plan in plans:
                probes = [rec["probes"][j] for j in plan.probe_order]
                dialogues.append([self.rules.answer_prompt(p["probe"]) for p in probes] + [question])
                teacher.append([p["teacher_response"] for p in probes])
                meta.append((rec["id"], plan.scenario))
                revealing[plan.scenario] += any(probe_reveals(rec, p) for p in probes)
        return dialogues, teacher, meta, revealing

    def __call__(self, prompt_list, trainer) -> Rollout:
        groups = self.plans_for(prompt_list, trainer.state.global_step)
        dialogues, teacher, meta, revealing = self.dialogues_for(groups)
        log_metric(trainer, "exgrpo/revealing_dialogues_A", revealing["A"])
        log_metric(trainer, "exgrpo/revealing_dialogues_B", revealing["B"])
        sampler = VLLMTurnSampler(trainer.vllm_generation, self.layout.stop_ids) if getattr(trainer, "use_vllm", False) else None
        with _eval_mode(trainer) as model:
            out = rollout_dialogues(model, self.tokenizer, self.layout, dialogues,
                                    teacher if self.settings.probe_answers == "teacher" else None,
                                    temperature=self.settings.temperature, max_probe_tokens=self.settings.max_probe_tokens,
                                    max_final_tokens=self.settings.max_final_tokens, sampler=sampler,
                                    backend=self.settings.rollout_backend, seed=rollout_seed(self.settings, trainer))
        # Eq. 8's teacher-forced dialogues: the Scenario A probe order of each question
        aux = [teacher_forced(self.layout, [(self.rules.answer_prompt(rec["probes"][j]["probe"]),
                                                       rec["probes"][j]["teacher_response"]) for j in plans[0].probe_order])
                         for rec, plans in groups if plans[0].probe_order]
        if sampler is not None:  # a policy token without vLLM's logprob gets no importance-sampling correction
            log_metric(trainer, "vllm/policy_tokens_without_logprob",
                        sum(lp is None for d, _ in out for lp, m in zip(d.logprobs, d.mask) if m))
        # TRL reads: prompt_ids, completion_ids, logprobs (per completion token; None entries become NaN
        # and get no importance-sampling correction: the environment's context tokens), env_mask (1 =
        # policy token), and passes every other key to the reward functions
        return Rollout({"prompt_ids": [d.prompt_ids for d, _ in out], "completion_ids": [d.completion_ids for d, _ in out],
                        "logprobs": [d.logprobs for d, _ in out] if sampler is not None else None,
                        "env_mask": [d.mask for d, _ in out], "final_text": [f for _, f in out],
                        "question_id": [q for q, _ in meta], "scenario": [s for _, s in meta]}, aux=aux)


class SingleTurnRollout:
    """TRL ``rollout_func`` of plain GRPO (``mode="grpo"``): each prompt one single-turn sample, through
    the kit's engine like ExGRPO's dialogues (so the two compare per generated token). A probe's
    budget is ``max_probe_tokens`` and an original question's ``max_final_tokens``, as in a dialogue."""

    def __init__(self, rows: Sequence[dict], settings: ExGRPOSettings, tokenizer):
        self.budget = {r["prompt"][-1]["content"]: settings.max_probe_tokens if r["answer_type"] else settings.max_final_tokens
                       for r in rows}
        self.settings, self.tokenizer = settings, tokenizer
        self.layout = ChatLayout(tokenizer)

    def __call__(self, prompt_list, trainer) -> Rollout:
        texts = [p[-1]["content"] for p in prompt_list]
        missing = [t for t in texts if t not in self.budget]
        if missing:
            raise KeyError(f"a prompt of the batch is not among the training rows: {missing[0][:80]!r}")
        with _eval_mode(trainer) as model:
            out = rollout_single_turn(model, self.tokenizer, self.layout, texts, [self.budget[t] for t in texts],
                                      temperature=self.settings.temperature, seed=rollout_seed(self.settings, trainer))
        return Rollout({"prompt_ids": [d.prompt_ids for d in out], "completion_ids": [d.completion_ids for d in out],
                        "logprobs": None})


def log_metric(trainer, key: str, value: float) -> None:
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
        log_metric(trainer, "timing/rollout_s", time.perf_counter() - t0)
