"""Baseline data, the experiment plan, seed statistics, the paper tables and the figure functions."""
import json
import math
from dataclasses import replace

import pandas as pd
import pytest

from exgrpo_utils.data import answers, synthetic
from exgrpo_utils.data.datasets import Example
from exgrpo_utils.evaluate import stats
from exgrpo_utils.experiments import baselines, methods, records, runs
from exgrpo_utils.infra.layout import RunLayout, run_id
from exgrpo_utils.report import figure4, paper_tables, plotting
from exgrpo_utils.teach import baseline_data
from exgrpo_utils.teach.settings import TeacherSettings

PROGRAM = TeacherSettings(teacher="program", teacher_model="")


def _arith_items(n=6):
    return synthetic.load("arith", "train", n_train=n)


def _baseline_records(tmp_path, n=6):
    items = _arith_items(n)
    cots = [synthetic.forward_rationale(synthetic.Program(e.meta["name"], e.meta["item"], e.meta["start"],
                                                          tuple((s["op"], s["operand"]) for s in e.meta["steps"]))) for e in items]
    return items, baseline_data.build_baseline_data(items, cots, baseline_data.ProgramAugmenter(), tmp_path / "bl.jsonl")


def test_program_augmentations_are_exact(tmp_path):
    items, recs = _baseline_records(tmp_path)
    for ex, rec in zip(items, recs):
        assert answers.is_correct(ex, rec["alt_cot"])  # a second, differently worded correct solution
        assert rec["alt_cot"] != rec["teacher_cot"]
        rq = Example("r", "arith", rec["rephrased"]["question"], ex.answer)
        assert rq.question != ex.question and answers.is_correct(rq, rec["rephrased"]["cot"])
        new = rec["new_question"]
        assert new["question"] != ex.question and answers.is_correct(Example("n", "arith", new["question"], new["answer"]), new["cot"])
        # RevThink's backward question asks for the start; its reasoning ends there
        assert str(ex.meta["start"]) == answers.extract(Example("b", "arith_rev", "", ""), rec["backward"]["cot"], "flexible")
        assert f"Now {ex.meta['pronoun']} has {ex.answer} " in rec["backward"]["question"]
        assert rec["dropped"] == {}  # the exact teacher passes every check
    assert len(baseline_data.load_baseline_data(tmp_path / "bl.jsonl")) == len(items)


def test_question_aug_never_uses_test_programs(tmp_path):
    _, recs = _baseline_records(tmp_path, n=40)
    test_questions = {e.question for e in synthetic.load("arith", "test")}
    assert not {r["new_question"]["question"] for r in recs} & test_questions


def test_baseline_rows_per_method(tmp_path):
    items, recs = _baseline_records(tmp_path, n=4)
    per_item = {"skd": 1, "dss": 2, "rephrase": 2, "question_aug": 2, "answer_aug": 2, "revthink": 3, "divide_conquer": 1}
    for b, k in per_item.items():
        rows = baselines.baseline_rows(recs, b)
        assert len(rows) == k * len(items), b
        assert all(r["completion"][0]["role"] == "assistant" and r["question_id"] for r in rows)
    dss = baselines.baseline_rows(recs, "dss")
    label, rationale = dss[0]["completion"][0]["content"], dss[1]["completion"][0]["content"]
    assert label == f"The answer is {items[0].answer}." and "The answer is" not in rationale
    rev = baselines.baseline_rows(recs, "revthink")
    assert [r["source"] for r in rev[:3]] == ["original", "backward_question", "backward_reasoning"]
    with pytest.raises(ValueError, match="unknown baseline"):
        baselines.baseline_rows(recs, "nope")


def test_a_baseline_that_fell_back_to_skds_rows_says_so_in_its_tables_note(tmp_path):
    items, recs = _baseline_records(tmp_path, n=4)
    assert baselines.fallback_note(recs, "revthink") == "" and baselines.fallback_note(recs, "skd") == ""
    none = [{**r, "backward": None} for r in recs]
    assert baselines.baseline_rows(none, "revthink") == baselines.baseline_rows(recs, "skd")  # what the note says
    assert baselines.fallback_note(none, "revthink") == "no item kept its backward: trained on exactly SKD's rows"
    some = [{**r, "decomposition": None} if i < 3 else r for i, r in enumerate(recs)]
    assert baselines.fallback_note(some, "divide_conquer") == "3 of 4 items kept no decomposition: SKD's rows for them"
    assert baselines.fallback_note(none, "dss") == ""  # its rows never come from SKD's
    df = pd.DataFrame([{"key": "revthink", "train_dataset": t, "data_note": n} for t, n in
                       (("strategyqa", "no item kept its backward: trained on exactly SKD's rows"), ("arith", ""),
                        ("strategyqa", "no item kept its backward: trained on exactly SKD's rows"))])
    assert records.data_notes(df, "revthink") == ["strategyqa: no item kept its backward: trained on exactly SKD's rows"]
    assert records.data_notes(df, "skd") == [] and records.data_notes(df.drop(columns="data_note"), "revthink") == []


def test_the_baselines_train_on_the_questions_ei_kept(tmp_path):
    items, _ = _baseline_records(tmp_path, n=4)
    ei = tmp_path / "ei_records.jsonl"
    lines = [{"id": e.id, "item": e.to_dict(), "teacher_cot": "x\nThe answer is " + e.answer + ".", "teacher_correct": True,
              "kept": i in (0, 2)} for i, e in enumerate(items)]  # Eq. 2 dropped items 1 and 3
    ei.write_text("".join(json.dumps(line) + "\n" for line in lines))
    same = baseline_data.prepare_baseline_data(ei, tmp_path / "a" / "baseline_data.jsonl", teacher=PROGRAM)
    assert [r["id"] for r in same] == [items[0].id, items[2].id]
    every = baseline_data.prepare_baseline_data(ei, tmp_path / "b" / "baseline_data.jsonl", teacher=PROGRAM,
                                                same_questions=False)
    assert [r["id"] for r in every] == [e.id for e in items]
    ei.write_text("".join(json.dumps({**line, "kept": False}) + "\n" for line in lines))  # EI kept none
    out = tmp_path / "c" / "baseline_data.jsonl"
    assert baseline_data.prepare_baseline_data(ei, out, teacher=PROGRAM) == [] and out.read_text() == ""


