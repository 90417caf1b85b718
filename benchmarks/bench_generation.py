"""Generation throughput, side by side in one run: the kit's engine against plain transformers ``generate``.

    python benchmarks/bench_generation.py [--items 64] [--new-tokens 256] [--batch 32] [--slots 64]
        [--dtype float32] [--dataset gsm8k] [--rounds 3]

The workload is the issue's: the first ``--items`` test items of GSM8K with the kit's prompt, greedy,
at most ``--new-tokens`` new tokens, the same weights and dtype for both. The reference is plain
``model.generate`` on left-padded batches of ``--batch`` (what lm-eval's hf backend runs, and the kit's
``backend=transformers``); the kit's engine (``backend=fast``, ``models.engine``) keeps ``--slots``
sequences in flight. Both run ``--rounds`` times, alternating which goes first (the
first run of a process pays allocator and cache warm-up, and this machine's speed drifts from minute
to minute). It prints each run's generated tokens per second, the ratio of the medians and of each
round, how many completions agree token for token, whether each path gave the same completions in
every round, and each run as a fraction of this CPU's roofline for the same tokens: the time the
measured peak matmul rate and memory bandwidth allow with every item in flight (weights read once per
decode step, each live row's keys and values once per step).

``--batch 0 --slots 64 128 256 --dataset arith --items 200 --new-tokens 96`` compares the engine with
itself at several slot counts (the first is the reference of the ratios and of the agreement): the
evaluations' and the Eq. 2 pass's best batch shape on this CPU (``eval_batch_size``,
``ei_student_batch_size``). Completions may differ between slot counts where greedy decoding meets
a near tie (other batch shapes sum floating-point numbers in another order); the agreement line counts them.
"""
from __future__ import annotations

import argparse
import functools
import statistics
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


