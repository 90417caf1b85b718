"""How often Eq. 5-6's bonus can act in a group, worked out before a run is paid for.

A group holds ceil(G/2) Scenario A and floor(G/2) Scenario B rollouts of one question
(:func:`~exgrpo_utils.train.dialogue.plan_group`). If each A rollout is right with probability p_full
and each B rollout with p_partial, independently, the numbers of right rollouts are binomial, and for
every outcome (a right of the A's, b of the B's) the kit's own reward code says whether Eq. 5 fires
(:func:`~exgrpo_utils.train.rewards.exgrpo_group_rewards`) and whether the bonus changes any advantage
under Eq. 7's scaling (:func:`~exgrpo_utils.train.rewards.bonus_effect`). Summing over the outcomes
gives the exact probabilities under that model:

* ``fires``: Eq. 5 holds (P_full > ν · P_partial, with at least one A rollout right);
* ``acts``: it fires and an advantage moves. Under "group" scaling a bonus on a group whose right
  rollouts are all Scenario A is a uniform rescaling that the division by the standard deviation
  cancels, so it acts only when some B rollout is also right; under "none" it acts whenever it fires
  and the group is not all right;
* ``mean_abs_change``: the expected mean absolute change of the group's advantages;
* ``no_gradient``: every total reward of the group is equal (no advantage, no policy gradient).

The model is a simplification: a real question has its own p_full and p_partial (easy questions give
all-right groups, hard ones all-wrong), which makes mixed groups, and so acting bonuses, rarer than
the pooled rates say. Compare with a run's logged ``exgrpo/bonus_effective``. "batch" scaling is not
covered: whether a bonus acts there depends on the step's other groups.

``python -m exgrpo_utils.train.bonus_regime RUN_DIR`` reads a run's measured P_full and P_partial
from its ``train_log.jsonl`` and prints the table for several G and both scalings.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Callable, Sequence

from ..infra.files import iter_jsonl
from .rewards import bonus_effect, exgrpo_group_rewards


def _binomial(n: int, p: float) -> list[float]:
    return [math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(n + 1)]


def bonus_regime(p_full: float, p_partial: float, G: int, delta: float = 0.5, nu: float = 1.0,
                 scaling: str = "group") -> dict:
    """Probabilities that Eq. 5 fires and that the bonus acts, in one group of G rollouts (see the module).

    >>> r = bonus_regime(1.0, 0.5, G=4)  # both A right; B: none 1/4, one 1/2, both 1/4
    >>> r["fires"], r["acts"]  # fires unless both B are right; acts only when exactly one B is right
    (0.75, 0.5)
    >>> bonus_regime(1.0, 0.5, G=4, scaling="none")["acts"]  # no division: every firing acts
    0.75
    """
    for name, p in (("p_full", p_full), ("p_partial", p_partial)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    if G < 2:
        raise ValueError(f"G must be >= 2 to have both scenarios, got {G}")
    if scaling not in ("group", "none"):
        raise ValueError(f"scaling must be 'group' or 'none' here, got {scaling!r} (under 'batch' "
                         "whether a bonus acts depends on the step's other groups)")
    n_a = G - G // 2
    n_b = G // 2
    scenarios = ["A"] * n_a + ["B"] * n_b
    out = {"G": G, "scaling": scaling, "fires": 0.0, "acts": 0.0, "mean_abs_change": 0.0, "no_gradient": 0.0}
    for a, pa in enumerate(_binomial(n_a, p_full)):
        for b, pb in enumerate(_binomial(n_b, p_partial)):
            prob = pa * pb
            base = [1.0] * a + [0.0] * (n_a - a) + [1.0] * b + [0.0] * (n_b - b)
            totals, stats = exgrpo_group_rewards(base, scenarios, delta, nu)
            effect = bonus_effect(base, totals, [list(range(G))], scaling)
            out["fires"] += prob * stats["fired"]
            out["acts"] += prob * effect["changed_groups"]
            out["mean_abs_change"] += prob * effect["mean_abs_change"]
            out["no_gradient"] += prob * (len(set(totals)) == 1)
    return out


def acts_per_step(acts: float, questions_per_step: int) -> float:
    """Probability that the bonus acts in at least one of a step's groups (independent questions).

    >>> round(acts_per_step(0.5, 2), 2)
    0.75
    """
    return 1.0 - (1.0 - acts) ** questions_per_step


def measured_rates(run_dir: str | Path) -> dict:
    """A run's mean logged P_full, P_partial, fired and acted rates over its steps (``train_log.jsonl``)."""
    path = Path(run_dir) / "train_log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training log (give a finished ExGRPO run's folder)")
    rows = [row for _, row in iter_jsonl(path) if "exgrpo/p_full" in row]  # a bad line: named by file and line
    if not rows:
        raise ValueError(f"{path}: no step logs P_full (not an ExGRPO run, or one from before the bonus logs)")
    keys = {"p_full": "exgrpo/p_full", "p_partial": "exgrpo/p_partial", "fired": "exgrpo/bonus_fired",
            "acted": "exgrpo/bonus_effective", "no_gradient": "frac_reward_zero_std"}
    return {"steps": len(rows), **{k: sum(r.get(v, 0.0) for r in rows) / len(rows) for k, v in keys.items()}}


