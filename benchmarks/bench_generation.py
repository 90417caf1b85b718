"""Generation throughput of the embedded student: generated tokens per second and peak memory.

    python benchmarks/bench_generation.py [--model smollm2-135m-instruct] [--batch-sizes 1 8 32]
        [--new-tokens 128] [--dtype auto]

Every sequence is forced to generate exactly --new-tokens tokens (EOS ignored), so the numbers
compare across batch sizes. Peak memory is the process's peak resident set size (CPU) or the CUDA
allocator's peak (GPU).
"""
from __future__ import annotations

import argparse
import resource
import time

from exgrpo_utils.models.registry import default_device, load_model, pick_dtype


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16")
    args = ap.parse_args()

    import torch

    device = default_device()
    model, tok = load_model(args.model, dtype=args.dtype, device=device)
    print(f"model={args.model} device={device} dtype={pick_dtype(args.dtype, device)} threads={torch.get_num_threads()}")
    question = "Mia has 12 apples. Then she gets 5 more apples. How many apples does Mia have now?"
    prompt = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    print(f"{'batch':>5} {'new_tok':>8} {'seconds':>8} {'tok/s':>8} {'peak_MiB':>9}")
    for bs in args.batch_sizes:
        enc = tok([prompt] * bs, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                   temperature=None, top_p=None, top_k=None, pad_token_id=tok.pad_token_id)
        with torch.inference_mode():
            model.generate(**enc, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)  # warm-up
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats(); torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model.generate(**enc, **gen)
            if device == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
        n = (out.shape[1] - enc["input_ids"].shape[1]) * bs
        peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        print(f"{bs:>5} {n:>8} {dt:>8.2f} {n / dt:>8.1f} {peak:>9.0f}")


if __name__ == "__main__":
    main()