def test_rationale_strips_only_the_answer_sentence():
    assert baselines.rationale_of("a = 1.\nb = 2.\nThe answer is 2.") == "a = 1.\nb = 2."
    assert baselines.rationale_of("The answer is 3.") == "The answer is 3."  # nothing else to keep


def test_prepare_baseline_data_reads_ei_records_and_reuses(tmp_path):
    items, _ = _baseline_records(tmp_path, n=3)
    ei = tmp_path / "ei_records.jsonl"
    lines = [{"id": e.id, "item": e.to_dict(), "teacher_cot": "x\nThe answer is " + e.answer + ".", "teacher_correct": i != 1}
             for i, e in enumerate(items)]
    ei.write_text("".join(json.dumps(l) + "\n" for l in lines))
    out = tmp_path / "bl" / "baseline_data.jsonl"
    recs = baseline_data.prepare_baseline_data(ei, out, teacher=PROGRAM)
    assert [r["id"] for r in recs] == [items[0].id, items[2].id]  # wrong teacher CoT left out
    mtime = out.stat().st_mtime_ns
    baseline_data.prepare_baseline_data(ei, out, teacher=PROGRAM)
    assert out.stat().st_mtime_ns == mtime  # reused, not rewritten
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl: line 1"):
        baseline_data.prepare_baseline_data(bad, tmp_path / "o.jsonl", teacher=PROGRAM)


def test_expand_puts_dependencies_first_and_rejects_unknown():
    order = methods.expand(keys=["exgrpo-p0.1", "sft-grpo"])
    assert order == ["sft-p0.1", "exgrpo-p0.1", "sft", "sft-grpo"]
    assert methods.expand(["core"]) == ["zero-shot", "sft", "sft-grpo", "exgrpo"]
    with pytest.raises(ValueError, match="unknown group"):
        methods.expand(["nope"])
    with pytest.raises(ValueError, match="unknown method"):
        methods.expand(keys=["nope"])


def test_plan_seed0_first_then_other_seeds():
    p = methods.plan(["core"], [0, 1, 2], ["table4"])
    ids = [run_id(k, s) for k, s in p]
    assert ids[:4] == ["zero-shot", "sft", "sft-grpo", "exgrpo"]
    assert "zero-shot-s1" not in ids and "sft-rule-counterfactual-s1" not in ids  # greedy zero-shot once; table4 seed 0 only
    assert ids.index("sft-s1") < ids.index("exgrpo-s1")  # warm-up before the run that starts from it
    assert len(ids) == len(set(ids))
    # a later part run from seed 1 on keeps the seed-free zero-shot record: it is not scored again as seed 1
    later = [run_id(k, s) for k, s in methods.plan(["core"], [1, 2])]
    assert later[:4] == ["zero-shot", "sft-s1", "sft-grpo-s1", "exgrpo-s1"] and "zero-shot-s1" not in later
    with pytest.raises(ValueError):
        methods.plan(["core"], [])


def test_method_table_matches_the_paper_rows():
    m = methods.METHODS
    assert (m["cold-grpo"].init, m["cold-grpo"].mode, m["cold-grpo"].aux) == ("base", "grpo", False)
    assert (m["cold-grpo-aux"].init, m["cold-grpo-aux"].aux) == ("base", True)
    assert (m["sft-grpo"].init, m["sft-grpo"].mode, m["sft-grpo"].aux) == ("sft", "grpo", False)
    assert (m["exgrpo"].init, m["exgrpo"].mode, m["exgrpo"].aux) == ("sft", "exgrpo", True)
    assert m["sft-rule-counterfactual"].rules == ("counterfactual",)
    assert m["exgrpo-p0.25"].init == "sft-p0.25" and m["sft-p0.25"].fraction == 0.25


def test_seed_interval_hand_computed():
    mean, lo, hi = stats.seed_interval([10.0, 20.0, 30.0])
    half = 4.302653 * 10.0 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert (mean, lo, hi) == (20.0, pytest.approx(20 - half), pytest.approx(20 + half))
    mean, lo, hi = stats.seed_interval([5.0])
    assert mean == 5.0 and math.isnan(lo) and math.isnan(hi)
    assert math.isnan(stats.seed_interval([])[0])


def test_opd_is_skipped_with_a_reason_unless_a_local_teacher_is_given():
    for teacher in ("program", "openai", "vllm"):
        ok, reason = methods.opd_status(teacher)
        assert not ok and reason.startswith("skipped:") and "tokenizer" in reason
    assert methods.opd_status("openai", "gemini-1.5-pro")[0] is False  # text only, whatever the model
    assert methods.opd_status("vllm", "Qwen/Qwen2.5-72B-Instruct") == (True, "")


def test_training_cost_adds_the_warm_up():
    done = {"sft": {"train_tokens": 100, "seconds": 10}, "exgrpo": {"train_tokens": 50, "seconds": 20},
            "cold-grpo": {"train_tokens": 7, "seconds": 1}}
    assert runs.training_cost("exgrpo", 0, done) == (150, 30.0)
    assert runs.training_cost("cold-grpo", 0, done) == (7, 1.0)


def _records(tmp_path):
    """A run with records: sft and exgrpo over 3 seeds, rephrase once, opd skipped."""
    layout = RunLayout.of("run", tmp_path)
    run = layout.root
    rows = {("sft", 0): 40.0, ("sft", 1): 50.0, ("sft", 2): 60.0, ("exgrpo", 0): 50.0, ("exgrpo", 1): 60.0,
            ("exgrpo", 2): 70.0, ("rephrase", 0): 30.0, ("sft-p0.1", 0): 10.0, ("exgrpo-p0.1", 0): 20.0}
    for (key, seed), acc in rows.items():
        rid = run_id(key, seed)
        rec = {"run_id": rid, "key": key, "label": methods.METHODS[key].label, "kind": methods.METHODS[key].kind,
               "seed": seed, "train_dataset": "arith", "status": "ok", "reason": "", "train_tokens": 1000 * (1 + seed),
               "train_seconds": 1.0,
               "accuracy": {"arith": acc, "arith_rev": acc / 2}, "n": {"arith": 50, "arith_rev": 50},
               "correct": {"arith": int(acc / 2), "arith_rev": int(acc / 4)}}
        (run / "experiments").mkdir(parents=True, exist_ok=True)
        (run / "experiments" / f"{rid}.json").write_text(json.dumps(rec))
    skipped = {"run_id": "opd", "key": "opd", "label": "On-Policy Distillation", "kind": "opd", "seed": 0,
               "train_dataset": "arith", "status": "skipped",
               "reason": "skipped: no teacher", "train_tokens": 0, "train_seconds": 0.0, "accuracy": {}, "n": {}, "correct": {}}
    (run / "experiments" / "opd.json").write_text(json.dumps(skipped))
    return layout


