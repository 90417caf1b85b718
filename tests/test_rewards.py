import math
import random

import pytest

from exgrpo_utils.data.datasets import Example
from exgrpo_utils.train import rewards, rl_data
from exgrpo_utils.train.dialogue import ChatLayout, plan_group, teacher_forced
from exgrpo_utils.train.settings import ExGRPOSettings

# ---------------------------------------------------------------------------------------------
# Eq. 4

def test_r_base_is_the_evaluation_scorer():
    ex = Example("q", "gsm8k", "...", "18")
    assert rewards.r_base(ex, "so 9 * 2 = 18. The answer is 18.") == 1.0
    assert rewards.r_base(ex, "The answer is 17.") == 0.0
    assert rewards.r_base(ex, "") == 0.0


# ---------------------------------------------------------------------------------------------
# Eq. 5-6, hand-computed

@pytest.mark.parametrize("full, partial, delta, nu, expected", [
    ([1, 1, 0, 1], [1, 0, 0, 0], 0.5, 1.0, [1.5, 1.5, 0.0, 1.5]),  # 0.75 > 0.25: fires on correct rollouts only
    ([1, 0, 0, 0], [1, 0, 0, 0], 0.5, 1.0, [1.0, 0.0, 0.0, 0.0]),  # equal: strict inequality does not fire
    ([1, 1, 0, 0], [1, 0, 0, 0], 0.5, 2.0, [1.0, 1.0, 0.0, 0.0]),  # 0.5 > 2 * 0.25 is false
    ([1, 1, 1, 0], [1, 0, 0, 0], 0.3, 2.0, [1.3, 1.3, 1.3, 0.0]),  # 0.75 > 0.5 fires
    ([0, 0, 0, 0], [0, 0, 0, 0], 0.5, 1.0, [0.0, 0.0, 0.0, 0.0]),  # all zero: 0 > 0 is false
    ([1, 1, 1, 1], [1, 1, 1, 1], 0.5, 1.0, [1.0, 1.0, 1.0, 1.0]),  # all one: 1 > 1 is false
    ([1, 1, 1, 1], [1, 1, 1, 0], 0.5, 1.0, [1.5, 1.5, 1.5, 1.5]),
    ([1, 0], [], 0.5, 1.0, [1.5, 0.0]),  # empty partial group: P_partial = 0 (kit default)
    ([0, 0], [], 0.5, 1.0, [0.0, 0.0]),
    ([], [1, 0], 0.5, 1.0, []),
])
def test_dsu_bonus_hand_computed(full, partial, delta, nu, expected):
    assert rewards.dsu_bonus(full, partial, delta=delta, nu=nu) == pytest.approx(expected)


def test_dsu_rejects_out_of_range_parameters():
    with pytest.raises(ValueError, match="ν must be >= 1"):
        rewards.dsu_bonus([1], [0], delta=0.5, nu=0.9)
    with pytest.raises(ValueError, match="δ must be > 0"):
        rewards.dsu_bonus([1], [0], delta=-0.5)
    assert rewards.dsu_bonus([1, 0], [0, 0], delta=0.0) == [1.0, 0.0]  # δ = 0: the bonus off (Table 3's ablation)


def test_bonus_never_lowers_the_expected_reward_of_a_full_rollout():
    """The paper's theorem, checked on random groups: R_total >= R_base everywhere."""
    rng = random.Random(0)
    for _ in range(500):
        full = [rng.randint(0, 1) for _ in range(rng.randint(1, 6))]
        partial = [rng.randint(0, 1) for _ in range(rng.randint(0, 6))]
        total = rewards.dsu_bonus(full, partial, delta=rng.uniform(0.1, 1), nu=rng.uniform(1, 3))
        assert all(t >= b for t, b in zip(total, full))


def test_group_rewards_keep_scenario_b_at_r_base_and_report_statistics():
    totals, stats = rewards.exgrpo_group_rewards([1, 0, 1, 1, 0, 0], ["A", "B", "A", "A", "B", "B"], 0.5, 1.0)
    assert totals == [1.5, 0.0, 1.5, 1.5, 0.0, 0.0]
    assert stats == {"p_full": 1.0, "p_partial": 0.0, "fired": True}
    totals, stats = rewards.exgrpo_group_rewards([0, 1], ["A", "B"], 0.5, 1.0)
    assert totals == [0.0, 1.0] and stats["fired"] is False


# ---------------------------------------------------------------------------------------------
# Eq. 7 advantages, hand-computed (sample std, as TRL)

def test_group_advantages_hand_computed():
    adv = rewards.group_advantages([1.5, 1.5, 0.0, 0.0])
    std = math.sqrt((4 * 0.75 ** 2) / 3)  # mean 0.75
    assert adv == pytest.approx([0.75 / (std + 1e-4)] * 2 + [-0.75 / (std + 1e-4)] * 2)
    assert rewards.group_advantages([1, 1, 1, 1]) == [0.0] * 4  # all equal: no signal
    assert rewards.group_advantages([0, 0, 0]) == [0.0] * 3
    assert rewards.group_advantages([2.0, 0.0], scale=False) == [1.0, -1.0]
    assert rewards.group_advantages([]) == []


