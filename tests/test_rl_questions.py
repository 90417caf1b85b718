"""RL on a seeded subset of the questions, each visited several times (``rl_questions``, issue 26's
cpu-rl preset), and the compatibility rule that keeps outputs made before the setting existed current."""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from exgrpo_utils import config, runner
from exgrpo_utils.experiments import methods
from exgrpo_utils.infra.settings import build, result_fields
from exgrpo_utils.teach.rules import load_rules
from exgrpo_utils.train import rl_data
from exgrpo_utils.train.settings import ExGRPOSettings

ROOT = Path(__file__).resolve().parents[1]
QUIET = dict(log=lambda *_: None)


def _records(n=12, reveal_only=()):
    """n questions with two probes each; the questions in ``reveal_only`` have one probe, which states
    the answer (so ``revealing_probes=exclude`` leaves them without a probe)."""
    recs = []
    for i in range(n):
        item = {"id": f"q{i}", "dataset": "arith", "question": f"Mia has {i + 2} apples. She gets 3 more. How many?",
                "answer": str(i + 5), "choices": [], "rationale": None, "meta": None}
        probes = ([{"rule": "r0", "probe": f"Why does Mia end with {i + 5}?"}] if i in reveal_only else
                  [{"rule": f"r{j}", "probe": f"What is step {j}?"} for j in (1, 2)])
        probes = [dict(p, teacher_response="t. The answer is 1.", teacher_answer="1", answer_type="number") for p in probes]
        recs.append({"id": f"q{i}", "dataset": "arith", "item": item, "teacher_cot": "cot", "probes": probes})
    return recs


def _ids(recs):
    return [r["id"] for r in recs]


def test_drawn_order_is_the_seeded_hash_order_whatever_the_input_order():
    recs = _records()
    want = sorted(_ids(recs), key=lambda q: hashlib.sha256(f"rl-questions:3:{q}".encode()).hexdigest())
    assert _ids(rl_data.drawn_order(recs, 3)) == want
    assert _ids(rl_data.drawn_order(list(reversed(recs)), 3)) == want
    assert _ids(rl_data.drawn_order(recs, 4)) != want


def test_rl_questions_keeps_the_first_drawn_questions_in_the_records_order():
    recs = _records()
    said = []
    kept = rl_data.rl_records(recs, ExGRPOSettings(questions=5, seed=3), log=said.append)
    first5 = set(_ids(rl_data.drawn_order(recs, 3))[:5])
    assert _ids(kept) == [q for q in _ids(recs) if q in first5]  # the draw, in the records' own order
    assert said == ["RL data: 5 of 12 questions drawn (rl_questions 5, seed 3)"]
    assert _ids(rl_data.rl_records(recs, ExGRPOSettings(), **QUIET)) == _ids(recs)  # 0: every question
    assert _ids(rl_data.rl_records(recs, ExGRPOSettings(questions=50), **QUIET)) == _ids(recs)


def test_every_rl_method_and_both_probe_policies_draw_the_same_questions_at_a_seed():
    recs = _records()
    run = ExGRPOSettings(questions=4, seed=2, k=2)
    drawn = {key: _ids(rl_data.rl_records(recs, methods.rl_settings(methods.METHODS[key], run, 2), **QUIET))
             for key in ("exgrpo", "exgrpo-nobonus", "sft-grpo", "exgrpo-revealing", "exgrpo-norevealing")}
    assert len(set(map(tuple, drawn.values()))) == 1, drawn
    other = _ids(rl_data.rl_records(recs, methods.rl_settings(methods.METHODS["exgrpo"], run, 1), **QUIET))
    assert other != drawn["exgrpo"]  # another seed, another draw (the seed-level interval covers it)


def test_a_drawn_question_left_without_a_probe_is_replaced_by_the_next_in_the_draw():
    order = _ids(rl_data.drawn_order(_records(), 0))
    recs = _records(reveal_only={int(order[1][1:])})  # the second question drawn has only a revealing probe
    said = []
    excluded = rl_data.rl_records(recs, ExGRPOSettings(questions=3, seed=0, revealing_probes="exclude"), log=said.append)
    allowed = rl_data.rl_records(recs, ExGRPOSettings(questions=3, seed=0, revealing_probes="allow"), **QUIET)
    assert set(_ids(allowed)) == set(order[:3])
    assert set(_ids(excluded)) == {order[0], order[2], order[3]}
    assert "1 of 4 questions have no probe left" in said[0]


