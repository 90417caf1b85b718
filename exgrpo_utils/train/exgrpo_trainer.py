"""The trainer of ExGRPO and plain GRPO: TRL's ``GRPOTrainer`` plus Eq. 8's auxiliary SFT loss.

One step, in the order TRL runs it (``GRPOTrainer._generate_and_score_completions``, then
``compute_loss``):

1. rollout: ``ExGRPOTrainer.run_rollout`` calls the step's rollout (``rollouts.DialogueRollout`` or
   ``rollouts.SingleTurnRollout``) and hands TRL its ``fields``; ExGRPO's teacher-forced dialogues of
   Eq. 8 come back in the same result (``Rollout.aux``) and are kept for this step's loss (plain
   GRPO's aux rows are its probe rows with their teacher answers, ``probe_answer_batch``);
2. reward: TRL calls ``rewards.ExGRPOReward`` (Eq. 4-6) on every rollout of the step;
3. advantages: TRL normalises the rewards (Eq. 7, per group by default: the ``scale_rewards`` setting);
4. loss: TRL's clipped surrogate with beta * KL to the reference (Eq. 7), plus lambda * ``aux_sft_loss``
   (Eq. 8) in ``ExGRPOTrainer.compute_loss``.

This module imports TRL at the top; ``train.exgrpo`` imports it only when a trainer is built.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from accelerate.utils import gather_object
from trl import GRPOTrainer
from trl.trainer.utils import split_tensor_dict

from .dialogue import ChatLayout, DialogueTokens, teacher_forced
from .lm_head import scored_only
from .rl_data import QuestionBlockSampler, question_blocks
from .rollouts import Rollout, log_metric
from .trainlog import QuestionVisitsLog


class ExGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose rollouts come from ``rollout`` (None: TRL's own single-turn generation), plus
    Eq. 8's auxiliary SFT loss (weight ``aux_lambda``) on the teacher's probe answers, and a log of
    the tokens each step spends by kind."""

    # the positions whose log-probabilities the loss reads (``scored_positions``): the rollout's policy-token
    # masks while TRL generates and scores, the micro-batch's loss mask while ``compute_loss`` runs
    _rollout_env_mask: list[list[int]] | None = None
    _loss_mask: torch.Tensor | None = None

    def __init__(self, *args, rollout=None, aux_lambda: float = 0.0, layout: ChatLayout | None = None,
                 visits: QuestionVisitsLog | None = None, **kwargs):
        self.rollout = rollout
        super().__init__(*args, rollout_func=self.run_rollout if rollout is not None else None, **kwargs)
        self.aux_lambda, self.layout, self.visits = aux_lambda, layout, visits
        if visits is not None:
            self.add_callback(visits)
        self._rollout_aux: list[DialogueTokens] | None = None
        self._aux_batch: list[DialogueTokens] = []

    def run_rollout(self, prompts, trainer) -> dict:
        """TRL's ``rollout_func``: the rollout's fields for TRL; its aux dialogues kept for the loss. A
        rollout may also return TRL's plain dict (no aux dialogues: the rows' targets are used)."""
        result: Rollout | dict = self.rollout(prompts, trainer)
        fields = result if isinstance(result, dict) else result.fields
        self._rollout_aux = None if isinstance(result, dict) else result.aux
        # TRL builds its own tool_mask when it runs tools, and ignores env_mask then
        self._rollout_env_mask = None if getattr(self, "tools", None) else fields.get("env_mask")
        return fields

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
        self._rollout_aux, self._rollout_env_mask = None, None
        check_question_blocks([x["question_id"] for x in inputs], self.args.per_device_train_batch_size)
        if self.visits is not None:  # every process's questions of this step, gathered to the main one
            mine = list(dict.fromkeys(x["question_id"] for x in inputs))
            self.visits.record(self.state.global_step + 1, gather_object([mine]), self.accelerator.is_main_process)
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._rollout_env_mask = None  # the policy passes read the micro-batch's own loss mask
        self._log_tokens(output)
        if self.aux_lambda > 0:
            # exgrpo: the dialogues the rollout built; grpo: each probe row's (prompt, teacher answer)
            self._aux_batch = self._rollout_aux if self._rollout_aux is not None else probe_answer_batch(self.layout, inputs)
            log_metric(self, "tokens/aux_sft", sum(len(d.full_ids) for d in self._aux_batch))
        return output

    def _prepare_inputs(self, generation_batch):
        """TRL's buffering of a generation batch, split in order instead of shuffled first: the step's rows
        come question by question (``QuestionBlockSampler``), so each micro-batch holds one question's rows
        and is as wide as that question's longest row (``trim_padding``), not the step's. With the kit's
        ``loss_type="grpo"`` (a mean per row, every micro-batch of the same row count) the step's loss does
        not depend on how rows are grouped; what changes against TRL's is the floating-point order of the
        sums, the per-micro-batch extremes TRL logs (``clip_ratio/low_min``, ``/high_max``) and the random
        numbers: TRL's shuffle draws from torch's global generator, which the rollout engine's seeds come
        from too, so rollouts after the first step differ from a run with the shuffle. Text only (the kit's
        students): TRL's splitting of image inputs is not applied."""
        if not self.model.training:
            return super()._prepare_inputs(generation_batch)
        parts = self.args.steps_per_generation
        if self._step % (parts * self.num_iterations) == 0 or self._buffered_inputs is None:
            self._buffered_inputs = split_tensor_dict(self._generate_and_score_completions(generation_batch), parts)
        return self._buffered_inputs[self._step % parts]

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, **kwargs):
        """TRL's log-prob pass, with two savings that leave every value the loss reads unchanged:

        - each chunk of ``batch_size`` rows is cut to its own width first. TRL runs the reference pass over
          the whole generation batch, padded to its longest row, in chunks of ``per_device_train_batch_size``
          rows: one question's rows, since the sampler yields questions contiguously
          (``QuestionBlockSampler``, checked in ``_generate_and_score_completions``);
        - only the positions the loss reads go through the vocabulary projection (``scored_positions``:
          the student's own tokens; not the prompt, the dialogue's context turns or padding). TRL's fused
          head does that on Triton devices and projects every position elsewhere (``lm_head.scored_only``).

        Positions not scored get 0 (TRL's pass gives 0 at padding and a value at context tokens, which every
        reader of them masks out). Image inputs and MoE models go to TRL's
        pass unchanged."""
        if kwargs.get("compute_aux_loss") or any(value is not None for key, value in kwargs.items()
                                                 if key != "compute_aux_loss"):
            return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                              batch_size, compute_entropy, **kwargs)
        batch_size = batch_size or input_ids.size(0)
        scored = scored_positions(attention_mask[:, -logits_to_keep:], self._loss_mask, self._rollout_env_mask)
        logps, entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            mask = attention_mask[start:start + batch_size]
            lead, tail = padding_columns(mask, logits_to_keep)
            end, keep = mask.size(1) - tail, logits_to_keep - tail
            ids, mask = input_ids[start:start + batch_size, lead:end], mask[:, lead:end]
            labels = torch.full_like(ids, -100)
            labels[:, -keep:] = ids[:, -keep:].masked_fill(~scored[start:start + batch_size, :keep], -100)
            with self.accelerator.autocast(), scored_only():
                out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
            logps.append(F.pad(out.log_probs[:, -keep:], (0, tail)))
            if compute_entropy:
                entropies.append(F.pad(out.entropy[:, -keep:], (0, tail)))
        return torch.cat(logps), torch.cat(entropies) if compute_entropy else None, None

    def _log_tokens(self, output) -> None:
        """This step's tokens by kind (this process): ``generated`` (sampled by the policy),
        ``context`` (dialogue turns the policy reads but did not write), ``update`` (prompt and
        completion through the policy's forward and backward), ``reference`` (the KL's reference
        pass), ``aux_sft`` (Eq. 8's teacher-forced rows, logged after the aux batch is built)."""
        prompt = int(output["prompt_mask"].sum())
        completion = int(output["completion_mask"].sum())
        tool = output.get("tool_mask")
        generated = int((output["completion_mask"] * tool).sum()) if tool is not None else completion
        log_metric(self, "tokens/generated", generated)
        log_metric(self, "tokens/context", completion - generated)
        log_metric(self, "tokens/update", prompt + completion)
        log_metric(self, "tokens/reference", prompt + completion if output.get("ref_per_token_logps") is not None else 0)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = trim_padding(inputs)  # this micro-batch's rows only need their own width
        tool = inputs.get("tool_mask")
        self._loss_mask = (inputs["completion_mask"] * (tool if tool is not None else 1)).bool()
        try:
            loss = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        finally:
            self._loss_mask = None
        if self.aux_lambda > 0 and self._aux_batch and model.training:
            # this micro-batch's share of the step's aux dialogues (TRL's slice index of the generation batch)
            part, weight = aux_share(self._aux_batch, self._step % self.args.steps_per_generation,
                                     self.args.steps_per_generation)
            if part:
                aux = aux_sft_loss(model, part, pad_id=self.processing_class.pad_token_id)
                loss = loss + self.aux_lambda * weight * aux
                self._metrics["train"]["aux_sft_loss"].append(aux.item())
        return loss