def test_advantages_match_trl_normalisation():
    import torch

    rs = [1.5, 0.0, 1.0, 1.0, 0.0, 0.0, 1.5, 0.0]
    t = torch.tensor(rs).view(-1, 8)
    expected = ((t - t.mean(dim=1, keepdim=True)) / (t.std(dim=1, keepdim=True) + 1e-4)).view(-1).tolist()
    assert rewards.group_advantages(rs) == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Dialogues

def test_plan_group_orders_probes_without_repeats_and_b_is_a_prefix_of_a():
    rng = random.Random(1)
    for _ in range(200):
        n, k, G = rng.randint(1, 10), rng.randint(1, 6), rng.choice([2, 4, 8, 5])
        plans = plan_group("q", n, G=G, k=k, rng=rng)
        a = [p for p in plans if p.scenario == "A"]
        b = [p for p in plans if p.scenario == "B"]
        assert len(a) == G - G // 2 and len(b) == G // 2
        order = a[0].probe_order
        assert len(order) == min(k, n) and len(set(order)) == len(order) and all(0 <= j < n for j in order)
        assert all(p.probe_order == order for p in a)
        for p in b:
            assert len(p.probe_order) < len(order) and order[: len(p.probe_order)] == p.probe_order


def test_plan_group_rejects_bad_groups():
    with pytest.raises(ValueError, match="G must be >= 2"):
        plan_group("q", 3, G=1, k=2, rng=random.Random(0))
    with pytest.raises(ValueError, match="no probes"):
        plan_group("q", 0, G=4, k=2, rng=random.Random(0))


@pytest.fixture(scope="module")
def layout(student_path):
    from transformers import AutoTokenizer

    return ChatLayout(AutoTokenizer.from_pretrained(student_path))


def test_teacher_forced_dialogue_masks_exactly_the_assistant_tokens(layout):
    tok = layout.tok
    turns = [("Probe one?", "Because 2 + 3 = 5. The answer is 5."), ("Probe two?", "The answer is 7."),
             ("Original question?", "So the answer is 12.")]
    d = teacher_forced(layout, turns)
    rendered = tok.apply_chat_template([m for u, a in turns for m in ({"role": "user", "content": u},
                                                                      {"role": "assistant", "content": a})], tokenize=False)
    assert tok.decode(d.full_ids) == rendered.rstrip("\n")
    trained = [t for t, m in zip(d.completion_ids, d.mask) if m]
    expected = []
    for _, a in turns:
        expected += layout.encode(a) + [layout.turn_end_id]
    assert trained == expected  # every assistant token, its EOS, and nothing else
    last_only = teacher_forced(layout, turns, train_last_only=True)
    assert [t for t, m in zip(last_only.completion_ids, last_only.mask) if m] == layout.encode(turns[-1][1]) + [tok.eos_token_id]


def test_rollout_keeps_generated_tokens_and_masks_context(layout, student):
    from exgrpo_utils.train.rollouts import rollout_dialogues

    model, tok = student
    dialogues = [["What is 2 + 3?", "What is 4 + 4?", "What is 1 + 1?"], ["What is 1 + 1?"]]
    out = rollout_dialogues(model, tok, layout, dialogues, None, temperature=0.0, max_probe_tokens=8, max_final_tokens=8)
    (full, final_a), (short, final_b) = out
    assert final_a and final_b
    # context segments (mask 0) are exactly the template's turn switches with the next probe
    text = tok.decode(full.full_ids)
    for q in dialogues[0]:
        assert text.count(q) == 1
    policy = [t for t, m in zip(full.completion_ids, full.mask) if m]
    context = tok.decode([t for t, m in zip(full.completion_ids, full.mask) if not m])
    assert "What is 4 + 4?" in context and "What is 1 + 1?" in context and "<|im_start|>assistant" in context
    assert len(policy) <= 3 * 8 and short.mask == [1] * len(short.mask)  # one turn: all policy tokens
    teacher = rollout_dialogues(model, tok, layout, dialogues[:1], [["five", "eight"]], temperature=0.0,
                                max_probe_tokens=8, max_final_tokens=8)[0][0]
    assert sum(teacher.mask) <= 8  # teacher answers are context; only the final answer is policy
    assert "five" in tok.decode([t for t, m in zip(teacher.completion_ids, teacher.mask) if not m])


class FakeVLLMGeneration:
    """Stands in for TRL's VLLMGeneration.generate (1.16: returns prompt ids, completion ids, and per
    token a list of top-n logprobs, the sampled token's first): answers every context with fixed
    tokens and logprobs, records budgets and the stop tokens it was given."""

    def __init__(self, reply, logprobs=None):
        self.max_completion_length, self.temperature, self.generation_kwargs = 999, 0.7, {"stop_token_ids": [7]}
        self.reply, self.logprobs, self.calls = reply, logprobs, []

    def generate(self, prompts, images, num_generations):
        assert images is None and num_generations == 1
        self.calls.append((len(prompts), self.max_completion_length, self.temperature,
                           tuple(self.generation_kwargs["stop_token_ids"])))
        completions = [self.reply[: self.max_completion_length] for _ in prompts]
        lps = None if self.logprobs is None else [[[x] for x in self.logprobs[: self.max_completion_length]] for _ in prompts]
        return prompts, completions, lps, None


