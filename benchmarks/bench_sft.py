"""SFT training throughput on the embedded student, side by side in one run: batching and precision variants.

    python benchmarks/bench_sft.py [--steps 12] [--batch 8] [--questions 40]

Trains the SFT warm-up (LoRA, the kit's settings) on program-teacher probe data for `arith` with each
variant for ``--steps`` steps and prints real (non-padding) tokens per second, the share of padded
positions, and the rate as a fraction of this CPU's training roofline: the measured peak matmul rate
over the FLOPs per real token (about 4 x parameters for a frozen base with LoRA: forward, plus the
backward pass to the activations). Variants: random batches (TRL's default) and length-grouped
batches (``sft_group_by_length``), each in float32 and in bf16 weights. The first two steps are
dropped as warm-up.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from bench_generation import machine_peaks  # this folder's generation benchmark: the same peak measurement

from exgrpo_utils.data.datasets import load
from exgrpo_utils.models.registry import cpu_model
from exgrpo_utils.teach import inversion, rules, teachers
from exgrpo_utils.train import sft
from exgrpo_utils.train.settings import SFTSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--questions", type=int, default=40)
    ap.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    args = ap.parse_args()

    import torch
    from trl import SFTTrainer

    counts = {"real": 0, "padded": 0, "t": []}
    original = SFTTrainer.compute_loss

    def counting(self, model, inputs, *a, **k):  # count what each step really computes
        if model.training:
            counts["padded"] += inputs["input_ids"].numel()
            counts["real"] += int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else inputs["input_ids"].numel()
            counts["t"].append((time.perf_counter(), counts["real"], counts["padded"]))
        return original(self, model, inputs, *a, **k)

    SFTTrainer.compute_loss = counting
    peak, _ = machine_peaks(torch.float32)

    work = Path(tempfile.mkdtemp(prefix="bench_sft_"))
    items = load("arith", "train", limit=args.questions)
    inversion.run_pipeline(items, teachers.ProgramTeacher(), rules.load_rules(), student=None, out_dir=work / "ei")
    records = inversion.load_probe_dataset(work / "ei" / "probe_dataset.jsonl")
    params = None
    print(f"cpu: {cpu_model()}, {torch.get_num_threads()} threads; torch {torch.__version__}")
    print(f"model {args.model}; batch {args.batch}; {args.steps} steps per variant (2 warm-up steps dropped); "
          f"peak matmul {peak / 1e9:.0f} GFLOP/s (float32)")
    print(f"{'variant':<28} {'real tok/s':>10} {'padding':>8} {'roofline':>8}")
    for precision in args.precisions:
        for grouped in (False, True):
            counts.update(real=0, padded=0, t=[])
            settings = dataclasses.replace(SFTSettings(), batch_size=args.batch, max_steps=args.steps, save_steps=10_000,
                                           max_length=512, bf16=precision == "bfloat16", group_by_length=grouped)
            name = f"{precision} {'length-grouped' if grouped else 'random batches'}"
            sft.train_sft(model=args.model, probe_records=records, out_dir=work / name.replace(" ", "-"),
                          settings=settings, resume=False)
            marks = counts["t"]
            (t0, r0, p0), (t1, r1, p1) = marks[1], marks[-1]
            rate = (r1 - r0) / (t1 - t0)  # tokens between the start of step 2 and the start of the last step
            if params is None:
                from exgrpo_utils.models.registry import load_model
                params = sum(p.numel() for p in load_model(args.model, dtype="float32", device="cpu")[0].parameters())
            print(f"{name:<28} {rate:>10.0f} {1 - (r1 - r0) / max(1, p1 - p0):>7.0%} {rate * 4 * params / peak:>7.0%}")
    print(f"(work dir {work})")


if __name__ == "__main__":
    main()
