"""Rewards and advantages of ExGRPO (method.md section 4, Eq. 4-7), as small pure functions.

* Eq. 4  ``r_base``: 1 if the final answer to the original question is correct, else 0 (no format reward).
* Eq. 5  Dialogue Structure Utility: with P_full and P_partial the mean R_base of the Scenario A (full
  dialogue) and Scenario B (partial dialogue) rollouts of one question, r_dsu = δ if
  P_full > ν · P_partial, else 0 (δ > 0, ν >= 1).
* Eq. 6  R_total = R_base + r_dsu for a correct Scenario A rollout when Eq. 5 fires; otherwise R_base.
* Eq. 7  group-normalised advantages over the G rollouts of a question: (R - mean) / (std + eps).

``ExGRPOReward`` is the reward function TRL calls once per step with every rollout of the step: it
scores each final answer (Eq. 4), groups the rollouts by question and applies Eq. 5-6 per group, and
logs R_base, P_full, P_partial, how often the bonus fired and how often it *acted*. TRL then
normalises per group (Eq. 7).

Fired is not acted: under Eq. 7's division by the group's standard deviation, a bonus that raises
every correct rollout of a group whose correct rollouts are all Scenario A (P_partial = 0) rescales
the group's rewards uniformly ([1.5, 0, 0, 0] and [1, 0, 0, 0]), and the advantages do not change.
``bonus_effect`` compares the advantages with and without the bonus, as TRL computes them.
"""
from __future__ import annotations

import math
from typing import Sequence

from ..data import answers
from ..data.example import Example
from .settings import ExGRPOSettings


def r_base(example: Example, final_answer: str) -> float:
    """Eq. 4: 1.0 when ``final_answer`` answers ``example`` correctly, else 0.0 (the evaluation's scorer)."""
    return 1.0 if answers.is_correct(example, final_answer) else 0.0


def dsu_fires(full: Sequence[float], partial: Sequence[float], nu: float = 1.0) -> bool:
    """Eq. 5's condition: P_full > ν · P_partial. An empty partial group counts as P_partial = 0 (kit default)."""
    if nu < 1:
        raise ValueError(f"ν must be >= 1 (method.md Eq. 5), got {nu}")
    if not full:
        return False
    p_full = sum(full) / len(full)
    p_partial = sum(partial) / len(partial) if partial else 0.0
    return p_full > nu * p_partial


def dsu_bonus(full: Sequence[float], partial: Sequence[float], delta: float = 0.5, nu: float = 1.0) -> list[float]:
    """Total rewards of the Scenario A rollouts of one question (Eq. 5-6).

    ``full``: R_base of the Scenario A rollouts; ``partial``: R_base of the Scenario B rollouts.
    δ is added to each correct full rollout when mean(full) > ν · mean(partial).

    >>> dsu_bonus([1, 1, 0, 1], [1, 0, 0, 0], delta=0.5, nu=1.0)
    [1.5, 1.5, 0.0, 1.5]
    >>> dsu_bonus([1, 0], [1, 1])
    [1.0, 0.0]

    δ = 0 turns the bonus off (Table 3's ExGRPO without Eq. 5-6: the same dialogues and aux loss).
    """
    if delta < 0:
        raise ValueError(f"δ must be > 0 (method.md Eq. 5), or 0 for no bonus; got {delta}")
    fires = dsu_fires(full, partial, nu)
    return [float(r) + (delta if fires and r > 0 else 0.0) for r in full]


def group_advantages(rewards: Sequence[float], eps: float = 1e-4, scale: bool = True) -> list[float]:
    """Eq. 7's group normalisation over the G rollouts of one question: (R - mean) / (std + eps).

    std is the sample standard deviation (n - 1), as TRL computes it; ``scale=False`` gives R - mean.
    """
    n = len(rewards)
    if n == 0:
        return []
    mean = sum(rewards) / n
    if not scale:
        return [r - mean for r in rewards]
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (n - 1)) if n > 1 else 0.0
    return [(r - mean) / (std + eps) for r in rewards]


def step_advantages(rewards: Sequence[float], groups: Sequence[Sequence[int]], scaling: str = "group",
                    eps: float = 1e-4) -> list[float]:
    """The advantages TRL gives one step's rollouts (``groups``: the indices of each question's
    rollouts): the reward minus its group's mean, divided by the group's standard deviation
    (``scaling`` "group", Eq. 7), by the whole step's ("batch"), or not divided ("none"); + ``eps``.
    It recomputes them for the bonus-effect log from this process's rollouts: under "batch" with
    several processes TRL divides by the standard deviation over all of them, so the logged change is
    then this process's view.

    >>> [round(a, 3) for a in step_advantages([1.5, 0, 0, 0, 1, 0, 0, 0], [[0, 1, 2, 3], [4, 5, 6, 7]])]
    [1.5, -0.5, -0.5, -0.5, 1.5, -0.5, -0.5, -0.5]
    """
    if scaling not in ("group", "batch", "none"):
        raise ValueError(f"scaling must be group, batch or none, got {scaling!r}")
    out = [0.0] * len(rewards)
    for idx in groups:
        centred = group_advantages([rewards[i] for i in idx], eps=eps, scale=scaling == "group")
        for i, a in zip(idx, centred):
            out[i] = a
    if scaling == "batch" and len(rewards) > 1:
        mean = sum(rewards) / len(rewards)
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1))
        out = [a / (std + eps) for a in out]
    return out


