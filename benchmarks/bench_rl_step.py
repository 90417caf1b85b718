"""Cost of ExGRPO steps against plain GRPO steps on the embedded student, side by side in one run.

    python benchmarks/bench_rl_step.py [--steps 3] [--G 4] [--k 2] [--probe-tokens 64] [--final-tokens 128]
        [--questions 1] [--backends fast generate]

Defaults are the CPU preset's sizes (configs/cpu.yaml: k = 2, G = 4, 64-token probe answers, 128-token
final answers, one question per step). For each rollout backend (``fast``: the kit's engine, every
dialogue of a step in flight with its KV cache kept across turns; ``generate``: transformers
``generate``, one turn of every dialogue at a time, re-encoding the dialogue) it trains ExGRPO and
plain GRPO for ``--steps`` steps on the same questions and prints seconds per step, policy tokens
generated per step (the student's own tokens: probe answers and final answers) and seconds per 1,000
generated tokens, then the ExGRPO / GRPO ratio per generated token. The first step is dropped as
warm-up. Probe data come from the program teacher on `arith` (nothing is downloaded).

``--questions 1 4`` runs each mode at each count of questions per step (the engine then has
G x questions dialogues in flight; the update runs one micro-batch per question and the reference pass
one chunk per question) and
prints seconds per question-visit (one question through its G rollouts, reward and update) beside the
ratio to the first count: the cost per question that ``rl_questions_per_step`` buys down.

``--updates kit dense`` runs each configuration with the kit's update and with the same update projecting
every position of a pass through the vocabulary, as TRL's fused head does on the CPU (``dense``: the
prompt, the dialogue's context turns and the padding too, zeroed afterwards; the kit's scores only the
positions the loss reads, ``train.lm_head``), and prints the ratio of their update seconds and whether
their losses and gradient norms agree at every step (they should, to the last digit).

``--updates kit trl`` runs each configuration twice: with the kit's update (one micro-batch per
question, its rows in order, and the reference pass per question at its own width:
``ExGRPOTrainer._prepare_inputs`` and ``_get_per_token_logps_and_entropies``) and with TRL's own
(the step's rows shuffled before they are split into micro-batches, the reference pass over the
step padded to its longest row; micro-batches are still trimmed, as before the change), one after the
other for each configuration, and prints the ratio of the update's seconds per question-visit
(reference pass, policy forward, aux SFT, backward and the rest; sampling left out: TRL's shuffle
draws from the random generator the rollouts are seeded from, so the two variants sample different
completions after the first step) and of the whole step per generated token.

Every run also prints where its timed steps went, per question-visit: sampling (the rollout), the
reference pass (TRL's log-probabilities under the SFT model, run with the rollout), the policy's
forward pass, Eq. 8's aux SFT loss, and the rest of the step (backward passes, optimiser, TRL's
bookkeeping), with the mean padded width of the policy's micro-batches.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import tempfile
import time
from pathlib import Path

from trl import GRPOTrainer

from exgrpo_utils.data.datasets import load
from exgrpo_utils.infra.files import read_train_log
from exgrpo_utils.infra.layout import TRAIN_LOG
from exgrpo_utils.teach import inversion, rules, teachers
from exgrpo_utils.train import exgrpo, exgrpo_trainer
from exgrpo_utils.train.settings import ExGRPOSettings

PHASES = ("rollout", "reference", "policy forward", "aux SFT", "backward + rest")


class PhaseClock:
    """Seconds by phase of the trainer's calls, from wrappers around its methods (the bench only)."""

    def __init__(self):
        self.seconds, self.widths = {}, []
        T = exgrpo_trainer.ExGRPOTrainer
        T.run_rollout = self.wrap("rollout", T.run_rollout)
        T._generate_and_score_completions = self.wrap("generate and score", T._generate_and_score_completions)
        T._get_per_token_logps_and_entropies = self.wrap("logps", T._get_per_token_logps_and_entropies)
        self.kit_update = (T._prepare_inputs, T._get_per_token_logps_and_entropies)
        self.scored_only = exgrpo_trainer.scored_only
        self.trl_update = (GRPOTrainer._prepare_inputs, self.wrap("logps", GRPOTrainer._get_per_token_logps_and_entropies))
        T.training_step = self.wrap("step", T.training_step)
        exgrpo_trainer.aux_sft_loss = self.wrap("aux SFT", exgrpo_trainer.aux_sft_loss)

    def wrap(self, name, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                key = name
                if name == "logps":  # entropies: the policy's pass; without: the reference pass, inside generate and score
                    key = "policy forward" if kwargs.get("compute_entropy") else "reference logps"
                    if key == "policy forward":
                        self.widths.append(args[2].size(1))  # (self, model, input_ids, ...)
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t
        return timed

    def reset(self, update: str = "kit"):
        self.seconds, self.widths = {}, []
        T = exgrpo_trainer.ExGRPOTrainer
        T._prepare_inputs, T._get_per_token_logps_and_entropies = self.trl_update if update == "trl" else self.kit_update
        # dense: every position through the vocabulary projection (TRL's CPU path); the others: scored positions only
        exgrpo_trainer.scored_only = contextlib.nullcontext if update == "dense" else self.scored_only

    def phases(self) -> dict:
        s = self.seconds
        rollout = s.get("rollout", 0.0)
        parts = {"rollout": rollout, "reference": s.get("generate and score", 0.0) - rollout,
                 "policy forward": s.get("policy forward", 0.0), "aux SFT": s.get("aux SFT", 0.0)}
        parts["backward + rest"] = s.get("step", 0.0) - s.get("generate and score", 0.0) - parts["policy forward"] - parts["aux SFT"]
        return parts


def plan(backends, modes, questions, updates) -> list[tuple[str, str, str, int]]:
    """The runs, as (update, backend, mode, questions per step), the update innermost: the kit's and
    TRL's update of one configuration run one after the other.

    >>> plan(["fast"], ["exgrpo"], [1, 4], ["kit", "trl"])
    [('kit', 'fast', 'exgrpo', 1), ('trl', 'fast', 'exgrpo', 1), ('kit', 'fast', 'exgrpo', 4), ('trl', 'fast', 'exgrpo', 4)]
    """
    return [(u, b, m, q) for b, m, q, u in itertools.product(backends, modes, questions, updates)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=3, help="steps per run after the warm-up step")
    ap.add_argument("--G", type=int, default=4)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--probe-tokens", type=int, default=64)
    ap.add_argument("--final-tokens", type=int, default=128)
    ap.add_argument("--questions", type=int, nargs="+", default=[1], help="questions per step (several: side by side)")
    ap.add_argument("--modes", nargs="+", default=["exgrpo", "grpo"], choices=["exgrpo", "grpo"])
    ap.add_argument("--backends", nargs="+", default=["fast", "generate"], choices=["fast", "generate"])
    ap.add_argument("--updates", nargs="+", default=["kit"], choices=["kit", "dense", "trl"],
                    help="the kit's per-question update; dense: the same, every position through the vocabulary "
                         "projection; trl: TRL's shuffled one (several: side by side)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_rl_"))
    items = load("arith", "train", limit=max(8, (args.steps + 1) * max(args.questions)))
    inversion.run_pipeline(items, teachers.ProgramTeacher(), rules.load_rules(), student=None, out_dir=work / "ei")
    records = inversion.load_probe_dataset(work / "ei" / "probe_dataset.jsonl")
    import torch

    from exgrpo_utils.models.registry import cpu_model

    print(f"cpu: {cpu_model()}, {torch.get_num_threads()} threads; torch {torch.__version__}")
    print(f"model {args.model}; k={args.k} G={args.G} probe/final budgets {args.probe_tokens}/{args.final_tokens} "
          f"tokens, {args.steps} timed steps after one warm-up step")
    print(f"{'update':>6} {'backend':>8} {'mode':>7} {'q/step':>6} {'s/step':>8} {'s/q-visit':>10} {'gen tok/step':>13} "
          f"{'s/1k gen tok':>13} {'rollout s/q':>11} {'peak MiB':>9}")
    per_token, per_visit, update_seconds, phase_rows, losses = {}, {}, {}, [], {}
    clock = PhaseClock()
    for update, backend, mode, questions in plan(args.backends, args.modes, args.questions, args.updates):
        settings = ExGRPOSettings(mode=mode, k=args.k, G=args.G, max_probe_tokens=args.probe_tokens,
                                  max_final_tokens=args.final_tokens, questions_per_step=questions,
                                  max_steps=args.steps + 1, save_steps=10_000, rollout_backend=backend,
                                  learning_rate=5e-5)
        out = work / f"{update}-{backend}-{mode}-{questions}q"
        clock.reset(update)
        summary = exgrpo.train_exgrpo(init_model=args.model, probe_records=records, out_dir=out,
                                      settings=settings, resume=False, report_to=())
        steps = read_train_log(out / TRAIN_LOG)
        steps = steps[steps["loss"].notna()]
        log = steps.iloc[1:]  # the warm-up step dropped
        seconds = log["step_time"].mean()
        tokens = log["tokens/generated"].mean()  # the policy's own sampled tokens per step
        rollout = log["timing/rollout_s"].mean() / questions if "timing/rollout_s" in log else float("nan")
        key = (update, backend, mode, questions)
        per_token[key], per_visit[key] = seconds / tokens, seconds / questions
        losses[key] = list(zip(steps["loss"], steps["grad_norm"]))  # every step, warm-up included
        print(f"{update:>6} {backend:>8} {mode:>7} {questions:>6} {seconds:>8.1f} {seconds / questions:>10.1f} {tokens:>13.0f} "
              f"{1000 * seconds / tokens:>13.1f} {rollout:>11.1f} {summary['peak_memory_mib']:>9.0f}")
        visits = questions * (args.steps + 1)  # the phase clock ran over every step, warm-up included
        width = sum(clock.widths) / max(len(clock.widths), 1)
        parts = {k: v / visits for k, v in clock.phases().items()}
        update_seconds[key] = sum(v for k, v in parts.items() if k != "rollout")
        phase_rows.append((update, backend, mode, questions, parts, width))
    print("\nseconds per question-visit by phase (every step, warm-up included):")
    print(f"{'update':>6} {'backend':>8} {'mode':>7} {'q/step':>6} " + " ".join(f"{p:>15}" for p in PHASES) + f" {'policy width':>12}")
    for update, backend, mode, questions, parts, width in phase_rows:
        print(f"{update:>6} {backend:>8} {mode:>7} {questions:>6} " + " ".join(f"{parts[p]:>15.1f}" for p in PHASES) + f" {width:>12.0f}")
    first, u0 = args.questions[0], args.updates[0]
    for backend in args.backends:
        for mode in args.modes:
            for questions in args.questions[1:]:
                print(f"{backend} {mode}: seconds per question-visit at {questions} questions/step against {first}: "
                      f"x{per_visit[(u0, backend, mode, questions)] / per_visit[(u0, backend, mode, first)]:.2f}")
            for other in [u for u in args.updates if u != "kit"] if "kit" in args.updates else ():
                for questions in args.questions:
                    kit, ref = (update_seconds[(u, backend, mode, questions)] for u in ("kit", other))
                    same = losses[("kit", backend, mode, questions)] == losses[(other, backend, mode, questions)]
                    print(f"{backend} {mode}, {questions} q/step: kit / {other} update seconds per question-visit = "
                          f"{kit:.1f} / {ref:.1f} = x{kit / ref:.2f}; whole step per generated token x"
                          f"{per_token[('kit', backend, mode, questions)] / per_token[(other, backend, mode, questions)]:.2f}; "
                          f"loss and grad norm at every step {'identical' if same else 'DIFFERENT'}: "
                          + ", ".join(f"{a:.6g}/{b:.6g}" for a, b in losses[(other, backend, mode, questions)]))
        if len(args.modes) == 2:
            for questions in args.questions:
                print(f"{backend}, {questions} q/step: ExGRPO / GRPO seconds per generated token = "
                      f"{per_token[(u0, backend, 'exgrpo', questions)] / per_token[(u0, backend, 'grpo', questions)]:.2f}")
    if len(args.backends) == 2:
        for mode in args.modes:
            print(f"{mode}: generate / fast seconds per generated token = "
                  f"{per_token[(u0, 'generate', mode, first)] / per_token[(u0, 'fast', mode, first)]:.2f}")
    print(f"(peak memory is the process peak so far; work dir {work})")


if __name__ == "__main__":
    main()