def aux_share(batch: Sequence[DialogueTokens], index: int, parts: int) -> tuple[list[DialogueTokens], float]:
    """Micro-batch ``index`` of ``parts``' share of a step's aux dialogues and its weight in the step's loss.

    A step of several questions updates micro-batches of one question's row count (``exgrpo.grpo_config``);
    Eq. 8's dialogues are split over as many parts, contiguous and as even as possible, each part's mean loss
    weighted by its share of the dialogues, so the parts add up to the step's aux loss once (a mean over
    parts of per-part token means; with one part, the whole batch at weight 1)."""
    size, extra = divmod(len(batch), parts)
    start = index * size + min(index, extra)
    part = list(batch[start:start + size + (index < extra)])
    return part, len(part) / len(batch)


PROMPT_KEYS = ("prompt_ids", "prompt_mask")  # left-padded: padding in the leading columns


def trim_padding(inputs: dict) -> dict:
    """A micro-batch without the columns that are padding in all of its rows.

    TRL pads a step's prompts (on the left) and completions (on the right) to the longest of the whole
    generation batch; a micro-batch (one question's rows, see ``ExGRPOTrainer._prepare_inputs``)
    is then often narrower. The prompt's all-padding leading columns and every per-completion-token tensor's
    all-padding trailing columns are cut (completions, masks, reference and old log-probabilities),
    so the update's forward and backward run over real tokens and the padding within the micro-batch
    only. Attention never reaches a padded position, so the loss is the same up to floating-point
    rounding (RoPE depends on relative positions only)."""
    prompt_mask, completion_mask = inputs["prompt_mask"], inputs["completion_mask"]
    width = completion_mask.size(1)
    used = torch.nonzero(completion_mask.any(0))
    keep = int(used[-1]) + 1 if len(used) else 1
    lead = torch.nonzero(prompt_mask.any(0))
    start = int(lead[0]) if len(lead) else 0
    out = {}
    for key, value in inputs.items():
        if key in PROMPT_KEYS:
            value = value[:, start:]
        elif torch.is_tensor(value) and value.dim() == 2 and value.size(1) == width:
            value = value[:, :keep]
        out[key] = value
    return out