def bonus_effect(base: Sequence[float], totals: Sequence[float], groups: Sequence[Sequence[int]],
                 scaling: str = "group", tol: float = 1e-3) -> dict:
    """What Eq. 5-6's bonus changed in one step: the advantages with it (``totals``) against those
    without it (``base``). Returns ``changed_groups`` (groups where the bonus fired, i.e. changed a
    reward, and an advantage moved by more than ``tol``: eps alone moves them by about 1e-4; under
    "batch" scaling the bonus also moves the step's standard deviation and so every group's advantages
    a little, which is not counted as the bonus acting in a group where it did not fire) and
    ``mean_abs_change``, the mean absolute change of the advantages over every rollout of the step
    (groups where it did not fire included, as zeros under "group" scaling).

    >>> bonus_effect([1, 0, 0, 0], [1.5, 0, 0, 0], [[0, 1, 2, 3]])["changed_groups"]  # P_partial = 0
    0
    >>> bonus_effect([1, 1, 1, 0], [1.5, 1.5, 1, 0], [[0, 1, 2, 3]])["changed_groups"]  # A, A right, one B right
    1
    >>> bonus_effect([1, 0, 0, 0, 1, 1, 0, 0], [1.5, 0, 0, 0, 1, 1, 0, 0], [[0, 1, 2, 3], [4, 5, 6, 7]],
    ...              scaling="batch")["changed_groups"]  # the second group moved only through the step's std
    1
    """
    with_bonus = step_advantages(totals, groups, scaling)
    without = step_advantages(base, groups, scaling)
    delta = [abs(a - b) for a, b in zip(with_bonus, without)]
    changed = sum(any(totals[i] != base[i] for i in idx) and any(delta[i] > tol for i in idx) for idx in groups)
    return {"changed_groups": changed, "mean_abs_change": sum(delta) / len(delta) if delta else 0.0}


def exgrpo_group_rewards(base: Sequence[float], scenarios: Sequence[str], delta: float, nu: float) -> tuple[list[float], dict]:
    """R_total for one question's G rollouts in any order; ``scenarios[i]`` is "A" (full) or "B" (partial).

    Returns the totals and the statistics logged per step (P_full, P_partial, whether the bonus fired).
    Scenario B rollouts keep R_base (Eq. 6).
    """
    full = [b for b, s in zip(base, scenarios) if s == "A"]
    partial = [b for b, s in zip(base, scenarios) if s == "B"]
    bonus = iter(dsu_bonus(full, partial, delta, nu)) if full else iter(())
    totals = [next(bonus) if s == "A" else float(b) for b, s in zip(base, scenarios)]
    stats = {"p_full": sum(full) / len(full) if full else float("nan"),
             "p_partial": sum(partial) / len(partial) if partial else float("nan"),
             "fired": bool(full) and delta > 0 and dsu_fires(full, partial, nu)}  # δ = 0: nothing to fire
    return totals, stats


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


class ExGRPOReward:
    """One reward function for TRL: R_total per rollout (Eq. 6), with R_base and DSU statistics logged.

    exgrpo mode: ``final_text`` is each dialogue's final answer and ``scenario`` its "A"/"B"; the
    rollouts of one question (consecutive or not) form its group. grpo mode: each sample is scored
    against its own gold (a probe's teacher answer, or the question's), R_base only."""

    __name__ = "exgrpo_reward"

    def __init__(self, records: Sequence[dict], settings: ExGRPOSettings):
        self.items = {r["id"]: Example.from_dict(r["item"]) for r in records}
        self.settings = settings

    def __call__(self, prompts, completions, question_id, log_metric=None, scenario=None, final_text=None,
                 gold=None, answer_type=None, **kwargs) -> list[float]:
        if self.settings.mode == "grpo":
            base = self._grpo_base(completions, question_id, gold, answer_type)
            if log_metric:
                log_metric("exgrpo/r_base", _mean(base))
            return base
        base = [r_base(self.items[q], f) for q, f in zip(question_id, final_text)]
        totals = [0.0] * len(base)
        stats, groups = [], []
        for qid in dict.fromkeys(question_id):  # groups in order of appearance
            idx = [i for i, q in enumerate(question_id) if q == qid]
            group_totals, group_stats = exgrpo_group_rewards([base[i] for i in idx], [scenario[i] for i in idx],
                                                             self.settings.delta, self.settings.nu)
            for i, v in zip(idx, group_totals):
                totals[i] = v
            stats.append(group_stats)
            groups.append(idx)
        if log_metric:
            effect = bonus_effect(base, totals, groups, self.settings.scale_rewards)  # as TRL will scale them
            log_metric("exgrpo/r_base", _mean(base))
            log_metric("exgrpo/bonus_fired", _mean([s["fired"] for s in stats]))
            log_metric("exgrpo/bonus_effective", effect["changed_groups"] / len(groups))
            log_metric("exgrpo/bonus_adv_change", effect["mean_abs_change"])
            log_metric("exgrpo/p_full", _mean([s["p_full"] for s in stats]))
            log_metric("exgrpo/p_partial", _mean([s["p_partial"] for s in stats]))
            log_metric("exgrpo/r_dsu", _mean([t - b for t, b in zip(totals, base)]))
        return totals

    def _grpo_base(self, completions, question_id, gold, answer_type) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [r_base(Example(qid, "probe", "", g, meta={"answer_type": t}) if t else self.items[qid], text)
                for qid, text, g, t in zip(question_id, texts, gold, answer_type)]