def test_tables_put_ours_beside_the_paper(tmp_path):
    from exgrpo_utils.report import paper_layout

    df = paper_tables.load_records([_records(tmp_path)])
    paper = paper_layout.paper_results()
    t3 = paper_tables.build_table("table3", df, paper).set_index("method")
    half = 4.303 * 10.0 / math.sqrt(3)
    assert t3.loc["SFT (EI, all rules)", "ours: arith (held-in)"] == f"50.0 [{50 - half:.1f}, {50 + half:.1f}] (n=3)"
    assert t3.loc["ExGRPO (SFT + ExGRPO + aux SFT)", "paper: Qwen2.5-7B-Instruct (held-in-avg8)"] == "82.54"
    assert t3.loc["RL cold start (R_base)", "paper: Gemma-7B-it (held-in-avg8)"] == "12.34"
    assert t3.loc["RL cold start (R_base)", "ours: arith (held-in)"] == "–"
    assert t3.loc["RL cold start (R_base)", "note"] == "not run in these results"
    t4 = paper_tables.build_table("table4", df, paper).set_index("method")
    lo, hi = (100 * x for x in stats.wilson_interval(15, 50))
    assert t4.loc["Rephrase Question", "ours: arith (held-in)"] == f"30.0 [{lo:.1f}, {hi:.1f}]"  # one seed: Wilson
    assert t4.loc["Rephrase Question", "paper: Qwen2.5-7B-Instruct (held-in-avg8)"] == "78.88"
    t1 = paper_tables.build_table("table1", df, paper).set_index("method")
    assert t1.loc["On-Policy Distillation", "note"] == "skipped: no teacher"
    assert t1.loc["On-Policy Distillation", "paper: Gemma-7B-it (held-in-avg8)"] == "65.40"
    paths = paper_tables.write_tables(df, paper, tmp_path / "paper")
    assert all(p.exists() and p.with_suffix(".csv").exists() for p in paths.values())


def test_figure_data_and_plots(tmp_path):
    df = paper_tables.load_records([_records(tmp_path)])
    f4 = figure4.fraction_points(df)
    assert set(f4["p"]) == {0.1, 1.0} and f4["questions"].isna().all() and figure4.notes(f4) == []  # no summaries
    assert f4[(f4["method"] == "ExGRPO") & (f4["p"] == 1.0)]["mean"].iloc[0] == 60.0
    f5 = paper_tables.token_points(df)
    assert f5.set_index("key").loc["sft", "train_tokens"] == 2000.0  # mean over seeds of 1000, 2000, 3000
    curves = pd.DataFrame({"run_id": ["exgrpo"] * 3, "step": [1, 2, 3], "r_base": [0.1, 0.2, 0.3], "r_dsu": [0, 0.05, 0.1]})
    for name, fig in (("f3", plotting.figure3_rewards(curves)), ("f4", plotting.figure4_fraction(f4)),
                      ("f5", plotting.figure5_tokens(f5))):
        png, pdf = plotting.save(fig, tmp_path / name)
        assert png.stat().st_size > 1000 and pdf.stat().st_size > 1000


def test_figure5_labels_its_token_axis_within_one_decade():
    """cpu-rl's methods lie between 106k and 250k tokens, inside one decade, where matplotlib's log axis
    would label no tick at all."""
    points = pd.DataFrame({"key": ["sft", "exgrpo"], "label": ["SFT", "ExGRPO"], "kind": ["sft", "rl"],
                           "train_tokens": [106_001.0, 224_997.0], "mean": [58.0, 56.6], "low": [51.0, 49.7],
                           "high": [64.6, 63.3], "seeds": [4, 4]})
    fig = plotting.figure5_tokens(points)
    fig.canvas.draw()
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    shown = [t.get_text() for t, x in zip(ax.get_xticklabels(), ax.get_xticks()) if lo <= x <= hi and t.get_text()]
    assert {"150k", "200k"} <= set(shown), shown
    assert plotting._fmt_tokens(2e6) == "2M" and plotting._fmt_tokens(800) == "800"


def test_figure3_draws_each_seed_and_the_seeds_mean_as_a_running_mean():
    """Two seeds' R_base [0, 1, 0, 1] and [1, 1, 0, 0]: the mean per step [0.5, 1, 0, 0.5], its running
    mean over the last 3 steps [0.5, 0.75, 0.5, 0.5] (by hand); smooth=1 draws the plain mean."""
    curves = pd.DataFrame({"run_id": ["exgrpo"] * 4 + ["exgrpo-s1"] * 4, "step": [1, 2, 3, 4] * 2,
                           "r_base": [0, 1, 0, 1, 1, 1, 0, 0], "r_dsu": [0.0] * 8})

    def lines(fig):
        return {ln.get_label(): list(ln.get_ydata()) for ln in fig.axes[0].get_lines()}

    drawn = lines(plotting.figure3_rewards(curves))
    assert drawn["exgrpo"] == [0, 1, 0, 1] and drawn["exgrpo-s1"] == [1, 1, 0, 0]
    assert drawn["mean over seeds, running mean of 3 steps"] == pytest.approx([0.5, 0.75, 0.5, 0.5])
    assert lines(plotting.figure3_rewards(curves, smooth=1))["mean over seeds"] == pytest.approx([0.5, 1, 0, 0.5])