def test_vllm_turn_sampler_drives_the_dialogue(layout):
    """The vLLM path of the rollouts: one engine call per turn with that turn's budget and the
    template's stop tokens, cut at the stop token, settings restored, logprobs kept per policy token."""
    from exgrpo_utils.train.rollouts import VLLMTurnSampler, rollout_dialogues

    tok = layout.tok
    answer = layout.encode("The answer is 5.")
    reply = answer + [layout.turn_end_id] + answer  # text after the end of the turn must be cut
    engine = FakeVLLMGeneration(reply, [-0.5 - j for j in range(len(reply))])
    sampler = VLLMTurnSampler(engine, layout.stop_ids)
    dialogues = [["Probe one?", "Question?"], ["Question?"]]
    out = rollout_dialogues(None, tok, layout, dialogues, None, temperature=1.0, max_probe_tokens=64,
                            max_final_tokens=32, sampler=sampler)
    assert [f for _, f in out] == ["The answer is 5.", "The answer is 5."]
    # turn 1: one probe answer (budget 64) and one final answer (budget 32); turn 2: the other final answer
    stops = tuple(sorted({7, *layout.stop_ids}))
    assert engine.calls == [(1, 64, 1.0, stops), (1, 32, 1.0, stops), (1, 32, 1.0, stops)]
    assert (engine.max_completion_length, engine.temperature, engine.generation_kwargs) == (999, 0.7, {"stop_token_ids": [7]})
    full = out[0][0]
    assert sum(full.mask) == 2 * (len(answer) + 1)  # two policy turns, each ending at its stop token
    assert len(full.logprobs) == len(full.completion_ids)
    turn = [-0.5 - j for j in range(len(answer) + 1)]
    assert [lp for lp, m in zip(full.logprobs, full.mask) if m] == turn + turn
    assert all(lp is None for lp, m in zip(full.logprobs, full.mask) if not m)  # context: no sampler logprob
    assert sampler([], temperature=1.0, max_new_tokens=8) == []
    no_lp = VLLMTurnSampler(FakeVLLMGeneration(reply), layout.stop_ids)([[1, 2]], temperature=1.0, max_new_tokens=3)
    assert no_lp == [(reply[:3], None)]  # an engine that reports no logprobs: none kept


