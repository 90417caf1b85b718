"""Cost of one ExGRPO step against one plain GRPO step on the embedded student (CPU or GPU).

    python benchmarks/bench_rl_step.py [--steps 3] [--G 8] [--k 2] [--tokens 64]

Both runs use the same student, the same questions and the same per-turn token budget (--tokens):
ExGRPO generates k probe answers and a final answer per rollout (k + 1 turns), plain GRPO one
answer per sample. The script prints seconds per step, policy tokens generated per step and
seconds per 1,000 generated tokens, so the two can be compared at equal generated tokens.
Probe data come from the program teacher on `arith` (nothing is downloaded).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from exgrpo_utils.common.files import read_train_log
from exgrpo_utils.common.layout import TRAIN_LOG
from exgrpo_utils.data.datasets import load
from exgrpo_utils.teach import inversion, rules, teachers
from exgrpo_utils.train import exgrpo
from exgrpo_utils.train.settings import ExGRPOSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64, help="token budget per generated turn")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_rl_"))
    items = load("arith", "train", limit=max(4, args.steps))
    inversion.run_pipeline(items, teachers.ProgramTeacher(), rules.load_rules(), student=None, out_dir=work / "ei")
    records = inversion.load_probe_dataset(work / "ei" / "probe_dataset.jsonl")
    print(f"{'mode':>7} {'s/step':>8} {'gen tok/step':>13} {'s/1k gen tok':>13} {'peak MiB':>9}")
    for mode in ("exgrpo", "grpo"):
        settings = ExGRPOSettings(mode=mode, k=args.k, G=args.G, max_probe_tokens=args.tokens,
                                         max_final_tokens=args.tokens, max_steps=args.steps, save_steps=10_000)
        summary = exgrpo.train_exgrpo(init_model=args.model, probe_records=records, out_dir=work / mode,
                                      settings=settings, resume=False)
        log = read_train_log(work / mode / TRAIN_LOG)
        log = log[log["loss"].notna()].iloc[1:] if len(log[log["loss"].notna()]) > 1 else log[log["loss"].notna()]
        seconds = log["step_time"].mean()
        tokens = (log["completions/mean_length"] * args.G).mean()  # policy tokens per step
        print(f"{mode:>7} {seconds:>8.1f} {tokens:>13.0f} {1000 * seconds / tokens:>13.1f} "
              f"{summary['peak_memory_mib']:>9.0f}")
    print(f"(first step dropped as warm-up; peak memory is the process peak so far; work dir {work})")


if __name__ == "__main__":
    main()