def test_figure4_says_which_fractions_drew_the_same_questions(tmp_path):
    layout = _records(tmp_path)

    def kept(rid, q):
        folder = layout.train_root / rid
        folder.mkdir(parents=True, exist_ok=True)
        name = "sft_summary.json" if rid.startswith("sft") else "rl_summary.json"
        (folder / name).write_text(json.dumps({"questions": q}))

    for rid, q in {"sft": 2, "exgrpo": 2, "sft-s1": 2, "exgrpo-s1": 2, "sft-s2": 2, "exgrpo-s2": 2, "sft-p0.1": 1,
                   "exgrpo-p0.1": 1}.items():
        kept(rid, q)
    df = paper_tables.load_records([layout])
    f4 = figure4.fraction_points(df, [layout]).set_index(["method", "p"])
    assert f4.loc[("SFT", 0.1), "questions"] == 1 and f4.loc[("ExGRPO", 1.0), "questions"] == 2
    assert f4.loc[("SFT", 1.0), "drawn"] == (("arith", 0, 2), ("arith", 1, 2), ("arith", 2, 2))
    assert figure4.notes(f4.reset_index()) == []  # 1 question drawn at p = 0.1 against 2 at p = 1
    # seed 0 alone, p = 0.1 drawing both questions: the same inputs as p = 1. ExGRPO at p = 0.1 trained on
    # 1 (RL left one out) but drew 2, as its warm-up says: the same inputs too
    kept("sft-p0.1", 2)
    one = df[~((df["key"].isin(["sft", "exgrpo"])) & (df["seed"] > 0))]
    points = figure4.fraction_points(one, [layout])
    assert list(points["questions"]) == [1, 2, 2, 2]  # ExGRPO 0.1, 1; SFT 0.1, 1
    notes = figure4.notes(points)
    assert notes == [f"{m}, arith s0: p = 0.1, 1 drew the same 2 question(s): identical training inputs" if i % 2 == 0
                     else f"{m}: so the points at p = 0.1, 1 coincide by construction"
                     for m in ("ExGRPO", "SFT") for i in range(2)]
    # a missing summary: no claim; a point whose training did not run is named with its reason
    (layout.train_root / "sft-p0.1" / "sft_summary.json").unlink()
    assert [n for n in figure4.notes(figure4.fraction_points(one, [layout])) if "p = 0.1" in n] == []
    skipped = {**df.iloc[0].to_dict(), "run_id": "exgrpo-p0.25", "key": "exgrpo-p0.25", "status": "skipped",
               "reason": "skipped: no training rows", "eval": "", "dataset": ""}
    with_skip = pd.concat([one, pd.DataFrame([skipped])], ignore_index=True)
    assert figure4.notes(figure4.fraction_points(with_skip, [layout]), with_skip)[0] == \
        "ExGRPO: no point at p = 0.25: arith s0: skipped: no training rows"
    fig = plotting.figure4_fraction(points, notes)
    png, _ = plotting.save(fig, tmp_path / "f4")
    assert png.stat().st_size > 1000