def table(p_full: float, p_partial: float, Gs=(4, 8, 12, 16), questions_per_step: int = 1,
          delta: float = 0.5, nu: float = 1.0) -> str:
    """A markdown table of :func:`bonus_regime` for each G in ``Gs`` under "group" and "none" scaling."""
    return "\n".join([f"P_full = {p_full:.3f}, P_partial = {p_partial:.3f}, δ = {delta}, ν = {nu}, "
                      f"{questions_per_step} question(s) per step", "",
                      *regime_rows(lambda G, scaling: bonus_regime(p_full, p_partial, G, delta, nu, scaling), Gs,
                                   questions_per_step)])


def regime_rows(regime: Callable[[int, str], dict], Gs: Sequence[int], questions_per_step: int) -> list[str]:
    """The markdown rows of a regime table: ``regime(G, scaling)`` for each G in ``Gs``, "group" and "none"."""
    lines = ["| G | scaling | fires per group | acts per group | acts per step | mean abs advantage change | "
             "no-gradient groups |", "|---|---|---|---|---|---|---|"]
    for G in Gs:
        for scaling in ("group", "none"):
            r = regime(G, scaling)
            lines.append(f"| {G} | {scaling} | {r['fires']:.3f} | {r['acts']:.3f} | "
                         f"{acts_per_step(r['acts'], questions_per_step):.3f} | {r['mean_abs_change']:.4f} | "
                         f"{r['no_gradient']:.3f} |")
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", nargs="?", help="an ExGRPO training folder: its measured P_full and P_partial")
    ap.add_argument("--p-full", type=float, help="instead of a run: P(a Scenario A rollout is right)")
    ap.add_argument("--p-partial", type=float, help="instead of a run: P(a Scenario B rollout is right)")
    ap.add_argument("--G", type=int, nargs="+", default=[4, 8, 12, 16])
    ap.add_argument("--questions-per-step", type=int, default=None)
    ap.add_argument("--delta", type=float, default=0.5)
    ap.add_argument("--nu", type=float, default=1.0)
    args = ap.parse_args(argv)
    q = args.questions_per_step or 1
    if args.run_dir:
        m = measured_rates(args.run_dir)
        summary = Path(args.run_dir) / "rl_summary.json"
        if args.questions_per_step is None and summary.is_file():
            q = json.loads(summary.read_text()).get("settings", {}).get("questions_per_step", 1)
        print(f"{args.run_dir}: {m['steps']} steps; logged per group: fired {m['fired']:.3f}, acted "
              f"{m['acted']:.3f}, no gradient {m['no_gradient']:.3f}\n")
        p_full, p_partial = m["p_full"], m["p_partial"]
    elif args.p_full is None or args.p_partial is None:
        ap.error("give a run folder, or both --p-full and --p-partial")
    else:
        p_full, p_partial = args.p_full, args.p_partial
    try:
        print(table(p_full, p_partial, args.G, q, args.delta, args.nu))
    except ValueError as err:
        ap.error(str(err))


if __name__ == "__main__":
    main()