def test_rl_questions_refuses_a_count_that_passes_cannot_cover_evenly():
    with pytest.raises(ValueError, match="questions must be 0"):
        rl_data.rl_records(_records(), ExGRPOSettings(questions=-1))
    with pytest.raises(ValueError, match=r"multiple of questions_per_step \(4\).*got 6"):
        rl_data.rl_records(_records(), ExGRPOSettings(questions=6, questions_per_step=4))
    said = []  # fewer questions keep a probe than were asked for: said, since visits are then uneven
    assert len(rl_data.rl_records(_records(n=3), ExGRPOSettings(questions=4, questions_per_step=2), log=said.append)) == 3
    assert "only 3 keep a probe" in said[-1]


def test_rl_questions_is_refused_for_rl_after_a_fraction_of_the_data():
    """Figure 4's RL points train on their warm-up's share of the questions; a fixed draw would make
    every fraction train on as many."""
    run = ExGRPOSettings(questions=16)
    with pytest.raises(ValueError, match="exgrpo-p0.1: rl_questions 16"):
        methods.rl_settings(methods.METHODS["exgrpo-p0.1"], run, 0)
    assert methods.rl_settings(methods.METHODS["exgrpo"], run, 0).questions == 16
    assert methods.rl_settings(methods.METHODS["cold-grpo"], run, 0).questions == 16


def test_the_cpu_rl_plan_visits_each_drawn_question_exactly_twice():
    """configs/cpu-rl.yaml: 16 questions, 4 per step, 8 steps: the sampler's first 8 steps (two passes)
    hold every drawn question twice, G rows each time, in both modes."""
    values = config.resolve(config.load_preset("cpu-rl"), run_name="cpu-rl")
    run = build(ExGRPOSettings, values)
    assert (run.questions, run.questions_per_step, run.max_steps, run.G) == (16, 4, 8, 4)
    recs = _records(n=64)
    for key in ("exgrpo", "sft-grpo"):
        s = methods.rl_settings(methods.METHODS[key], run, 0)
        rows = rl_data.training_rows(rl_data.rl_records(recs, s, **QUIET), load_rules(), s)
        sampler = rl_data.QuestionBlockSampler(rl_data.question_blocks([r["question_id"] for r in rows]), G=s.G,
                                              questions=s.questions_per_step, seed=s.seed)
        per_step = s.G * s.questions_per_step * rl_data.rows_per_question(s)
        # two passes, as the trainer's dataloader runs them (it also repeats each generation batch
        # questions_per_step times, repeat=..., which adds no question)
        idx = [i for _ in range(2) for i in sampler]
        visits = Counter()
        for step in range(s.max_steps):
            chunk = [rows[i]["question_id"] for i in idx[step * per_step:(step + 1) * per_step]]
            visits.update(set(chunk))
        assert len(visits) == 16 and set(visits.values()) == {2}, (key, visits)


def test_an_added_setting_at_its_default_leaves_fingerprints_and_done_records_as_they_were():
    """``rl_questions`` came after the committed runs: at 0 (every question, the earlier behaviour) it
    is not part of a training's fingerprint nor a reason to rerun a notebook; at any other value it is."""
    assert "questions" not in result_fields(ExGRPOSettings())
    assert result_fields(ExGRPOSettings(questions=16))["questions"] == 16
    stamped = json.loads((ROOT / "results/runs/cpu/train/exgrpo/fingerprint.json").read_text())["inputs"]["settings"]
    values = config.resolve(config.load_preset("cpu"), run_name="cpu")
    now = build(ExGRPOSettings, values)
    assert result_fields(replace(now, seed=0)) == stamped  # the committed ExGRPO run is still current
    before = {"rl_k": 2}
    assert runner._why_rerun({"parameters": before, "inputs": {}}, {**before, "rl_questions": 0}, {}) is None
    assert "rl_questions" in runner._why_rerun({"parameters": before, "inputs": {}}, {**before, "rl_questions": 16}, {})
    assert config.new_at_default(before, {**before, "rl_questions": 0, "rl_G": 4}) == {**before, "rl_G": 4}