GEMMA_LIKE = ("{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
              "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


@pytest.fixture(scope="module")
def gemma_like(student_path):
    """The student's tokenizer with a Gemma-style template: turns end with <end_of_turn>, not EOS."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(student_path)
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tok.eos_token = "<|endoftext|>"
    tok.chat_template = GEMMA_LIKE
    return tok


def test_turn_stop_ids_add_the_templates_end_of_turn_token(gemma_like, layout):
    from exgrpo_utils.models.generation import cut_at_stop, turn_stop_ids

    end = gemma_like.convert_tokens_to_ids("<end_of_turn>")
    assert turn_stop_ids(gemma_like) == (gemma_like.eos_token_id, end)
    assert turn_stop_ids(layout.tok) == (layout.tok.eos_token_id,)  # ChatML whose EOS is <|im_end|>: one token
    assert cut_at_stop([5, 6, end, 9, 0], (0, end)) == [5, 6, end]
    assert cut_at_stop([5, 6, 3, 3], (0, end), pad_id=3) == [5, 6]


def test_gemma_like_dialogues_close_turns_with_end_of_turn(gemma_like):
    """Teacher-forced targets and inserted teacher answers end with the template's own end-of-turn
    token, and a generated turn that ended with it does not get a second one."""
    layout = ChatLayout(gemma_like)
    end = gemma_like.convert_tokens_to_ids("<end_of_turn>")
    assert layout.turn_end_id == end and layout.stop_ids == (gemma_like.eos_token_id, end)
    turns = [("Probe?", "It is 5."), ("Question?", "The answer is 7.")]
    d = teacher_forced(layout, turns)
    rendered = gemma_like.apply_chat_template([m for u, a in turns for m in ({"role": "user", "content": u},
                                                                             {"role": "assistant", "content": a})],
                                              tokenize=False)
    assert gemma_like.decode(d.full_ids) == rendered.rstrip("\n")
    after = layout.next_turn("Next?", ended_with=end)
    assert after[0] != end and layout.next_turn("Next?", ended_with=None)[0] == end
    assert layout.ended_with([4, end]) == end and layout.ended_with([4, 5]) is None


def test_engine_rollouts_equal_the_lockstep_generate_rollouts(layout, student):
    """The kit's engine keeps each dialogue's cache across turns; greedy, it must give the tokens and
    masks of the lockstep path that re-encodes every dialogue with ``generate``, teacher turns too."""
    from exgrpo_utils.train.rollouts import rollout_dialogues, rollout_single_turn

    model, tok = student
    dialogues = [["What is 2 + 3?", "What is 4 + 4?", "What is 1 + 1?"], ["What is 1 + 1?"], ["Why 7?", "Sum?"]]
    teacher = [["five", "eight"], [], ["because"]]
    for answers in (None, teacher):
        kw = dict(temperature=0.0, max_probe_tokens=12, max_final_tokens=10)
        fast = rollout_dialogues(model, tok, layout, dialogues, answers, backend="fast", **kw)
        slow = rollout_dialogues(model, tok, layout, dialogues, answers, backend="generate", **kw)
        assert [(d.prompt_ids, d.completion_ids, d.mask, f) for d, f in fast] == \
            [(d.prompt_ids, d.completion_ids, d.mask, f) for d, f in slow]
        # fewer slots than dialogues: the rest wait in the engine's queue, each still runs to its end
        queued = rollout_dialogues(model, tok, layout, dialogues, answers, backend="fast", slots=1, **kw)
        assert [(d.completion_ids, d.mask, f) for d, f in queued] == [(d.completion_ids, d.mask, f) for d, f in slow]
    single = rollout_single_turn(model, tok, layout, ["What is 1 + 1?", "Why 7?"], [10, 12], temperature=0.0)
    assert [d.full_ids for d in single] == [d.full_ids for d, _ in
                                            rollout_dialogues(model, tok, layout, [["What is 1 + 1?"]], None,
                                                              backend="generate", temperature=0.0, max_probe_tokens=12,
                                                              max_final_tokens=10)] + [single[1].full_ids]
    assert all(d.mask == [1] * len(d.completion_ids) for d in single)


def test_sampled_rollouts_repeat_for_a_seed(layout, student):
    from exgrpo_utils.train.rollouts import rollout_dialogues

    model, tok = student
    dialogues = [["What is 2 + 3?", "What is 1 + 1?"]] * 3
    kw = dict(temperature=1.0, max_probe_tokens=10, max_final_tokens=10)
    first = rollout_dialogues(model, tok, layout, dialogues, None, seed=3, **kw)
    again = rollout_dialogues(model, tok, layout, dialogues, None, seed=3, **kw)
    assert [d.completion_ids for d, _ in first] == [d.completion_ids for d, _ in again]


# ---------------------------------------------------------------------------------------------
# Fair comparison of ExGRPO and plain GRPO: same questions per step, same probes, aux on probes only

def _records(n=6, probes=3, reveal_first=True):
    recs = []
    for i in range(n):
        item = {"id": f"q{i}", "dataset": "arith", "question": f"Mia has {i + 2} apples. She gets 3 more. How many?",
                "answer": str(i + 5), "choices": [], "rationale": None, "meta": None}
        ps = [{"rule": f"r{j}", "probe": (f"Why does Mia end with {i + 5}?" if j == 0 and reveal_first else f"What is step {j}?"),
               "teacher_response": f"t{j}. The answer is {j}.", "teacher_answer": str(j), "answer_type": "number"}
              for j in range(probes)]
        recs.append({"id": f"q{i}", "dataset": "arith", "item": item, "teacher_cot": "cot", "probes": ps})
    return recs


def test_rl_records_leave_out_answer_revealing_probes_unless_allowed():
    recs = _records()
    assert ExGRPOSettings().revealing_probes == "allow"  # the paper's probes, the kit default (docs/method.md)
    assert [len(r["probes"]) for r in rl_data.rl_records(recs, ExGRPOSettings(), log=lambda *_: None)] == [3] * 6
    kept = rl_data.rl_records(recs, ExGRPOSettings(revealing_probes="exclude"), log=lambda *_: None)
    assert [len(r["probes"]) for r in kept] == [2] * 6 and all(not p["reveals_answer"] for r in kept for p in r["probes"])
    allowed = rl_data.rl_records(recs, ExGRPOSettings(revealing_probes="allow"), log=lambda *_: None)
    assert [sum(p["reveals_answer"] for p in r["probes"]) for r in allowed] == [1] * 6
    only_revealing = [dict(r, probes=r["probes"][:1]) for r in recs]
    said = []
    assert len(rl_data.rl_records(only_revealing[:3] + recs[3:], ExGRPOSettings(revealing_probes="exclude"),
                                  log=said.append)) == 3
    assert "3 of 6 questions have no probe left" in said[0]
    with pytest.raises(ValueError, match="revealing_probes"):
        rl_data.rl_records(recs, ExGRPOSettings(revealing_probes="maybe"))


def test_grpo_rows_are_k_probes_then_the_question_and_aux_targets_are_probe_answers_only():
    from exgrpo_utils.teach.rules import load_rules

    settings = ExGRPOSettings(mode="grpo", k=4, revealing_probes="exclude")
    recs = rl_data.rl_records(_records(n=2), settings, log=lambda *_: None)
    rows = rl_data.training_rows(recs, load_rules(), settings)
    assert len(rows) == 2 * 5 and rl_data.rows_per_question(settings) == 5
    first = rows[:5]
    assert all(r["question_id"] == "q0" for r in first)
    assert [bool(r["target"]) for r in first] == [True] * 4 + [False]  # the question row trains no aux target
    assert first[-1]["answer_type"] == "" and first[-1]["gold"] == "5"
    assert {r["gold"] for r in first[:4]} == {"1", "2"}  # 2 probes left, cycled to fill k = 4
    assert rl_data.training_rows(recs, load_rules(), ExGRPOSettings(k=4, revealing_probes="exclude")) == \
        [r for r in rows if not r["target"]]  # exgrpo: the question rows alone


def _questions_per_step(settings, recs, steps):
    from exgrpo_utils.teach.rules import load_rules

    rows = rl_data.training_rows(rl_data.rl_records(recs, settings, log=lambda *_: None), load_rules(), settings)
    per_q = rl_data.rows_per_question(settings)
    sampler = rl_data.QuestionBlockSampler(rl_data.question_blocks([r["question_id"] for r in rows]), G=settings.G,
                                          questions=settings.questions_per_step, seed=settings.seed)
    idx = list(sampler)
    batch = settings.G * settings.questions_per_step * per_q
    assert len(idx) == len(sampler) and len(idx) % batch == 0
    out = []
    for b in range(0, min(len(idx), steps * batch), batch):
        chunk = [rows[i] for i in idx[b:b + batch]]
        groups = [chunk[g:g + settings.G] for g in range(0, batch, settings.G)]
        assert all(len({r["prompt"][-1]["content"] for r in g}) == 1 for g in groups)  # a GRPO group: one prompt
        out.append(list(dict.fromkeys(r["question_id"] for r in chunk)))
    return out


def test_exgrpo_and_grpo_see_the_same_questions_at_every_step():
    recs = _records(n=10)
    for q in (1, 2):
        ex = _questions_per_step(ExGRPOSettings(G=4, k=2, questions_per_step=q, seed=3), recs, steps=5)
        gr = _questions_per_step(ExGRPOSettings(mode="grpo", G=4, k=2, questions_per_step=q, seed=3), recs, steps=5)
        assert ex == gr and all(len(s) == q for s in ex)
        assert len({tuple(s) for s in ex}) > 1
    other_seed = _questions_per_step(ExGRPOSettings(G=4, k=2, seed=4), recs, steps=5)
    assert other_seed != _questions_per_step(ExGRPOSettings(G=4, k=2, seed=3), recs, steps=5)


def test_question_block_sampler_orders_each_pass_by_its_epoch():
    """Each pass over the data draws its own order, fixed by (seed, pass): a trainer resuming in pass 2
    sets epoch 2 on a fresh sampler and gets what the uninterrupted run drew in its third pass."""
    blocks = [[i] for i in range(8)]
    running = rl_data.QuestionBlockSampler(blocks, G=1, questions=2, seed=5)
    passes = [list(running) for _ in range(3)]
    assert len({tuple(p) for p in passes}) == 3 and all(sorted(p) == list(range(8)) for p in passes)
    resumed = rl_data.QuestionBlockSampler(blocks, G=1, questions=2, seed=5)
    resumed.set_epoch(2)
    assert list(resumed) == passes[2]
    again = rl_data.QuestionBlockSampler(blocks, G=1, questions=2, seed=5)
    again.set_epoch(0)
    assert list(again) == passes[0]


def test_question_block_sampler_refuses_uneven_blocks():
    with pytest.raises(ValueError, match="different sizes"):
        rl_data.QuestionBlockSampler([[0, 1], [2]], G=2, questions=1)
    with pytest.raises(ValueError, match="cannot fill"):
        rl_data.QuestionBlockSampler([[0], [1]], G=2, questions=3)


# ---------------------------------------------------------------------------------------------
# ExGRPOReward: the reward TRL calls, hand-computed

def _reward_records():
    return [{"id": "q1", "item": Example("q1", "arith", "1 + 1?", "2").to_dict(), "probes": []},
            {"id": "q2", "item": Example("q2", "arith", "2 + 2?", "4").to_dict(), "probes": []}]


def test_exgrpo_reward_groups_rollouts_by_question_and_adds_the_bonus_per_group():
    logged = {}
    reward = rewards.ExGRPOReward(_reward_records(), ExGRPOSettings(delta=0.5, nu=1.0))
    # q1: A right, A wrong, B wrong, B wrong -> fires (0.5 > 0); q2: A right, A right, B right, B right -> 1 > 1 false
    finals = ["The answer is 2.", "The answer is 3.", "5", "7", "The answer is 4.", "4", "4", "4"]
    totals = reward(None, [""] * 8, ["q1", "q1", "q1", "q1", "q2", "q2", "q2", "q2"],
                    log_metric=lambda k, v: logged.__setitem__(k, v), scenario=list("AABBAABB"), final_text=finals)
    assert totals == [1.5, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert logged["exgrpo/bonus_fired"] == 0.5 and logged["exgrpo/p_full"] == 0.75 and logged["exgrpo/p_partial"] == 0.5
    assert logged["exgrpo/r_base"] == 5 / 8 and logged["exgrpo/r_dsu"] == 0.5 / 8


def test_grpo_reward_scores_each_row_against_its_own_gold():
    reward = rewards.ExGRPOReward(_reward_records(), ExGRPOSettings(mode="grpo"))
    completions = [[{"role": "assistant", "content": "It is 7."}], [{"role": "assistant", "content": "The answer is 2."}],
                   "The answer is 3."]
    totals = reward(None, completions, ["q1", "q1", "q2"], gold=["7", "", ""], answer_type=["number", "", ""])
    assert totals == [1.0, 1.0, 0.0]  # a probe row against its teacher answer, question rows against the item


def test_a_bonus_on_a_group_without_correct_partial_rollouts_changes_no_advantage():
    """Eq. 5 fires (P_full 0.5 > 0) but every nonzero reward becomes 1 + delta: a uniform rescaling that
    Eq. 7's division by the standard deviation cancels (to within eps)."""
    from exgrpo_utils.train.rewards import bonus_effect, exgrpo_group_rewards, step_advantages

    totals, stats = exgrpo_group_rewards([1, 0, 0, 0], ["A", "A", "B", "B"], delta=0.5, nu=1.0)
    assert stats["fired"] and totals == [1.5, 0.0, 0.0, 0.0]
    with_bonus, without = step_advantages(totals, [[0, 1, 2, 3]]), step_advantages([1, 0, 0, 0], [[0, 1, 2, 3]])
    assert with_bonus == pytest.approx([1.5, -0.5, -0.5, -0.5], abs=1e-3) and with_bonus == pytest.approx(without, abs=1e-3)
    assert bonus_effect([1, 0, 0, 0], totals, [[0, 1, 2, 3]]) == {"changed_groups": 0, "mean_abs_change": pytest.approx(0, abs=1e-3)}


def test_a_bonus_with_one_correct_partial_rollout_changes_the_advantages_by_hand():
    """Both A rollouts right, one B right: P_full 1 > P_partial 0.5, totals [1.5, 1.5, 1, 0].
    Without the bonus: mean 0.75, sd 0.5, advantages [0.5, 0.5, 0.5, -1.5]; with it: mean 1, sd
    sqrt(0.5), advantages [0.707, 0.707, 0, -1.414]; mean absolute change 0.25."""
    from exgrpo_utils.train.rewards import bonus_effect, exgrpo_group_rewards, step_advantages

    base = [1, 1, 1, 0]
    totals, stats = exgrpo_group_rewards(base, ["A", "A", "B", "B"], delta=0.5, nu=1.0)
    assert totals == [1.5, 1.5, 1.0, 0.0]
    assert step_advantages(base, [[0, 1, 2, 3]]) == pytest.approx([0.5, 0.5, 0.5, -1.5], abs=1e-3)
    assert step_advantages(totals, [[0, 1, 2, 3]]) == pytest.approx([0.7071, 0.7071, 0, -1.4142], abs=1e-3)
    effect = bonus_effect(base, totals, [[0, 1, 2, 3]])
    assert effect["changed_groups"] == 1 and effect["mean_abs_change"] == pytest.approx(0.25, abs=1e-3)
    # without dividing by the standard deviation ("none") the P_partial = 0 bonus acts too
    assert bonus_effect([1, 0, 0, 0], [1.5, 0, 0, 0], [[0, 1, 2, 3]], scaling="none")["changed_groups"] == 1
    # per-batch scaling: the bonus in the first group changes the step's standard deviation and so the
    # second group's advantages, but it fired, and acted, in the first group only
    two = [[0, 1, 2, 3], [4, 5, 6, 7]]
    moved = [abs(a - b) for a, b in zip(step_advantages([1.5, 0, 0, 0, 1, 1, 0, 0], two, "batch"),
                                        step_advantages([1, 0, 0, 0, 1, 1, 0, 0], two, "batch"))]
    assert min(moved[4:]) > 1e-3  # the second group's advantages moved ...
    assert bonus_effect([1, 0, 0, 0, 1, 1, 0, 0], [1.5, 0, 0, 0, 1, 1, 0, 0], two, scaling="batch")["changed_groups"] == 1


def test_the_reward_logs_how_often_the_bonus_acted_beside_how_often_it_fired():
    from exgrpo_utils.train.rewards import ExGRPOReward
    from exgrpo_utils.train.settings import ExGRPOSettings

    items = [{"id": q, "item": {"id": q, "dataset": "arith", "question": "?", "answer": "3"}} for q in ("a", "b")]
    reward = ExGRPOReward(items, ExGRPOSettings(delta=0.5, nu=1.0))
    logged = {}
    finals = ["3", "5", "5", "5", "3", "3", "3", "5"]  # a: fires, P_partial 0 (inert); b: fires and acts
    reward([None] * 8, [None] * 8, ["a"] * 4 + ["b"] * 4, log_metric=lambda k, v: logged.__setitem__(k, v),
           scenario=["A", "A", "B", "B"] * 2, final_text=finals)
    assert logged["exgrpo/bonus_fired"] == 1.0 and logged["exgrpo/bonus_effective"] == 0.5
    assert logged["exgrpo/bonus_adv_change"] == pytest.approx(0.125, abs=1e-3)


def test_the_bonus_off_row_keeps_dialogues_and_aux_loss_and_the_scaling_reaches_trl():
    from exgrpo_utils.experiments.methods import METHODS, rl_settings
    from exgrpo_utils.train.exgrpo import grpo_config

    run = ExGRPOSettings(delta=0.5, aux_lambda=0.1)
    off, on = rl_settings(METHODS["exgrpo-nobonus"], run, 1), rl_settings(METHODS["exgrpo"], run, 1)
    assert (off.delta, on.delta) == (0.0, 0.5) and off.mode == on.mode == "exgrpo" and off.aux_lambda == on.aux_lambda == 0.1
    assert off.seed == on.seed == 1
    with pytest.raises(ValueError, match="exgrpo: rl_delta is 0.0.*exgrpo-nobonus"):  # not a no-bonus run under ExGRPO's label
        rl_settings(METHODS["exgrpo"], ExGRPOSettings(delta=0.0), 0)
    assert rl_settings(METHODS["exgrpo-nobonus"], ExGRPOSettings(delta=0.0), 0).delta == 0.0
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        cfg = grpo_config(ExGRPOSettings(scale_rewards="none"), Path(tmp), device="cpu", bf16=False)
    assert cfg.scale_rewards == "none"


def test_with_delta_zero_the_bonus_never_counts_as_fired():
    totals, stats = rewards.exgrpo_group_rewards([1, 0, 0, 0], ["A", "A", "B", "B"], delta=0.0, nu=1.0)
    assert totals == [1.0, 0.0, 0.0, 0.0] and stats["fired"] is False


def test_a_step_of_several_questions_updates_one_question_at_a_time():
    """questions_per_step: one engine run and one optimiser step for the step's questions, TRL's update in
    micro-batches of one question's rows (the memory of one question), accumulated."""
    import tempfile
    from pathlib import Path

    from exgrpo_utils.train.exgrpo import grpo_config

    with tempfile.TemporaryDirectory() as tmp:
        one = grpo_config(ExGRPOSettings(G=4, k=2), Path(tmp), device="cpu", bf16=False)
        four = grpo_config(ExGRPOSettings(G=4, k=2, questions_per_step=4), Path(tmp), device="cpu", bf16=False)
        grpo = grpo_config(ExGRPOSettings(mode="grpo", G=4, k=2, questions_per_step=3), Path(tmp), device="cpu", bf16=False)
    assert (one.per_device_train_batch_size, one.gradient_accumulation_steps, one.steps_per_generation) == (4, 1, 1)
    assert (four.per_device_train_batch_size, four.gradient_accumulation_steps, four.steps_per_generation) == (4, 4, 4)
    assert four.generation_batch_size == 16  # the step's 4 questions x G rolled out together
    assert (grpo.per_device_train_batch_size, grpo.steps_per_generation, grpo.generation_batch_size) == (12, 3, 36)


def test_the_aux_dialogues_of_a_step_are_shared_out_once_over_its_micro_batches():
    from exgrpo_utils.train.exgrpo_trainer import aux_share

    batch = list("abcdefg")  # 7 dialogues over 3 micro-batches: 3, 2, 2
    parts = [aux_share(batch, i, 3) for i in range(3)]
    assert [p for p, _ in parts] == [list("abc"), list("de"), list("fg")]
    assert [w for _, w in parts] == pytest.approx([3 / 7, 2 / 7, 2 / 7]) and sum(w for _, w in parts) == pytest.approx(1)
    assert aux_share(batch, 0, 1) == (batch, 1.0)  # one question per step: the whole batch at weight 1, as before
    assert aux_share(list("ab"), 2, 3) == ([], 0.0)  # fewer dialogues than micro-batches: the last has none


def test_a_micro_batch_is_trimmed_to_its_own_rows_width():
    import torch

    from exgrpo_utils.train.exgrpo_trainer import trim_padding

    inputs = {"prompt_ids": torch.tensor([[0, 0, 5, 6], [0, 0, 0, 7]]), "prompt_mask": torch.tensor([[0, 0, 1, 1], [0, 0, 0, 1]]),
              "completion_ids": torch.tensor([[1, 2, 0, 0, 0], [3, 0, 0, 0, 0]]),
              "completion_mask": torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]]),
              "tool_mask": torch.ones(2, 5), "ref_per_token_logps": torch.arange(10.0).view(2, 5),
              "advantages": torch.tensor([0.5, -0.5]), "num_items_in_batch": torch.tensor(3)}
    out = trim_padding(inputs)
    assert out["prompt_ids"].tolist() == [[5, 6], [0, 7]] and out["prompt_mask"].tolist() == [[1, 1], [0, 1]]
    assert out["completion_ids"].tolist() == [[1, 2], [3, 0]] and out["completion_mask"].tolist() == [[1, 1], [1, 0]]
    assert out["ref_per_token_logps"].tolist() == [[0.0, 1.0], [5.0, 6.0]] and out["tool_mask"].shape == (2, 2)
    assert out["advantages"].tolist() == [0.5, -0.5] and int(out["num_items_in_batch"]) == 3
    full = {k: v for k, v in inputs.items()}
    full["completion_mask"] = torch.ones(2, 5, dtype=torch.long)
    assert trim_padding(full)["completion_ids"].shape == (2, 5)  # nothing to cut