def test_reward_curves_read_train_logs(tmp_path):
    layout = RunLayout.of("run", tmp_path)
    run = layout.root
    for rid in ("exgrpo", "exgrpo-s1", "sft"):
        d = run / "train" / rid
        d.mkdir(parents=True)
        lines = [{"step": s, "loss": 0.1, "exgrpo/r_base": 0.25 * s, "exgrpo/r_dsu": 0.0} for s in (1, 2)] if rid != "sft" else [{"step": 1, "loss": 1.0}]
        (d / "train_log.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    curves = paper_tables.reward_curves([layout])
    assert sorted(curves["run_id"].unique()) == ["exgrpo", "exgrpo-s1"] and len(curves) == 4


def test_table3_gives_each_probe_policy_its_leak_rate(tmp_path):
    """Hand-computed: G = 4 gives 2 Scenario A and 2 B dialogues per question-visit; two steps of 2
    visits each log 1 + 2 revealing A dialogues and 0 + 1 B: 3 of 8 A (37.5%), 1 of 8 B (12.5%)."""
    from exgrpo_utils.report import leaks, paper_layout

    layout = _records(tmp_path)
    seeds = {"exgrpo": (0, 1, 2), "exgrpo-revealing": (0,)}
    for key, ss in seeds.items():
        for seed in ss:
            rid, d = run_id(key, seed), layout.root / "train" / run_id(key, seed)
            d.mkdir(parents=True)
            reveal = [(1, 0), (2, 1)] if key == "exgrpo-revealing" else [(0, 0), (0, 0)]
            log = [{"step": i + 1, "exgrpo/revealing_dialogues_A": a, "exgrpo/revealing_dialogues_B": b}
                   for i, (a, b) in enumerate(reveal)]
            (d / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
            (d / "rl_summary.json").write_text(json.dumps({"settings": {"mode": "exgrpo", "G": 4}, "question_visits": 4}))
            if key == "exgrpo-revealing":
                rec = json.loads((layout.root / "experiments" / "exgrpo.json").read_text())
                rec.update(run_id=rid, key=key, label=methods.METHODS[key].label)
                (layout.root / "experiments" / f"{rid}.json").write_text(json.dumps(rec))
    assert leaks.run_leaks([{"step": 1, "loss": 1.0}], {"settings": {"mode": "exgrpo", "G": 4}}) is None
    df = paper_tables.load_records([layout])
    assert df.attrs["leak_rates"]["exgrpo-revealing"] == {"A": 3, "A_of": 8, "B": 1, "B_of": 8, "runs": 1}
    t3 = paper_tables.build_table("table3", df, paper_layout.paper_results()).set_index("method")
    col = f"ours: {leaks.COLUMN}"
    assert t3.loc["ExGRPO, answer-revealing probes allowed", col] == "37.5% (3 of 8); 12.5% (1 of 8), 1 run"
    assert t3.loc["ExGRPO (SFT + ExGRPO + aux SFT)", col] == "0.0% (0 of 24); 0.0% (0 of 24), 3 runs"
    assert t3.loc["SFT (EI, all rules)", col] == "–"
    # G = 5: 3 A and 2 B dialogues per visit; a run made before visits were logged counts nothing
    odd = {"settings": {"mode": "exgrpo", "G": 5}, "question_visits": 4}
    assert leaks.run_leaks(log, odd) == {"A": 3, "A_of": 12, "B": 1, "B_of": 8}
    assert leaks.run_leaks(log, {"settings": {"mode": "exgrpo", "G": 4}}) is None
    # two processes: the log holds the main process's counts, so its visits (2 of the step's 4) count
    visits = tmp_path / "question_visits.jsonl"
    visits.write_text("".join(json.dumps({"step": s, "questions": [["a"], ["b"]]}) + "\n" for s in (1, 2)))
    assert leaks.main_process_visits(visits) == 2 and leaks.main_process_visits(tmp_path / "none.jsonl") is None
    # the other policy's row, skipped as the run's own ExGRPO training: its comparison says so
    twin = {"run_id": "exgrpo-norevealing", "key": "exgrpo-norevealing", "label": "x", "kind": "rl", "seed": 0,
            "train_dataset": "arith", "status": "skipped", "reason": "skipped: the same training as ExGRPO's row",
            "train_tokens": 0, "train_seconds": 0.0, "accuracy": {}, "n": {}, "correct": {}}
    (layout.root / "experiments" / "exgrpo-norevealing.json").write_text(json.dumps(twin))
    cmp = paper_tables.paired_comparisons([layout], pairs=(("exgrpo", "exgrpo-norevealing"),))
    assert set(cmp["verdict"]) == {"ExGRPO, answer-revealing probes left out: skipped: the same training as ExGRPO's row"}


def test_records_need_a_run():
    with pytest.raises(FileNotFoundError, match="notebook 05"):
        paper_tables.load_records([RunLayout.of("run", "/nonexistent")])


def test_single_seed_average_gets_the_interval_of_a_mean(tmp_path):
    from exgrpo_utils.data.datasets import HELD_IN

    layout = RunLayout.of("run", tmp_path)
    run = layout.root
    (run / "experiments").mkdir(parents=True)
    correct = {name: i % 4 for i, name in enumerate(HELD_IN)}
    acc = {name: 10.0 * k for name, k in correct.items()}
    suite = {"accuracy": {**acc, "held-in-avg8": sum(acc.values()) / len(HELD_IN)}, "n": {k: 10 for k in acc}, "correct": correct}
    rec = {"run_id": "sft", "key": "sft", "label": "SFT", "kind": "sft", "seed": 0, "train_dataset": "arith", "status": "ok",
           "reason": "", "train_tokens": 1, "train_seconds": 1.0, "accuracy": {"arith": 5.0}, "n": {"arith": 20},
           "correct": {"arith": 1}, "suite": suite}
    (run / "experiments" / "sft.json").write_text(json.dumps(rec))
    df = paper_tables.load_records([layout])
    s = paper_tables.cell_stats(df, "sft", HELD_IN, "suite")
    lo, hi = stats.mean_interval(list(correct.values()), [10] * 8)
    assert (s["mean"], s["low"], s["high"], s["seeds"]) == (pytest.approx(15.0), pytest.approx(100 * lo), pytest.approx(100 * hi), 1)
    assert paper_tables.cell_stats(df, "sft", "gsm8k")["seeds"] == 0  # the suite's scores are not per-task cells
    cols = paper_tables.table_columns("table1", df)
    assert [c.title for c in cols] == ["arith (held-in)", "suite, one arith model: held-in avg8"]


def test_seeds_that_agree_keep_the_item_level_interval(tmp_path):
    from exgrpo_utils.evaluate import evaluation

    layout = RunLayout.of("run", tmp_path)
    run = layout.root
    (run / "experiments").mkdir(parents=True)
    for seed, k in ((0, 0), (1, 0), (2, 0)):  # three seeds at 0/50: the t-interval alone is [0, 0]
        rid = "sft" if seed == 0 else f"sft-s{seed}"
        rec = {"run_id": rid, "key": "sft", "label": "SFT", "kind": "sft", "seed": seed, "train_dataset": "arith",
               "status": "ok", "reason": "",
               "train_tokens": 1, "train_seconds": 1.0, "accuracy": {"arith": 0.0, "arith_rev": 2.0 * seed},
               "n": {"arith": 50, "arith_rev": 500}, "correct": {"arith": k, "arith_rev": 10 * seed}}
        (run / "experiments" / f"{rid}.json").write_text(json.dumps(rec))
    df = paper_tables.load_records([layout])
    s = paper_tables.cell_stats(df, "sft", "arith")
    lo, hi = evaluation.wilson_interval(0, 50)  # the 50 items once: three seeds are not 150 independent items
    assert (s["mean"], s["seeds"]) == (0.0, 3) and s["low"] == pytest.approx(100 * lo) and s["high"] == pytest.approx(100 * hi)
    # seeds that disagree: 0, 2, 4 % of 500 items -> t-interval 2 +- 4.303 * 2 / sqrt(3) = [-2.97, 6.97], wider
    # than one model's Wilson interval at 10 of 500 ([1.1, 3.6]); the low end is cut at 0 (an accuracy)
    s = paper_tables.cell_stats(df, "sft", "arith_rev")
    assert s["mean"] == pytest.approx(2.0) and s["low"] == 0.0
    assert s["high"] == pytest.approx(2 + 4.303 * 2 / math.sqrt(3), abs=1e-3)


def test_a_reused_record_is_not_rewritten(tmp_path):
    rec = {"run_id": "sft", "accuracy": {"arith": 4.0}, "n": {"arith": 50}, "train_seconds": 1.5}
    path = tmp_path / "sft.json"
    assert not records.same_record(path, rec)  # no file yet
    path.write_text(json.dumps({**rec, "wall_seconds": 80.0}))
    assert records.same_record(path, dict(rec))  # only the wall time would differ
    assert not records.same_record(path, {**rec, "accuracy": {"arith": 6.0}})
    path.write_text("{broken")
    assert not records.same_record(path, rec)


def _task_record(run, rid, key, seed, task, scores, **extra):
    """A per-task record; ``scores``: {dataset: (correct, n)}."""
    rec = {"run_id": rid, "key": key, "label": methods.METHODS[key].label, "kind": methods.METHODS[key].kind, "seed": seed,
           "train_dataset": task, "status": "ok", "reason": "", "train_tokens": 100, "train_seconds": 1.0,
           "accuracy": {d: 100 * k / n for d, (k, n) in scores.items()}, "n": {d: n for d, (_, n) in scores.items()},
           "correct": {d: k for d, (k, _) in scores.items()}, **extra}
    (run / "experiments").mkdir(parents=True, exist_ok=True)
    (run / "experiments" / f"{rid}.json").write_text(json.dumps(rec))


def test_tables_follow_the_per_task_protocol(tmp_path):
    """Held-in: each task's own model on its test set; OOD: the paired model; averages over those cells."""
    from exgrpo_utils.report import paper_layout

    layout = RunLayout.of("run", tmp_path)
    _task_record(layout.root, "sft", "sft", 0, "strategyqa", {"strategyqa": (30, 50), "boolq": (20, 50)})
    _task_record(layout.root, "arc_challenge--sft", "sft", 0, "arc_challenge", {"arc_challenge": (10, 50), "openbookqa": (40, 50)})
    df = paper_tables.load_records([layout])
    assert paper_tables.tasks_of(df) == ["strategyqa", "arc_challenge"] and paper_tables.ood_of(df) == ["boolq", "openbookqa"]
    t1 = paper_tables.build_table("table1", df, paper_layout.paper_results()).set_index("method")
    lo, hi = (100 * x for x in stats.mean_interval([30, 10], [50, 50]))
    assert t1.loc["SFT (EI, all rules)", "ours: held-in avg over 2 (per-task models)"] == f"40.0 [{lo:.1f}, {hi:.1f}]"
    lo, hi = (100 * x for x in stats.wilson_interval(10, 50))
    assert t1.loc["SFT (EI, all rules)", "ours: arc_challenge (held-in)"] == f"20.0 [{lo:.1f}, {hi:.1f}]"
    t2 = paper_tables.build_table("table2", df, paper_layout.paper_results()).set_index("method")
    assert t2.loc["SFT (EI, all rules)", "ours: OOD avg over 2 (per-task models)"].startswith("60.0 [")
    assert [c.title for c in paper_tables.table_columns("table3", df)] == [
        "strategyqa (held-in)", "arc_challenge (held-in)", "held-in avg over 2 (per-task models)", "boolq (OOD)",
        "openbookqa (OOD)", "OOD avg over 2 (per-task models)"]
    assert paper_tables.headline(df).title == "held-in avg over 2 (per-task models)"
    # another run that trained strategyqa again replaces that task's record only
    other = RunLayout.of("other", tmp_path)
    _task_record(other.root, "strategyqa--sft", "sft", 0, "strategyqa", {"strategyqa": (45, 50), "boolq": (5, 50)})
    df = paper_tables.load_records([layout, other])
    got = df[(df["key"] == "sft") & (df["eval"] == "task")].set_index("dataset")
    assert got.loc["strategyqa", "run"] == "other" and got.loc["arc_challenge", "run"] == "run" and len(got) == 4
    # whole records are replaced: a later run that skipped arc_challenge's SFT leaves no number of the earlier one
    skipped = {"run_id": "arc_challenge--sft", "key": "sft", "label": "SFT", "kind": "sft", "seed": 0,
               "train_dataset": "arc_challenge", "status": "skipped", "reason": "skipped: nothing to train on",
               "train_tokens": 0, "train_seconds": 0.0, "accuracy": {}, "n": {}, "correct": {}}
    (other.root / "experiments" / "arc_challenge--sft.json").write_text(json.dumps(skipped))
    df = paper_tables.load_records([layout, other])
    assert paper_tables.cell_stats(df, "sft", "arc_challenge")["seeds"] == 0
    assert set(df[df["key"] == "sft"]["run"]) == {"other"}


def test_paired_comparisons_pair_models_of_the_same_task(tmp_path):
    layout = RunLayout.of("run", tmp_path)
    for key, right in (("exgrpo", 30), ("sft", 10)):
        for task, rid in (("strategyqa", key), ("arc_challenge", f"arc_challenge--{key}")):
            sets = {"strategyqa": ("strategyqa", "boolq"), "arc_challenge": ("arc_challenge", "openbookqa")}[task]
            _task_record(layout.root, rid, key, 0, task, {d: (right, 100) for d in sets})
            for d in sets:
                path = layout.task_eval_dir(rid) / f"{d}.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("".join(json.dumps({"id": f"i{k}", "prompt": str(k), "correct_flexible": k < right}) + "\n"
                                        for k in range(100)))
    table = paper_tables.paired_comparisons([layout], pairs=(("exgrpo", "sft"),))
    assert list(zip(table["train_dataset"], table["dataset"])) == [
        ("strategyqa", "strategyqa"), ("strategyqa", "boolq"), ("arc_challenge", "arc_challenge"), ("arc_challenge", "openbookqa")]
    assert (table["difference"].round(6) == 20).all() and (table["items"] == 100).all()


