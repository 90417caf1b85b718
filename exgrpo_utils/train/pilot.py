"""A rollout pilot: how often a model answers right after full and after partial dialogues, before an
RL run is paid for, and so how often Eq. 5-6's bonus could act.

ExGRPO's bonus acts only in groups where full dialogues beat partial ones and the rewards are mixed
(``bonus_regime``). Whether that happens depends on the model, the probes and the settings (who
answers the probe turns, k, the token budgets), and one RL step gives only G/2 rollouts of each
scenario per question. The pilot samples many rollouts of each scenario for a few training questions
with the run's own dialogue code (``DialogueRollout``, ``rollout_dialogues``), trains nothing, and
reports per question how many were right. From those it estimates, for each G and reward scaling,
how often Eq. 5 would fire and how often the bonus would change an advantage: the per-question rates
are plugged into ``bonus_regime`` and averaged over the questions (a per-question rate from n samples
is itself noisy, so the estimate is rough at small n).

    python -m exgrpo_utils.train.pilot --preset cpu --questions 16 --samples 8
    python -m exgrpo_utils.train.pilot --preset cpu --set rl_probe_answers=teacher --model PATH

``--model``: the policy to roll out (default: the run's SFT warm-up, ``train/sft/final``). The result
goes to ``--out`` as JSON when given.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from ..config import for_notebook, load_preset, parse_overrides, resolve, run_name_of
from ..data import prompts
from ..data.example import Example
from ..infra.files import atomic_write_json
from ..infra.layout import RunLayout
from ..infra.settings import SettingsError, build
from ..models.registry import default_device, load_model
from ..teach.inversion import load_probe_dataset
from ..teach.rules import RuleSet, load_rules
from .bonus_regime import bonus_regime, regime_rows
from .dialogue import ChatLayout
from .exgrpo import check_modes
from .rewards import r_base
from .rl_data import rl_records
from .rollouts import DialogueRollout, rollout_dialogues
from .settings import ExGRPOSettings


def right_counts(records: Sequence[dict], meta: Sequence[tuple[str, str]], finals: Sequence[str]) -> list[dict]:
    """Per question: how many of its Scenario A and B rollouts were right (Eq. 4), in order of appearance.

    >>> recs = [{"id": "q", "item": {"id": "q", "dataset": "arith", "question": "1 + 1?", "answer": "2"}}]
    >>> right_counts(recs, [("q", "A"), ("q", "A"), ("q", "B"), ("q", "B")], ["2", "3", "The answer is 2.", "5"])
    [{'id': 'q', 'full_right': 1, 'full_n': 2, 'partial_right': 1, 'partial_n': 2}]
    """
    items = {r["id"]: Example.from_dict(r["item"]) for r in records}
    out: dict[str, dict] = {}
    for (qid, scenario), final in zip(meta, finals):
        row = out.setdefault(qid, {"id": qid, "full_right": 0, "full_n": 0, "partial_right": 0, "partial_n": 0})
        kind = "full" if scenario == "A" else "partial"
        row[f"{kind}_n"] += 1
        row[f"{kind}_right"] += int(r_base(items[qid], final))
    return list(out.values())


def regime_estimate(counts: Sequence[dict], G: int, scaling: str, delta: float, nu: float) -> dict:
    """``bonus_regime`` averaged over the questions, each at its own observed rates."""
    rows = [bonus_regime(c["full_right"] / c["full_n"], c["partial_right"] / c["partial_n"], G, delta, nu, scaling)
            for c in counts]
    return {k: sum(r[k] for r in rows) / len(rows) for k in ("fires", "acts", "mean_abs_change", "no_gradient")}


def run_pilot(model_path: str, probe_records: Sequence[dict], settings: ExGRPOSettings, *, questions: int,
              samples: int, rules: RuleSet | None = None, seed: int = 0, slots: int | None = None) -> dict:
    """Roll out ``samples`` Scenario A and ``samples`` Scenario B dialogues for each of ``questions``
    training questions (a seeded draw) with the model at ``model_path``; nothing is trained. ``slots``:
    dialogues in flight at once (default: all of them; ``rollout_dialogues``)."""
    check_modes(settings)
    if questions < 1 or samples < 1 or (slots is not None and slots < 1):
        raise ValueError(f"questions, samples and slots must be >= 1, got {questions}, {samples} and {slots}")
    rules = rules or load_rules()
    records = rl_records(probe_records, replace(settings, questions=0))  # its own draw below, over every question
    chosen = random.Random(f"pilot:{seed}").sample(records, min(questions, len(records)))
    plan_settings = replace(settings, G=2 * samples)
    model, tok = load_model(model_path, dtype="float32", device=default_device())
    model.eval()
    rollout = DialogueRollout(chosen, rules, plan_settings, tok)
    prompt_list = [prompts.messages_for(Example.from_dict(r["item"])) for r in chosen for _ in range(plan_settings.G)]
    dialogues, teacher, meta, revealing = rollout.dialogues_for(rollout.plans_for(prompt_list, step=0))
    t0 = time.perf_counter()
    out = rollout_dialogues(model, tok, ChatLayout(tok), dialogues,
                            teacher if settings.probe_answers == "teacher" else None,
                            temperature=settings.temperature, max_probe_tokens=settings.max_probe_tokens,
                            max_final_tokens=settings.max_final_tokens, backend="fast", seed=seed, slots=slots)
    seconds = time.perf_counter() - t0
    counts = right_counts(chosen, meta, [f for _, f in out])
    full = sum(c["full_right"] for c in counts) / sum(c["full_n"] for c in counts)
    partial = sum(c["partial_right"] for c in counts) / sum(c["partial_n"] for c in counts)
    return {"model": str(model_path), "probe_answers": settings.probe_answers, "k": settings.k,
            "revealing_probes": settings.revealing_probes, "questions": len(chosen), "samples": samples,
            "seed": seed, "slots": min(slots, len(out)) if slots else len(out), "p_full": full, "p_partial": partial,
            "revealing_dialogues": revealing, "rollouts": len(out), "seconds": round(seconds, 1),
            "generated_tokens": sum(sum(d.mask) for d, _ in out), "per_question": counts}


def report(result: dict, Gs: Sequence[int], questions_per_step: int, delta: float, nu: float) -> str:
    """The pilot's rates and, per G and scaling, the estimated share of groups where the bonus fires and acts."""
    lines = [f"pilot: {result['model']}, probe answers by the {result['probe_answers']}, k = {result['k']}, "
             f"revealing probes {result['revealing_probes']}; {result['questions']} questions x {result['samples']} "
             f"rollouts of each scenario ({result['rollouts']} rollouts, {result['generated_tokens']} policy tokens, "
             f"{result['seconds']} s, {result['slots']} in flight)",
             f"P_full = {result['p_full']:.3f}, P_partial = {result['p_partial']:.3f}; questions where full dialogues "
             f"did better: {sum(c['full_right'] * c['partial_n'] > c['partial_right'] * c['full_n'] for c in result['per_question'])}"
             f" of {result['questions']}", "",
             *regime_rows(lambda G, scaling: regime_estimate(result["per_question"], G, scaling, delta, nu), Gs,
                          questions_per_step)]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--run-name", default=None, help="the run whose probes and SFT model are used (default: the preset's)")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="settings, as for the runner")
    ap.add_argument("--model", default=None, help="the policy to roll out (default: the run's SFT warm-up)")
    ap.add_argument("--questions", type=int, default=16)
    ap.add_argument("--samples", type=int, default=8, help="rollouts of each scenario per question")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slots", type=int, default=None,
                    help="dialogues in flight at once (default: all; the rest queue)")
    ap.add_argument("--G", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--out", default=None, help="write the result here (JSON)")
    args = ap.parse_args(argv)
    try:
        preset = load_preset(args.preset)
        params = for_notebook("03_exgrpo", resolve(preset, parse_overrides(args.set),
                                                   run_name=run_name_of(args.preset, preset, args.run_name)))
        settings = build(ExGRPOSettings, params)
        check_modes(settings)
    except (SettingsError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    layout = RunLayout.of(params["run_name"])
    model = args.model or str(layout.final_model("sft"))
    if not Path(model).exists():
        print(f"error: {model}: no such model (train the run's SFT warm-up first, or give --model)", file=sys.stderr)
        return 2
    probes = layout.probe_dataset(params["train_dataset"])
    try:
        result = run_pilot(model, load_probe_dataset(probes), settings, questions=args.questions,
                           samples=args.samples, seed=args.seed, slots=args.slots)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report(result, args.G, settings.questions_per_step, settings.delta, settings.nu))
    if args.out:
        atomic_write_json(Path(args.out), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