def test_padding_columns_counts_the_all_padding_prompt_and_completion_columns():
    import torch

    from exgrpo_utils.train.exgrpo_trainer import padding_columns

    # [prompt (4) | completion (5)]: 2 leading prompt columns and 3 trailing completion columns are padding in every row
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0, 0, 0, 0]])
    assert padding_columns(mask, 5) == (2, 3)
    assert padding_columns(torch.ones(2, 9, dtype=torch.long), 5) == (0, 0)
    assert padding_columns(torch.tensor([[1, 1, 0, 0]]), 2) == (0, 1)  # no completion token: one column kept


def test_the_log_prob_pass_per_question_equals_trls_pass_over_the_padded_step():
    """The reference pass cut to each question's width gives TRL's log-probs at every real completion
    token (zeros at padding, which the loss masks), on a tiny random Llama."""
    import torch
    from accelerate import Accelerator
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import GRPOTrainer
    from trl.trainer.utils import add_fused_lm_head

    from exgrpo_utils.train.exgrpo_trainer import ExGRPOTrainer

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)).eval()
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))  # as GRPOTrainer does to the policy
    trainer = object.__new__(ExGRPOTrainer)
    trainer.accelerator = Accelerator(cpu=True)
    # two questions of two rows each: question 0 short, question 1 long (the step is padded to question 1)
    prompt_mask = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
    completion_mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]])
    mask = torch.cat([prompt_mask, completion_mask], 1)
    ids = torch.randint(1, 64, mask.shape) * mask
    with torch.no_grad():
        ours, ours_h, _ = ExGRPOTrainer._get_per_token_logps_and_entropies(trainer, model, ids, mask, 4, batch_size=2,
                                                                           compute_entropy=True)
        trl, trl_h, _ = GRPOTrainer._get_per_token_logps_and_entropies(trainer, model, ids, mask, 4, batch_size=2,
                                                                       compute_entropy=True)
    assert ours.shape == trl.shape == ours_h.shape == (4, 4)
    real = completion_mask.bool()
    assert torch.allclose(ours[real], trl[real], atol=1e-5) and torch.allclose(ours_h[real], trl_h[real], atol=1e-5)
    assert not torch.allclose(ours[real], torch.zeros(()))  # real log-probs, not a pass that returned nothing
    assert (ours[:2, 2:] == 0).all()  # question 0's two trailing columns were never computed