def _fake_run(tmp_path, monkeypatch):
    """A run of two tasks (arith, strategyqa; csqa has no probes) whose trainings and evaluations are
    fakes; returns (context, trainings, evaluations), the last two filled as the plan runs."""
    from exgrpo_utils.evaluate.settings import SuiteSettings, TaskEvalSettings
    from exgrpo_utils.experiments.settings import ExperimentSettings
    from exgrpo_utils.infra.runsettings import RunSettings
    from exgrpo_utils.train.settings import ExGRPOSettings, SFTSettings

    layout = RunLayout.of("run", tmp_path)
    for task in ("arith", "strategyqa"):
        layout.probe_dataset(task).parent.mkdir(parents=True)
        layout.probe_dataset(task).write_text("")
    trained, evaluated = [], []

    def fake_sft(*, model, probe_records=None, rows=None, settings, out_dir, data_name="", **_):
        trained.append(("sft", out_dir.name, probe_records if rows is None else data_name))
        return {"final": f"model:{out_dir.name}", "train_tokens": 10, "seconds": 1.0, "steps": 1, "data": "ei"}

    def fake_rl(*, init_model, probe_records, settings, out_dir, **_):
        if settings.mode == "grpo":
            raise runs.NoTrainingData("no training rows: no question has a probe the dialogues may use")
        trained.append(("rl", out_dir.name, init_model))
        return {"final": f"model:{out_dir.name}", "train_tokens": 5, "seconds": 1.0, "steps": 1}

    def fake_eval(settings, run, *, model, out_dir, label="", extra=None, generator=None):
        evaluated.append((out_dir.name, tuple(settings.datasets) + tuple(extra or ())))
        rows = [{"dataset": d, "accuracy": 50.0, "n": 4} for d in tuple(settings.datasets) + tuple(extra or ())]
        return pd.DataFrame(rows + [{"dataset": "held-in-avg8", "accuracy": 50.0, "n": 4}])  # as summary_table adds

    monkeypatch.setattr(runs, "train_sft", fake_sft)
    monkeypatch.setattr(runs, "train_exgrpo", fake_rl)
    monkeypatch.setattr(runs, "evaluate_on", fake_eval)
    monkeypatch.setattr(runs, "load_probe_dataset", lambda path: [{"probe_of": path.parent.name}] if "csqa" not in str(path) else [])
    monkeypatch.setattr(runs, "model_identity", lambda model: {"model": model})
    monkeypatch.setattr(runs, "subsample_questions", lambda records, fraction, seed: records)
    ctx = runs.Context(layout=layout, run=RunSettings(run_name="run", train_dataset="arith"), sft=SFTSettings(),
                       rl=ExGRPOSettings(), teacher=TeacherSettings(teacher="program"), eval=TaskEvalSettings(),
                       suite=SuiteSettings(), experiments=ExperimentSettings(tasks=("strategyqa", "arith")))
    return ctx, trained, evaluated


