"""The kit's generation engine (models.engine) against plain transformers ``generate`` on tiny random models."""
from __future__ import annotations

import pytest
import torch

from exgrpo_utils.models.engine import SlotEngine, Turn, single_turn

STOP = 7


def tiny(kind: str = "llama"):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, eos_token_id=STOP, pad_token_id=0)
    model = (LlamaForCausalLM(LlamaConfig(**common)) if kind == "llama"
             else Qwen2ForCausalLM(Qwen2Config(**common, use_sliding_window=False)))
    return model.eval()


def reference(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Plain greedy ``generate`` on one unpadded row, cut after the stop token."""
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=STOP, pad_token_id=0)
    row = out[0, len(prompt):].tolist()
    return row[: row.index(STOP) + 1] if STOP in row else row


def prompts(n: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(8, 96, (int(torch.randint(3, 40, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_greedy_matches_generate_with_more_jobs_than_slots(kind):
    model = tiny(kind)
    ps = prompts(9)
    budgets = [3 + 4 * (i % 4) for i in range(len(ps))]  # rows end at different steps: refills and compaction
    engine = SlotEngine(model, stop_ids=[STOP], pad_id=0, slots=4, capacity=16)  # capacity grows on the way
    got = engine.run([single_turn(p, b) for p, b in zip(ps, budgets)])
    assert got == [reference(model, p, b) for p, b in zip(ps, budgets)]
    assert engine.stats["decode_tokens"] + len(ps) == sum(map(len, got))  # each token read once, none recomputed


def test_results_arrive_as_each_job_ends_and_in_order():
    model = tiny()
    ps = prompts(5)
    seen = []
    out = SlotEngine(model, stop_ids=[STOP], pad_id=0, slots=2).run(
        [single_turn(p, 2 + 3 * i) for i, p in enumerate(ps)], on_done=lambda i, r: seen.append(i))
    assert sorted(seen) == list(range(5)) and len(out) == 5
    assert seen[0] == 0  # the shortest budget ends first


def dialogue(turns: list[list[int]], budget: int):
    """A job of several turns: returns everything generated per turn."""
    outs = []
    for context in turns:
        outs.append((yield Turn(context, budget)))
    return outs


def test_a_multi_turn_job_keeps_its_cache_and_equals_re_encoding():
    model = tiny()
    turns = prompts(3, seed=4)
    got = SlotEngine(model, stop_ids=[STOP], pad_id=0, slots=2).run([dialogue(turns, 6), single_turn(turns[0], 9)])[0]
    history: list[int] = []
    expected = []
    for context in turns:  # the reference re-encodes the whole dialogue at every turn
        history += context
        gen = reference(model, history, 6)
        expected.append(gen)
        history += gen
    assert got == expected


def test_sampling_is_reproducible_for_a_seed():
    model = tiny()
    ps = prompts(6)

    def run(seed):
        return SlotEngine(model, stop_ids=[STOP], pad_id=0, slots=3).run([single_turn(p, 12) for p in ps],
                                                                          temperature=1.0, seed=seed)

    first = run(5)
    assert run(5) == first
    assert run(6) != first
    nucleus = SlotEngine(model, stop_ids=[STOP], pad_id=0, slots=3).run([single_turn(p, 12) for p in ps],
                                                                        temperature=1.0, top_p=1e-6, seed=5)
    assert nucleus == SlotEngine(model, stop_ids=[STOP], pad_id=0, slots=3).run([single_turn(p, 12) for p in ps])


def test_bad_jobs_and_lengths_are_refused_clearly():
    model = tiny()

    def not_a_turn():
        yield [1, 2, 3]

    with pytest.raises(TypeError, match="not Turn"):
        SlotEngine(model, stop_ids=[STOP], pad_id=0).run([not_a_turn()])
    with pytest.raises(ValueError, match="max_new_tokens"):
        SlotEngine(model, stop_ids=[STOP], pad_id=0).run([single_turn([9, 9], 0)])
    with pytest.raises(ValueError, match="256 positions"):
        SlotEngine(model, stop_ids=[STOP], pad_id=0).run([single_turn([9] * 250, 20)])
    with pytest.raises(ValueError, match="stop token"):
        SlotEngine(model, stop_ids=[], pad_id=0)


def test_without_a_seed_sampling_follows_torchs_global_generator():
    model = tiny()
    ps = prompts(4)

    def run():
        return SlotEngine(model, stop_ids=[STOP], pad_id=0, slots=2).run([single_turn(p, 12) for p in ps],
                                                                          temperature=1.0)

    torch.manual_seed(11)
    first = run()
    torch.manual_seed(11)
    assert run() == first
    assert run() != first  # the global generator moved on


def _bench_generation():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "bench_generation.py"
    spec = importlib.util.spec_from_file_location("bench_generation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_roofline_on_a_hand_computed_case():
    """10 float32 parameters, one layer, one head of width 2: 16 bytes of keys and values and 8 attention
    FLOPs per context token. Prompt of 2, 2 generated tokens: prefill (2*10*2 + 8*2*2/2) FLOPs = 56;
    decode steps at context 2 and 3: 36 and 44 FLOPs, 40 + 32 and 40 + 48 bytes."""
    from types import SimpleNamespace

    bench = _bench_generation()
    model = SimpleNamespace(config=SimpleNamespace(num_hidden_layers=1, num_key_value_heads=1, num_attention_heads=1,
                                                   hidden_size=2, head_dim=2),
                            parameters=lambda: iter([torch.zeros(10)]))
    assert bench.roofline_seconds(model, [2], [2], 1, 100.0, 1000.0) == pytest.approx(0.56 + 0.36 + 0.44)  # compute-bound
    assert bench.roofline_seconds(model, [2], [2], 1, 100.0, 100.0) == pytest.approx(0.56 + 0.72 + 0.88)  # memory-bound
    # two items in one batch: one decode step reads the weights once for both rows
    assert bench.roofline_seconds(model, [2, 2], [1, 1], 2, 100.0, 100.0) == pytest.approx(2 * 0.56 + (40 + 64) / 100)


def test_benchmark_decode_breakdown_accounts_for_the_step():
    bench = _bench_generation()
    model = tiny()
    jobs = prompts(6)
    b = bench.decode_breakdown(model, jobs, eos=10_000, pad=0, slots=4, skip=2, steps=3)  # no stop: budgets end
    assert b["weight matmuls"] > 0 and b["attention"] > 0 and b["other ops"] > 0 and b["outside ops (Python)"] >= 0
    # the first 4 jobs fill the slots; decode step d reads up to the longest prompt + d: steps 3, 4, 5 profiled
    assert b["rows"] == 4 and b["width"] == max(map(len, jobs[:4])) + 4
    with pytest.raises(SystemExit, match="needs 9 decode steps"):
        bench.decode_breakdown(model, jobs, eos=10_000, pad=0, slots=4, skip=4, steps=5, max_new_tokens=3)


def test_jobs_from_a_source_join_the_running_engine_and_match_running_alone():
    model = tiny()
    ps = prompts(4, seed=7)
    arrivals = {5: [single_turn(ps[1], 4)], 9: [single_turn(ps[2], 4), single_turn(ps[3], 6)]}  # step -> new jobs
    engine = SlotEngine(model, stop_ids=[10_000], pad_id=0, slots=2)  # no stop: every budget is used up
    waiting, seen = [], []

    def source(free):  # the jobs that have arrived by this step, at most as many as there are free slots
        assert 0 < free <= 2
        for step in [k for k in arrivals if k <= engine.stats["forwards"]]:
            waiting.extend(arrivals.pop(step))
        given = waiting[:free]
        del waiting[:free]
        return given

    got = engine.run([single_turn(ps[0], 30)], source=source, on_done=lambda i, r: seen.append(i))
    assert got == [reference(model, p, b) for p, b in zip(ps, (30, 4, 4, 6))]  # greedy: as each one alone
    assert seen[:3] == [1, 2, 3] and seen[-1] == 0  # the short jobs ended while the long one ran
    assert not arrivals and not waiting


def test_a_cancelled_job_leaves_the_queue_or_its_slot_at_the_next_step():
    model = tiny()
    ps = prompts(3, seed=8)
    engine = SlotEngine(model, stop_ids=[10_000], pad_id=0, slots=2)
    seen = []
    gone = {2}  # job 2 waits for a slot when it is cancelled; job 0 is cancelled while it runs
    got = engine.run([single_turn(p, 40) for p in ps], on_done=lambda i, r: seen.append(i),
                     cancelled=lambda i: i in gone or (i == 0 and engine.stats["forwards"] >= 5))
    assert got[0] is None and got[2] is None and got[1] == reference(model, ps[1], 40)
    assert seen == [1]
    assert engine.stats["decode_tokens"] < 40 + 10  # job 0 left after a few steps, job 2 never ran


def test_the_shape_profile_names_the_cpu_its_peak_and_every_projection(capsys):
    """benchmarks/profile_shapes.py at a token size: one row count, a few milliseconds a shape."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "profile_shapes.py"
    spec = importlib.util.spec_from_file_location("profile_shapes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--model", "no-such/model", "--rows", "2", "--seconds", "0.01"])
    out = capsys.readouterr().out
    assert "CPU: " in out and "peak: 2048^3 matmul" in out
    for name in ("attention q, o (r x 576 x 576)", "MLP up, gate (r x 576 x 1536)", "vocabulary projection (r x 576 x 49152)"):
        assert name in out


def test_rl_bench_runs_each_configuration_with_the_update_it_names():
    """The RL bench once unpacked its product in the wrong order (a question count became the mode)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "bench_rl_step.py"
    spec = importlib.util.spec_from_file_location("bench_rl_step", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    runs = bench.plan(["fast", "generate"], ["exgrpo", "grpo"], [1, 4], ["kit", "trl"])
    assert len(runs) == 16 and len(set(runs)) == 16
    assert {r[0] for r in runs} == {"kit", "trl"} and {r[1] for r in runs} == {"fast", "generate"}
    assert {r[2] for r in runs} == {"exgrpo", "grpo"} and {r[3] for r in runs} == {1, 4}
    assert runs[:2] == [("kit", "fast", "exgrpo", 1), ("trl", "fast", "exgrpo", 1)]  # the update innermost
