"""Generation throughput, side by side in one run: the kit's engine against plain transformers ``generate``.

    python benchmarks/bench_generation.py [--items 64] [--new-tokens 256] [--batch 32] [--slots 64]
        [--dtype float32] [--dataset gsm8k]

The workload is the issue's: the first ``--items`` test items of GSM8K with the kit's prompt, greedy,
at most ``--new-tokens`` new tokens, the same weights and dtype for both. The reference is plain
``model.generate`` on left-padded batches of ``--batch`` (what lm-eval's hf backend runs, and the kit's
``backend=transformers``); the kit's engine (``backend=fast``, ``models.engine``) keeps ``--slots``
sequences in flight. It prints generated tokens per second of each, their ratio, how many
completions agree token for token, and both as a fraction of this CPU's roofline for the same
tokens: the time the measured peak matmul rate and memory bandwidth allow with every item in flight
(weights read once per decode step, each live row's keys and values once per step).
"""
from __future__ import annotations

import argparse
import time

from exgrpo_utils.data import prompts
from exgrpo_utils.data.datasets import load
from exgrpo_utils.models.engine import SlotEngine, single_turn
from exgrpo_utils.models.registry import cpu_model as cpu_name
from exgrpo_utils.models.registry import load_model


def machine_peaks(dtype) -> tuple[float, float]:
    """(matmul FLOP/s, memory bytes/s) measured here: a 2048^3 matmul and a 256 MiB copy."""
    import torch

    a = torch.randn(2048, 2048, dtype=dtype)
    a @ a
    t = time.perf_counter()
    for _ in range(8):
        a @ a
    flops = 8 * 2 * 2048 ** 3 / (time.perf_counter() - t)
    x = torch.empty(64 * 2 ** 20, dtype=torch.float32).fill_(1.0)
    y = x.clone()
    t = time.perf_counter()
    for _ in range(4):
        y.copy_(x)
    bandwidth = 4 * 2 * x.numel() * 4 / (time.perf_counter() - t)  # read + write
    return flops, bandwidth


def roofline_seconds(model, prompt_lens, gen_lens, batch: int, flops_peak: float, bw_peak: float) -> float:
    """The least time this CPU needs for these prompts and completions at ``batch`` rows in flight:
    prefill is compute-bound; each decode step costs max(FLOPs / peak, bytes / bandwidth), with the
    weights read once per step and every live row's keys and values read once."""
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    elem = next(model.parameters()).element_size()
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_bytes = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * elem  # per token of context
    attn_flops = 4 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim  # per query per context token
    seconds = sum(2 * params * n + attn_flops * n * n / 2 for n in prompt_lens) / flops_peak
    order = list(range(len(prompt_lens)))
    for start in range(0, len(order), batch):
        group = order[start:start + batch]
        for t in range(max(gen_lens[i] for i in group)):
            live = [i for i in group if t < gen_lens[i]]
            ctx = sum(prompt_lens[i] + t for i in live)
            flops = len(live) * 2 * params + attn_flops * ctx
            bytes_ = params * elem + kv_bytes * ctx
            seconds += max(flops / flops_peak, bytes_ / bw_peak)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dataset", default="gsm8k")
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32, help="plain generate's batch size")
    ap.add_argument("--slots", type=int, default=64, help="the engine's sequences in flight")
    ap.add_argument("--dtype", default="float32", help="float32 | bfloat16 (both paths use it)")
    args = ap.parse_args()

    import torch

    model, tok = load_model(args.model, dtype=args.dtype, device="cpu")
    items = load(args.dataset, "test")[: args.items]
    texts = [tok.apply_chat_template(prompts.messages_for(ex), tokenize=False, add_generation_prompt=True)
             for ex in items]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    eos = tok.eos_token_id
    flops_peak, bw_peak = machine_peaks(model.dtype)
    print(f"cpu: {cpu_name()}, {torch.get_num_threads()} threads; torch {torch.__version__}; model {args.model} "
          f"{model.dtype}; peak matmul {flops_peak / 1e9:.0f} GFLOP/s, copy bandwidth {bw_peak / 1e9:.1f} GB/s")
    print(f"workload: {len(ids)} {args.dataset} test items, prompts {min(map(len, ids))}-{max(map(len, ids))} "
          f"tokens, greedy, <= {args.new_tokens} new tokens")

    def plain() -> list[list[int]]:
        out = []
        for s in range(0, len(texts), args.batch):
            enc = tok(texts[s:s + args.batch], return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.inference_mode():
                gen = model.generate(**enc, max_new_tokens=args.new_tokens, do_sample=False, temperature=None,
                                     top_p=None, top_k=None, pad_token_id=tok.pad_token_id, eos_token_id=eos)
            for row in gen[:, enc["input_ids"].shape[1]:].tolist():
                out.append(row[: row.index(eos) + 1] if eos in row else row)
        return out

    def engine() -> list[list[int]]:
        eng = SlotEngine(model, stop_ids=[eos], pad_id=tok.pad_token_id, slots=args.slots)
        return eng.run([single_turn(i, args.new_tokens) for i in ids])

    with torch.inference_mode():  # warm-up: one short generation each
        model.generate(**tok(texts[:2], return_tensors="pt", padding=True, add_special_tokens=False), max_new_tokens=4,
                       do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=tok.pad_token_id)
    SlotEngine(model, stop_ids=[eos], pad_id=tok.pad_token_id, slots=2).run([single_turn(i, 4) for i in ids[:2]])

    rows = {}
    outputs = {}
    for name, fn, batch in (("transformers generate", plain, args.batch), ("kit engine", engine, args.slots)):
        t = time.perf_counter()
        outputs[name] = out = fn()
        seconds = time.perf_counter() - t
        n = sum(map(len, out))
        ideal = roofline_seconds(model, list(map(len, ids)), list(map(len, out)), len(ids), flops_peak, bw_peak)
        rows[name] = (n, seconds, n / seconds, ideal / seconds, batch)
    print(f"{'path':<22} {'batch':>5} {'tokens':>7} {'seconds':>8} {'tok/s':>7} {'roofline':>8}")
    for name, (n, seconds, rate, frac, batch) in rows.items():
        print(f"{name:<22} {batch:>5} {n:>7} {seconds:>8.1f} {rate:>7.1f} {100 * frac:>7.0f}%")
    ref, fast = outputs["transformers generate"], outputs["kit engine"]
    same = sum(a == b for a, b in zip(ref, fast))
    prefix = [next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))) for a, b in zip(ref, fast)]
    print(f"speed-up (kit engine / transformers generate, same run): {rows['kit engine'][2] / rows['transformers generate'][2]:.2f}x")
    print(f"agreement: {same}/{len(ref)} completions identical token for token; mean common prefix "
          f"{sum(prefix) / max(1, sum(map(len, ref))):.1%} of the reference's tokens")


if __name__ == "__main__":
    main()