def test_run_plan_trains_one_model_per_task(tmp_path, monkeypatch):
    """Every (task, method, seed): run ids, the task's probes, warm-up from the same task, the task's
    test set and its paired OOD sets; records carry train_dataset and never overwrite each other."""
    from exgrpo_utils.experiments.settings import ExperimentSettings

    ctx, trained, evaluated = _fake_run(tmp_path, monkeypatch)
    layout = ctx.layout
    assert ctx.tasks == ("arith", "strategyqa")  # the run's own task first
    records = runs.run_plan([("sft", 0), ("exgrpo", 0)], ctx, log=lambda *_: None)
    assert [r["run_id"] for r in records] == ["sft", "strategyqa--sft", "exgrpo", "strategyqa--exgrpo"]
    assert [r["train_dataset"] for r in records] == ["arith", "strategyqa", "arith", "strategyqa"]
    assert ("rl", "strategyqa--exgrpo", "model:strategyqa--sft") in trained
    assert ("sft", "strategyqa--sft", [{"probe_of": "strategyqa"}]) in trained
    assert dict(evaluated)["strategyqa--sft"] == ("strategyqa", "boolq") and dict(evaluated)["sft"] == ("arith", "arith_rev")
    assert records[3]["train_tokens"] == 15  # the warm-up of the same task counts
    assert sorted(p.stem for p in layout.records_dir.glob("*.json")) == ["exgrpo", "sft", "strategyqa--exgrpo", "strategyqa--sft"]
    df = runs.collect(layout)
    assert set(df["train_dataset"]) == {"arith", "strategyqa"} and set(df["eval"]) == {"task"}
    # a task where no question survived EI: its EI-trained methods are recorded as skipped, zero-shot still scored
    recs = runs.run_plan([("zero-shot", 0), ("sft", 0), ("exgrpo", 0)], replace(ctx, experiments=ExperimentSettings(tasks=("csqa",))),
                         log=lambda *_: None)
    assert [(r["run_id"], r["status"]) for r in recs] == [("csqa--zero-shot", "ok"), ("csqa--sft", "skipped"),
                                                          ("csqa--exgrpo", "skipped")]
    assert "no csqa question survived" in recs[1]["reason"] and recs[0]["n"] == {"csqa": 4}
    # a training without rows (here: no probe the dialogues may use) is recorded as skipped too
    recs = runs.run_plan([("sft", 0), ("sft-grpo", 0)], ctx, log=lambda *_: None)
    assert recs[-1]["status"] == "skipped" and "a probe the dialogues may use" in recs[-1]["reason"]
    for bad in ("boolq", "arith_rev"):  # an OOD set, or another task's pair
        with pytest.raises(ValueError, match="not training tasks"):
            runs.Context.from_params({**_params(), "exp_tasks": [bad]})


def _params():
    from exgrpo_utils import config

    return config.resolve(config.load_preset("cpu"), run_name="cpu")


def test_run_ids_of_other_tasks_are_prefixed_and_parse_back():
    from exgrpo_utils.infra.layout import method_of, task_run_id

    assert task_run_id("exgrpo", 1, "arith", "arith") == "exgrpo-s1"
    assert task_run_id("sft-p0.1", 2, "strategyqa", "arith") == "strategyqa--sft-p0.1-s2"
    for rid, want in (("strategyqa--sft-p0.1-s2", ("sft-p0.1", 2)), ("exgrpo", ("exgrpo", 0)),
                      ("arc_challenge--sft-grpo-aux", ("sft-grpo-aux", 0)), ("sft-s1", ("sft", 1))):
        assert method_of(rid) == want


def test_every_method_kind_has_a_trainer():
    assert {m.kind for m in methods.METHODS.values()} == set(runs.TRAINERS)


