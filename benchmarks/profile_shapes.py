"""Where the time goes on this CPU: its measured matmul peak beside the throughput of the matrix
shapes the engine and the trainers run, at the row counts they run them with.

    python benchmarks/profile_shapes.py [--model smollm2-135m-instruct] [--rows 1 4 16 64 256] [--dtype float32]

It prints the CPU model and thread count, the GFLOP/s of a 2048^3 matmul (this CPU's practical
peak), and for each of the student's projections (attention q/k/v/o, the MLP's up/gate and down,
the vocabulary projection) the GFLOP/s of ``[rows x in] @ [in x out]`` and its share of that peak.
Rows are what is in flight: one RL question with G = 4 rollouts decodes 4 rows, the Eq. 2 student
pass and the evaluations up to the engine's slots (64), SFT's forward ``batch x length`` rows. A
shape far below the peak at the rows a stage uses is where that stage loses time: more rows in
flight (several questions per RL step), or no vocabulary projection where no log-probability is
needed. The model's sizes come from its config (the converted embedded student by default); no
weights are loaded.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from exgrpo_utils.models.registry import cpu_model, ensure_local

SMOLLM2_135M = {"hidden_size": 576, "intermediate_size": 1536, "vocab_size": 49152, "num_attention_heads": 9,
                "num_key_value_heads": 3}


def model_sizes(model: str) -> dict:
    """hidden, intermediate, vocabulary and key/value sizes from the model's config.json."""
    try:
        cfg = json.loads((Path(ensure_local(model)) / "config.json").read_text())
    except (OSError, ValueError) as exc:  # a hub id without a local copy: the embedded student's sizes
        print(f"({model}: no local config ({exc}); using SmolLM2-135M's sizes)")
        cfg = SMOLLM2_135M
    head = cfg["hidden_size"] // cfg["num_attention_heads"]
    return {"hidden": cfg["hidden_size"], "intermediate": cfg["intermediate_size"], "vocab": cfg["vocab_size"],
            "kv": head * cfg.get("num_key_value_heads", cfg["num_attention_heads"])}


def gflops(m: int, k: int, n: int, dtype, seconds: float = 0.4) -> float:
    """Best-of rate of ``[m x k] @ [k x n]`` over about ``seconds`` of repeats, in GFLOP/s."""
    import torch

    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b  # warm-up
    best, spent = float("inf"), 0.0
    while spent < seconds:
        t = time.perf_counter()
        a @ b
        dt = time.perf_counter() - t
        best, spent = min(best, dt), spent + dt
    return 2 * m * k * n / best / 1e9


def main(argv=None) -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--seconds", type=float, default=0.4, help="time spent on each shape")
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    s = model_sizes(args.model)
    peak = gflops(2048, 2048, 2048, dtype, args.seconds)
    print(f"CPU: {cpu_model()}; {torch.get_num_threads()} torch threads of {os.cpu_count()} CPUs; {args.dtype}")
    print(f"peak: 2048^3 matmul {peak:.0f} GFLOP/s")
    shapes = {"attention q, o": (s["hidden"], s["hidden"]), "attention k, v": (s["hidden"], s["kv"]),
              "MLP up, gate": (s["hidden"], s["intermediate"]), "MLP down": (s["intermediate"], s["hidden"]),
              "vocabulary projection": (s["hidden"], s["vocab"])}
    header = "".join(f"{r:>14}" for r in args.rows)
    print(f"\n{'shape (rows x in x out)':<44}{header}   (GFLOP/s, share of peak)")
    for name, (k, n) in shapes.items():
        cells = []
        for r in args.rows:
            g = gflops(r, k, n, dtype, args.seconds)
            cells.append(f"{g:7.0f} {100 * g / peak:4.0f}%")
        print(f"{name + f' (r x {k} x {n})':<44}" + "".join(f"{c:>14}" for c in cells))
    print("\nrows in flight: an RL step of one question with G = 4 decodes 4; the Eq. 2 pass and the evaluations "
          "up to the engine's slots (64); SFT's forward batch x length (8 x 512 = 4096).")


if __name__ == "__main__":
    main()
