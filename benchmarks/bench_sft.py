"""SFT training throughput and peak memory on the embedded student, side by side in one run.

    python benchmarks/bench_sft.py [--steps 12] [--questions 40] [--shapes 8x1 4x2 2x4]
        [--precisions float32 bfloat16] [--heads scored dense] [--random-batches]

Trains the SFT warm-up (LoRA, the kit's settings) on program-teacher probe data for `arith` with each
variant for ``--steps`` optimiser steps and prints real (non-padding) tokens per second, the share of
padded positions, the rate as a fraction of this CPU's training roofline (the measured peak matmul
rate over the FLOPs per real token: about 4 x parameters for a frozen base with LoRA, forward plus the
backward pass to the activations), the process's peak resident memory and the mean training loss.

A shape ``BxA`` is B rows per forward pass, A passes accumulated per optimiser step: every shape of
the same B x A trains on the same rows in the same order with the same loss (TRL divides by the
step's completion tokens), up to the order floating-point sums are taken in, so the loss column should
agree to a few digits while the activation memory falls with B. Each variant runs in its own process
so that its peak memory is its own (the peak includes the model, about 1 GB, and the probe data). The
first two optimiser steps are dropped as warm-up. Length-grouped batches (the kit's default) unless
``--random-batches``.

``--heads scored dense`` trains each variant twice: with the kit's trainer, whose loss sends only the
answer tokens through the vocabulary projection (``train.lm_head``; the default), and with TRL's CPU path,
which projects every position (prompt and padding too) and zeroes the unlabelled ones; it prints the
ratio of tokens/s and whether the two losses agree at every logged step (they should, to the last digit).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def train_variant(args: argparse.Namespace, work: Path) -> dict:
    """One variant in this process: tokens/s over the steps after the warm-up, peak RSS, loss."""
    from trl import SFTTrainer

    from exgrpo_utils.teach import inversion
    from exgrpo_utils.train import lm_head, sft
    from exgrpo_utils.train.settings import SFTSettings

    batch, accum = (int(x) for x in args.child_shape.split("x"))
    marks: list[tuple[float, int, int]] = []
    counts = {"real": 0, "padded": 0, "passes": 0}
    original = SFTTrainer.compute_loss

    def counting(self, model, inputs, *a, **k):  # count what each forward pass really computes
        if model.training:
            if counts["passes"] % accum == 0:  # the first pass of an optimiser step
                marks.append((time.perf_counter(), counts["real"], counts["padded"]))
            counts["passes"] += 1
            counts["padded"] += inputs["input_ids"].numel()
            counts["real"] += int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else inputs["input_ids"].numel()
        return original(self, model, inputs, *a, **k)

    SFTTrainer.compute_loss = counting
    if args.child_head == "dense":  # TRL's CPU path: every position through the vocabulary projection
        lm_head.scored_only = contextlib.nullcontext
    records = inversion.load_probe_dataset(work / "ei" / "probe_dataset.jsonl")
    settings = dataclasses.replace(SFTSettings(), batch_size=batch, gradient_accumulation_steps=accum,
                                   max_steps=args.steps, save_steps=10_000, max_length=512,
                                   bf16=args.child_precision == "bfloat16", group_by_length=not args.random_batches)
    out = work / f"{args.child_precision}-{args.child_shape}-{args.child_head}"
    summary = sft.train_sft(model=args.model, probe_records=records, out_dir=out, settings=settings, resume=False)
    (t0, r0, p0), (t1, r1, p1) = marks[2], marks[-1]  # from the start of step 3 to the start of the last step
    losses = [json.loads(line).get("loss") for line in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [x for x in losses if x is not None]
    return {"rate": (r1 - r0) / (t1 - t0), "padding": 1 - (r1 - r0) / max(1, p1 - p0),
            "peak_mib": summary["peak_memory_mib"], "loss": sum(losses) / len(losses), "losses": losses}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--questions", type=int, default=40)
    ap.add_argument("--shapes", nargs="+", default=["8x1", "4x2", "2x4"],
                    help="rows per pass x passes per step (the kit's default is 8x1)")
    ap.add_argument("--precisions", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    ap.add_argument("--heads", nargs="+", default=["scored"], choices=["scored", "dense"],
                    help="scored: the kit's loss (answer positions only through the vocabulary projection); "
                         "dense: TRL's CPU path (every position); several: side by side")
    ap.add_argument("--random-batches", action="store_true", help="TRL's random batches instead of length-grouped")
    ap.add_argument("--child-shape", help=argparse.SUPPRESS)
    ap.add_argument("--child-precision", help=argparse.SUPPRESS)
    ap.add_argument("--child-head", default="scored", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_shape:
        print("RESULT " + json.dumps(train_variant(args, Path(args.work))), flush=True)
        return

    import torch
    from bench_generation import machine_peaks  # this folder's generation benchmark: the same peak measurement

    from exgrpo_utils.data.datasets import load
    from exgrpo_utils.models.registry import cpu_model, load_model
    from exgrpo_utils.teach import inversion, rules, teachers

    work = Path(tempfile.mkdtemp(prefix="bench_sft_"))
    items = load("arith", "train", limit=args.questions)
    inversion.run_pipeline(items, teachers.ProgramTeacher(), rules.load_rules(), student=None, out_dir=work / "ei")
    peak, _ = machine_peaks(torch.float32)
    params = sum(p.numel() for p in load_model(args.model, dtype="float32", device="cpu")[0].parameters())
    print(f"cpu: {cpu_model()}, {torch.get_num_threads()} threads; torch {torch.__version__}")
    print(f"model {args.model}; {args.steps} optimiser steps per variant (2 warm-up steps dropped); "
          f"{'random' if args.random_batches else 'length-grouped'} batches; peak matmul {peak / 1e9:.0f} GFLOP/s (float32)")
    print(f"{'variant':<18} {'real tok/s':>10} {'padding':>8} {'roofline':>8} {'peak MiB':>9} {'mean loss':>10}")
    rows = {}
    for precision in args.precisions:
        for shape in args.shapes:
            for head in args.heads:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--model", args.model, "--steps", str(args.steps),
                       "--work", str(work), "--child-shape", shape, "--child-precision", precision, "--child-head", head
                       ] + (["--random-batches"] if args.random_batches else [])
                done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
                lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
                if done.returncode or not lines:
                    sys.exit(f"variant {precision} {shape} {head} failed:\n{done.stderr[-3000:]}")
                r = rows[(precision, shape, head)] = json.loads(lines[-1][len("RESULT "):])
                name = f"{precision} {shape}" + (f" {head}" if len(args.heads) > 1 else "")
                print(f"{name:<18} {r['rate']:>10.0f} {r['padding']:>7.0%} "
                      f"{r['rate'] * 4 * params / peak:>7.0%} {r['peak_mib']:>9.0f} {r['loss']:>10.6f}", flush=True)
    head = args.heads[0]
    for precision in args.precisions:
        first = rows[(precision, args.shapes[0], head)]
        for shape in args.shapes[1:]:
            r = rows[(precision, shape, head)]
            print(f"{precision} {shape} against {args.shapes[0]}: tokens/s x{r['rate'] / first['rate']:.2f}, "
                  f"peak memory x{r['peak_mib'] / first['peak_mib']:.2f}")
        for shape in args.shapes:
            for other in args.heads[1:]:
                a, b = rows[(precision, shape, head)], rows[(precision, shape, other)]
                same = "identical" if a["losses"] == b["losses"] else "DIFFERENT"
                print(f"{precision} {shape}: {head} / {other} tokens/s x{a['rate'] / b['rate']:.2f}, peak memory "
                      f"x{a['peak_mib'] / b['peak_mib']:.2f}; losses at all {len(a['losses'])} logged steps {same}")
    print(f"(work dir {work})")


if __name__ == "__main__":
    main()