def test_method_settings_are_the_runs_with_the_methods_changes():
    from exgrpo_utils.train.settings import ExGRPOSettings, SFTSettings

    sft, rl = SFTSettings(data_fraction=0.5, seed=9), ExGRPOSettings(aux_lambda=0.3, revealing_probes="exclude")
    M = methods.METHODS
    s = methods.sft_settings(M["sft-p0.1"], sft, 2)
    assert (s.seed, s.data_fraction, s.rules, s.epochs) == (2, 0.05, (), sft.epochs)
    assert methods.sft_settings(M["sft-rule-counterfactual"], sft, 0).rules == ("counterfactual",)
    r = methods.rl_settings(M["sft-grpo"], rl, 1)
    assert (r.seed, r.mode, r.aux_lambda, r.revealing_probes) == (1, "grpo", 0.0, "exclude")
    r = methods.rl_settings(M["exgrpo-revealing"], rl, 0)
    assert (r.mode, r.aux_lambda, r.revealing_probes) == ("exgrpo", 0.3, "allow")
    assert methods.rl_question_fraction(M["exgrpo-p0.25"], sft) == 0.125  # its warm-up's questions
    assert methods.rl_question_fraction(M["exgrpo"], sft) == 0.5 and methods.rl_question_fraction(M["cold-grpo"], sft) == 1.0
    o = methods.opd_settings(sft, rl, 3)
    assert (o.seed, o.epochs, o.learning_rate, o.max_new_tokens) == (3, sft.epochs, sft.learning_rate, rl.max_final_tokens)
    assert o.batch_size == sft.batch_size  # no accumulation: SFT's rows per step
    # SFT in micro-batches of 2 accumulated 4 times: OPD keeps 8 questions per optimiser step
    assert methods.opd_settings(SFTSettings(batch_size=2, gradient_accumulation_steps=4), rl, 0).batch_size == 8


def test_the_probe_policy_row_that_is_the_runs_own_is_exgrpos_training_and_is_skipped(tmp_path, monkeypatch):
    """Table 3's two probe policies beside ExGRPO: the row whose policy is the run's would train ExGRPO
    again, so it is skipped with that reason; the other trains."""
    from exgrpo_utils.train.settings import ExGRPOSettings

    M = methods.METHODS
    allow, exclude = ExGRPOSettings(), ExGRPOSettings(revealing_probes="exclude")
    assert allow.revealing_probes == "allow"  # the paper's probes (docs/method.md)
    assert [methods.same_training_as(M[k], allow) for k in ("exgrpo-revealing", "exgrpo-norevealing", "exgrpo")] == \
        ["exgrpo", None, None]
    assert [methods.same_training_as(M[k], exclude) for k in ("exgrpo-revealing", "exgrpo-norevealing")] == [None, "exgrpo"]
    assert methods.same_training_as(M["exgrpo-nobonus"], exclude) is None  # the bonus differs
    assert methods.same_training_as(M["sft-grpo"], exclude) is None
    ctx, trained, _ = _fake_run(tmp_path, monkeypatch)
    done: dict = {}
    runs.run_plan([("sft", 0)], ctx, log=lambda *_: None)
    done.update({r: {"final": f"model:{r}"} for r in ("sft",)})
    rec = runs.run_triple("arith", "exgrpo-revealing", 0, ctx, done, log=lambda *_: None)
    assert rec["status"] == "skipped" and "the same training as the row 'ExGRPO (SFT + ExGRPO + aux SFT)'" in rec["reason"]
    assert "rl_revealing_probes is allow" in rec["reason"] and not any(t[1] == "exgrpo-revealing" for t in trained)
    rec = runs.run_triple("arith", "exgrpo-norevealing", 0, ctx, done, log=lambda *_: None)
    assert rec["status"] == "ok" and trained[-1] == ("rl", "exgrpo-norevealing", "model:sft")


def test_a_skipped_probe_policy_twin_neither_asks_for_its_warm_up_nor_becomes_a_job(tmp_path, monkeypatch):
    """A twin (the probe-policy row with the run's own policy) trains nothing, so a warm-up kept without
    its weights stays kept (not retrained for it), and the dispatcher submits no job for it."""
    from exgrpo_utils.experiments import jobs

    ctx, trained, _ = _fake_run(tmp_path, monkeypatch)
    monkeypatch.setattr(runs, "kept_training", lambda ctx, task, key, seed: (
        {"final": f"model:{key}", "train_tokens": 5, "seconds": 1.0, "steps": 1} if key in ("sft", "exgrpo") else None))
    monkeypatch.setattr(runs.kept, "RenderOnly", lambda student: None)
    recs = runs.run_plan([("sft", 0), ("exgrpo", 0), ("exgrpo-revealing", 0)], ctx, log=lambda *_: None)
    assert [r["status"] for r in recs if r["train_dataset"] == "arith"] == ["ok", "ok", "skipped"]
    assert trained == []  # sft and exgrpo kept, the twin skipped: nothing trained
    names = {j.name for j in jobs.training_jobs(ctx, [("sft", 0), ("exgrpo", 0), ("exgrpo-revealing", 0),
                                                      ("exgrpo-norevealing", 0)], tmp_path / "p.json")}
    assert "exgrpo-revealing" not in names and {"sft", "exgrpo", "exgrpo-norevealing"} <= names


def test_run_triple_skips_opd_trains_baselines_on_their_rows_and_keeps_unchanged_records(tmp_path, monkeypatch):
    ctx, trained, _ = _fake_run(tmp_path, monkeypatch)
    rec = runs.run_triple("arith", "opd", 0, ctx, {}, log=lambda *_: None)
    assert rec["status"] == "skipped" and rec["reason"] == methods.opd_status("program")[1]
    items, _ = _baseline_records(tmp_path)
    cots = [r["teacher_cot"] for r in baseline_data.load_baseline_data(tmp_path / "bl.jsonl")]
    baseline_data.build_baseline_data(items, cots, baseline_data.ProgramAugmenter(), ctx.layout.baseline_data("arith"))
    done: dict = {}
    rec = runs.run_triple("arith", "skd", 0, ctx, done, log=lambda *_: None)
    assert trained[-1] == ("sft", "skd", "skd") and done["skd"]["final"] == "model:skd"  # its data, named by the trainer
    assert (rec["train_tokens"], rec["train_steps"], rec["accuracy"]) == (10, 1, {"arith": 50.0, "arith_rev": 50.0})
    path = ctx.layout.record("skd")
    stored = path.read_text()
    again = runs.run_triple("arith", "skd", 0, ctx, {}, log=lambda *_: None)
    assert path.read_text() == stored and again == json.loads(stored)  # unchanged: not rewritten, time kept
    assert list(json.loads(stored))[-1] == "wall_seconds" and "data" not in json.loads(stored)
