"""Estimate the paper-scale cost: teacher tokens for EI and the baselines' data, and GPU hours.

    python benchmarks/estimate_paper_cost.py [--sample 200] [--kept-probes 8] [--mfu 0.35]

Prompt tokens are counted exactly on the rendered prompts of this kit (the rules file, the answer
format instructions) for a seeded sample of each held-in training set, with the embedded student's
tokenizer standing in for the teacher's and the 7B students' (same order of size; state this when
quoting). Output lengths are the datasets' own reference rationales where they have them (GSM8K,
MATH, TabMWP: worked solutions) and --default-cot tokens otherwise. GPU hours come from 6·N FLOPs
per trained token (4·N for LoRA: no weight gradients of the frozen base), the given MFU on the
given peak, and a vLLM generation rate for rollouts and evaluation; every assumption is a flag and
is printed beside the numbers. The CPU runs' logged token counts (results/runs/cpu) are printed
for reference. Nothing here is a measurement of a GPU run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exgrpo_utils.data import datasets as data  # noqa: E402
from exgrpo_utils.data import prompts  # noqa: E402
from exgrpo_utils.infra.layout import RunLayout  # noqa: E402
from exgrpo_utils.models.registry import ensure_local  # noqa: E402
from exgrpo_utils.teach.rules import load_rules  # noqa: E402

WORKED_SOLUTIONS = ("gsm8k", "math", "tabmwp")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", type=int, default=200, help="items per dataset to measure")
    ap.add_argument("--default-cot", type=int, default=200, help="teacher CoT tokens where a dataset has no rationale")
    ap.add_argument("--kept-probes", type=float, default=8.0, help="probes kept per question after Eq. 1 (of 10)")
    ap.add_argument("--kept-questions", type=float, default=0.7, help="share of questions kept by Eq. 2 and the teacher check")
    ap.add_argument("--epochs", type=float, default=3.0, help="SFT epochs (paper: 3)")
    ap.add_argument("--params", type=float, default=7.6e9, help="student parameters (Qwen2.5-7B: 7.6e9)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak per GPU (H100 SXM: 989)")
    ap.add_argument("--mfu", type=float, default=0.35, help="model FLOPs utilisation in training")
    ap.add_argument("--gen-tok-s", type=float, default=2500.0, help="vLLM generated tokens/s per GPU for a 7B model")
    ap.add_argument("--rl-questions", type=int, default=1000, help="ExGRPO: questions seen per task (steps x questions/step)")
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--k", type=int, default=5)
    args = ap.parse_args()

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ensure_local("smollm2-135m-instruct"))
    n_tok = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])
    rules = load_rules()
    chat_overhead = 30  # role markers and a short system prompt per request

    rows = []
    for name in data.HELD_IN:
        spec = data.DATASETS[name]
        split = "train" if "train" in spec.splits else "dev"
        n_items = spec.rows[split]
        items = data.load(name, split, limit=args.sample, sample_seed=0)
        q = statistics.mean(n_tok(prompts.messages_for(ex)[-1]["content"]) for ex in items)
        with_rationale = [n_tok(ex.rationale) for ex in items if ex.rationale]
        # worked solutions stand in for a teacher CoT; short label explanations (ANLI, StrategyQA facts) do not
        cot = statistics.mean(with_rationale) + 10 if name in WORKED_SOLUTIONS and with_rationale else args.default_cot
        probe_prompt = statistics.mean(n_tok(rules.probe_prompt(r, question=ex.question, answer=ex.answer, reasoning="x " * int(cot)))
                                       for ex in items[:20] for r in rules.rules)
        probe = 1.2 * q
        answer_prompt = probe + n_tok(rules.templates["answer_instruction"])
        # EI per item: CoT, 10 probe writes, 10 probe answers, 10 Eq. 1 rechecks
        ei_in = (q + 10 * probe_prompt + 10 * answer_prompt + 10 * (answer_prompt + cot + q) + 31 * chat_overhead)
        ei_out = cot + 10 * probe + 10 * cot + 10 * cot
        # baselines' data per item (10 calls): rephrase, new question, backward question, decomposition
        # (about 60 instruction tokens each; a decomposition writes about 60 tokens); CoTs for the rephrased
        # question, the new question (greedy and sampled), the backward question, a second CoT of Q, and the
        # decomposition's solution (the question plus its sub-questions)
        bl_in = 4 * (q + 60) + 5 * q + (q + 60 + 40) + 10 * chat_overhead
        bl_out = 3 * q + 60 + 6 * cot
        kept = n_items * args.kept_questions
        sft_tokens = kept * args.epochs * (args.kept_probes * (answer_prompt + cot) + q + cot)
        rl_gen = args.rl_questions * args.G * (args.k + 1) * cot  # policy tokens: k probe answers + final answer
        rl_ctx = args.rl_questions * args.G * (args.k + 1) * (answer_prompt + cot)  # scored again in training
        rows.append(dict(dataset=name, items=n_items, q=q, cot=cot, ei_in=ei_in * n_items, ei_out=ei_out * n_items,
                         bl_in=bl_in * n_items, bl_out=bl_out * n_items, sft_tokens=sft_tokens, rl_gen=rl_gen, rl_ctx=rl_ctx))

    lora_flops = 4 * args.params
    eff = args.peak_tflops * 1e12 * args.mfu
    print("assumptions:", json.dumps({k: v for k, v in vars(args).items() if k != "sample"}))
    print(f"{'dataset':<20}{'items':>7}{'q tok':>7}{'CoT tok':>8}{'EI in (M)':>11}{'EI out (M)':>11}"
          f"{'BL in (M)':>10}{'BL out (M)':>11}{'SFT GPU-h':>10}{'RL GPU-h':>9}")
    tot = dict(ei_in=0, ei_out=0, bl_in=0, bl_out=0, sft_h=0, rl_h=0)
    for r in rows:
        sft_h = r["sft_tokens"] * lora_flops / eff / 3600
        # ExGRPO: generation (vLLM) + policy, old-policy and reference passes over the dialogue tokens
        rl_h = (r["rl_gen"] / args.gen_tok_s + r["rl_ctx"] * (lora_flops + 2 * 2 * args.params) / eff) / 3600
        for k, v in (("ei_in", r["ei_in"]), ("ei_out", r["ei_out"]), ("bl_in", r["bl_in"]), ("bl_out", r["bl_out"]),
                     ("sft_h", sft_h), ("rl_h", rl_h)):
            tot[k] += v
        print(f"{r['dataset']:<20}{r['items']:>7}{r['q']:>7.0f}{r['cot']:>8.0f}{r['ei_in'] / 1e6:>11.1f}{r['ei_out'] / 1e6:>11.1f}"
              f"{r['bl_in'] / 1e6:>10.1f}{r['bl_out'] / 1e6:>11.1f}{sft_h:>10.1f}{rl_h:>9.1f}")
    print(f"{'total':<20}{'':>7}{'':>7}{'':>8}{tot['ei_in'] / 1e6:>11.1f}{tot['ei_out'] / 1e6:>11.1f}"
          f"{tot['bl_in'] / 1e6:>10.1f}{tot['bl_out'] / 1e6:>11.1f}{tot['sft_h']:>10.1f}{tot['rl_h']:>9.1f}")
    eval_items = sum(data.DATASETS[n].rows["test"] for n in data.PAPER_DATASETS)
    eval_h = eval_items * 400 / args.gen_tok_s / 3600
    print(f"evaluation of one model on the 12 full test sets ({eval_items} items, ~400 new tokens each): {eval_h:.1f} GPU-h")
    print(f"per student: SFT {tot['sft_h']:.0f} + ExGRPO {tot['rl_h']:.0f} GPU-h for the 8 task models, plus evaluations")

    layout = RunLayout.of("cpu")
    for name in ("sft", "exgrpo"):
        path = layout.train_log(name)
        if path.exists():
            recs = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
            steps = [r for r in recs if "loss" in r]
            print(f"CPU run {name}: {len(steps)} steps, {max(r.get('num_tokens', 0) for r in recs):.0f} tokens logged "
                  f"(prompt + completion), {max(r.get('wall_time_s', 0) for r in recs):.0f} s wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