def decode_breakdown(model, ids, *, eos: int, pad: int, slots: int, skip: int = 20, steps: int = 40,
                     max_new_tokens: int | None = None) -> dict:
    """Where a decode step of the engine spends its time: torch's profiler over ``steps`` decode steps
    (after ``skip``, so every row is past its prompt), self time of the weight matmuls, of attention,
    of every other op, and the rest of the wall time (Python: the model's modules and the engine)."""
    import torch

    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    shape: list[tuple[int, int]] = []  # (rows, positions read) of each profiled step
    clock = {"decode_steps": 0, "start": 0.0, "seconds": 0.0}

    class Profiled(SlotEngine):
        def _extend(self, cache, rows, subset, sampling):
            if subset is not None:  # prefill: not profiled
                return super()._extend(cache, rows, subset, sampling)
            clock["decode_steps"] += 1
            profiled = skip < clock["decode_steps"] <= skip + steps
            if clock["decode_steps"] == skip + 1:
                prof.start()
                clock["start"] = time.perf_counter()
            super()._extend(cache, rows, subset, sampling)
            if profiled:
                shape.append((len(rows), cache.width))
            if clock["decode_steps"] == skip + steps:
                clock["seconds"] = time.perf_counter() - clock["start"]
                prof.stop()

    Profiled(model, stop_ids=[eos], pad_id=pad, slots=slots).run(
        [single_turn(i, max_new_tokens or skip + steps + 1) for i in ids])
    if len(shape) < steps:
        raise SystemExit(f"the breakdown needs {skip + steps} decode steps; the run stopped after {clock['decode_steps']}")
    parts = {"weight matmuls": 0.0, "attention": 0.0, "other ops": 0.0}
    for ev in prof.key_averages():
        us = ev.self_cpu_time_total
        if ev.key in ("aten::mm", "aten::addmm"):
            parts["weight matmuls"] += us
        elif "scaled_dot_product" in ev.key:
            parts["attention"] += us
        else:
            parts["other ops"] += us
    step_ms = 1e3 * clock["seconds"] / steps
    out = {k: v / 1e3 / steps for k, v in parts.items()}
    out["outside ops (Python)"] = max(0.0, step_ms - sum(out.values()))
    out["step"] = step_ms
    out["rows"] = sum(r for r, _ in shape) / steps
    out["width"] = sum(w for _, w in shape) / steps
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dataset", default="gsm8k")
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32, help="plain generate's batch size (0: leave plain generate out)")
    ap.add_argument("--slots", type=int, nargs="+", default=[64],
                    help="the engine's sequences in flight (several: one engine path per count, side by side)")
    ap.add_argument("--dtype", default="float32", help="float32 | bfloat16 (both paths use it)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="timed rounds of both paths, alternating which runs first; medians are reported")
    ap.add_argument("--no-breakdown", action="store_true", help="skip the profile of the engine's decode step")
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

    def engine(slots: int) -> list[list[int]]:
        eng = SlotEngine(model, stop_ids=[eos], pad_id=tok.pad_token_id, slots=slots)
        return eng.run([single_turn(i, args.new_tokens) for i in ids])

    with torch.inference_mode():  # warm-up: one short generation each
        model.generate(**tok(texts[:2], return_tensors="pt", padding=True, add_special_tokens=False), max_new_tokens=4,
                       do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=tok.pad_token_id)
    SlotEngine(model, stop_ids=[eos], pad_id=tok.pad_token_id, slots=2).run([single_turn(i, 4) for i in ids[:2]])

    paths = {"transformers generate": (plain, args.batch)} if args.batch > 0 else {}
    for slots in args.slots:
        paths[f"kit engine, {slots} slots" if len(args.slots) > 1 else "kit engine"] = (
            functools.partial(engine, slots), slots)
    if len(paths) < 2:
        raise SystemExit("nothing to compare: give --batch > 0 or several --slots")
    ref_name = next(iter(paths))
    times: dict[str, list[float]] = {name: [] for name in paths}
    outputs: dict[str, list] = {name: [] for name in paths}
    ratios: dict[str, list[float]] = {name: [] for name in paths}
    print(f"{'round':>5} {'path':<24} {'batch':>5} {'tokens':>7} {'seconds':>8} {'tok/s':>7} {'roofline':>8}")
    for r in range(args.rounds):  # ABBA order: no path always runs first (allocator and cache warm-up)
        order = list(paths) if r % 2 == 0 else list(paths)[::-1]
        for name in order:
            fn, batch = paths[name]
            t = time.perf_counter()
            out = fn()
            seconds = time.perf_counter() - t
            times[name].append(seconds)
            outputs[name].append(out)
            n = sum(map(len, out))
            ideal = roofline_seconds(model, list(map(len, ids)), list(map(len, out)), len(ids), flops_peak, bw_peak)
            print(f"{r + 1:>5} {name:<24} {batch:>5} {n:>7} {seconds:>8.1f} {n / seconds:>7.1f} {100 * ideal / seconds:>7.0f}%",
                  flush=True)
        speed = {name: sum(map(len, outputs[name][-1])) / times[name][-1] for name in paths}
        for name in paths:
            ratios[name].append(speed[name] / speed[ref_name])
    rate = {name: sum(map(len, outputs[name][0])) / statistics.median(times[name]) for name in paths}
    print(f"median tokens/s over {args.rounds} round(s): " + ", ".join(f"{name} {rate[name]:.1f}" for name in paths))
    ref = outputs[ref_name][0]
    for name in list(paths)[1:]:
        rs = ratios[name]
        print(f"speed-up ({name} / {ref_name}, tokens/s, same run): {rate[name] / rate[ref_name]:.2f}x of the medians; "
              f"per round {', '.join(f'{x:.2f}x' for x in rs)} (min {min(rs):.2f}x)")
        other = outputs[name][0]
        same = sum(a == b for a, b in zip(ref, other))
        prefix = [next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))) for a, b in zip(ref, other)]
        print(f"agreement with {ref_name}: {same}/{len(ref)} completions identical token for token; mean common "
              f"prefix {sum(prefix) / max(1, sum(map(len, ref))):.1%} of its tokens")
    for name in paths:
        stable = all(o == outputs[name][0] for o in outputs[name][1:])
        print(f"rerun: {name} gave {'identical' if stable else 'DIFFERENT'} completions in every round")
    if not args.no_breakdown:
        b = decode_breakdown(model, ids, eos=eos, pad=tok.pad_token_id, slots=args.slots[0])
        shares = ", ".join(f"{k} {b[k]:.1f} ms ({100 * b[k] / b['step']:.0f}%)"
                           for k in ("weight matmuls", "attention", "other ops", "outside ops (Python)"))
        print(f"engine decode step (profiled, {b['rows']:.1f} rows, {b['width']:.0f} positions): {b['step']:.1f} ms = {shares}")

if __name__ == "__main__":
    main()