def test_each_micro_batch_of_a_step_holds_one_questions_rows_in_order():
    """TRL shuffles a step's rows before splitting them into micro-batches; the kit's trainer splits them
    in order, so micro-batch i is question i's rows (the sampler's order) and is generated once per step."""
    import types

    import torch

    from exgrpo_utils.train.exgrpo_trainer import ExGRPOTrainer

    calls = []

    def generate(batch):
        calls.append(len(batch))
        rows = len(batch)
        return {"prompt_ids": torch.arange(rows).view(rows, 1), "advantages": torch.arange(rows, dtype=torch.float),
                "num_items_in_batch": torch.tensor(rows)}

    trainer = object.__new__(ExGRPOTrainer)
    trainer.model = types.SimpleNamespace(training=True)
    trainer.args = types.SimpleNamespace(steps_per_generation=3)
    trainer.num_iterations, trainer._buffered_inputs = 1, None
    trainer._generate_and_score_completions = generate
    step_rows = [{"question_id": f"q{i // 4}"} for i in range(12)]  # 3 questions of 4 rows, in the sampler's order
    parts = []
    for step in range(3):
        trainer._step = step
        parts.append(ExGRPOTrainer._prepare_inputs(trainer, step_rows))
    assert calls == [12]  # one generation for the step's three micro-batches
    assert [p["prompt_ids"].view(-1).tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert all(int(p["num_items_in_batch"]) == 12 for p in parts)


def test_a_step_whose_micro_batch_would_mix_questions_is_refused():
    import pytest

    from exgrpo_utils.train.exgrpo_trainer import check_question_blocks

    check_question_blocks(["a"] * 4 + ["b"] * 4, 4)
    with pytest.raises(ValueError, match=r"rows 0-3 of this step hold questions \['a', 'b'\]"):
        check_question_blocks(["a", "a", "b", "b", "b", "b", "a", "a"], 4)