def check_question_blocks(question_ids: Sequence[str], rows: int) -> None:
    """Each block of ``rows`` consecutive rows of a process's generation batch is one question's (what the
    per-question micro-batches and reference chunks rely on); a ValueError otherwise."""
    for start in range(0, len(question_ids), rows):
        block = set(question_ids[start:start + rows])
        if len(block) != 1:
            raise ValueError(f"rows {start}-{start + rows - 1} of this step hold questions {sorted(block)}: "
                             f"a micro-batch of {rows} rows must hold one question's rows")


def scored_positions(completion_attention: torch.Tensor, loss_mask: torch.Tensor | None,
                     env_mask: Sequence[Sequence[int]] | None) -> torch.Tensor:
    """Which completion positions of a log-prob pass go through the vocabulary projection: a bool tensor shaped
    like ``completion_attention`` (the completion part of the pass's attention mask, rows x logits_to_keep).

    Always a superset of the positions TRL's loss reads (``completion_mask * tool_mask``), so no value the loss
    uses changes. The policy's pass in ``compute_loss`` knows that mask (``loss_mask``); the reference pass,
    run inside TRL's generate-and-score over the process's whole generation batch, knows the rollout's
    ``env_mask`` (1 = the student's own token; padded with 1 past a row's length, as TRL pads its tool_mask,
    so a row shorter than its completion never hides a position the loss reads); without either (plain
    GRPO's single turns, TRL's own generation), every real completion position."""
    real = completion_attention.bool()
    rows, width = real.shape
    if loss_mask is not None:
        if loss_mask.shape != real.shape:
            raise ValueError(f"loss mask of shape {tuple(loss_mask.shape)} for a pass of {rows} x {width} completion positions")
        return real & loss_mask.bool()
    if env_mask is not None:
        if len(env_mask) != rows or any(len(m) > width for m in env_mask):
            raise ValueError(f"the rollout's env_mask ({len(env_mask)} rows, longest {max(map(len, env_mask), default=0)}) "
                             f"does not match a pass of {rows} x {width} completion positions")
        policy = torch.ones(rows, width, dtype=torch.bool, device=real.device)
        for row, m in enumerate(env_mask):
            policy[row, :len(m)] = torch.tensor(m, dtype=torch.bool)
        return real & policy
    return real


def padding_columns(attention_mask: torch.Tensor, completion_width: int) -> tuple[int, int]:
    """How many leading and trailing columns of ``[prompt | completion]`` rows are padding in every row:
    the leading ones within the (left-padded) prompt part, the trailing ones within the (right-padded)
    completion part, at least one completion column kept."""
    used = attention_mask.any(0)
    prompt_width = attention_mask.size(1) - completion_width
    real = torch.nonzero(used[:prompt_width])
    lead = int(real[0]) if len(real) else 0
    real = torch.nonzero(used[prompt_width:])
    last = int(real[-1]) + 1 if len(real) else 1
    return lead, completion_width - last


def probe_answer_batch(layout: ChatLayout, inputs: Sequence[dict]) -> list[DialogueTokens]:
    """grpo's aux SFT rows: each distinct probe row of the batch with its teacher answer (rows without a
    target, the original questions, are left out: the aux loss trains on probe answers only)."""
    seen, batch = set(), []
    for x in inputs:
        key = (x["question_id"], x["prompt"][-1]["content"])
        if key not in seen and x.get("target"):
            seen.add(key)
            batch.append(teacher_forced(layout, [(x["prompt"][-1]["content"], x["target"])]))
    return batch


def aux_sft_loss(model, batch: Sequence[DialogueTokens], *, pad_id: int):
    """Eq. 8: mean token NLL of the target (teacher answer) tokens of teacher-forced dialogues.

    Kit default: a mean over target tokens rather than the paper's sum, so λ does not scale with length."""
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
