"""The EI-Test (the paper's Figure 1): probes of test questions made as training probes are, scored
like test questions; with the program teacher on arith (exact answers, no model)."""
import json
import math

import pytest

from exgrpo_utils.data import datasets as data
from exgrpo_utils.data.example import Example
from exgrpo_utils.evaluate import ei_test, evaluation
from exgrpo_utils.infra.fingerprint import StaleOutputError
from exgrpo_utils.models.generation import Completion, SamplingConfig
from exgrpo_utils.teach import rules, teachers

IDENTITY = {"kind": "program"}


class GoldGenerator:
    """Answers every item with its gold (looked up by the question), or a wrong number for some rules."""

    name = "gold"

    def __init__(self, examples, wrong_rules=()):
        self.by_question = {ex.question: ex for ex in examples}
        self.wrong_rules = set(wrong_rules)

    def render(self, messages):
        return messages[-1]["content"]

    def generate(self, batch, sampling):
        outs = []
        for m in batch:
            ex = self.by_question[m[-1]["content"].split("\n\n")[0]]
            answer = "-12345" if ex.meta.get("rule") in self.wrong_rules else ex.answer
            outs.append(Completion(f"The answer is {answer}.", 5, True))
        return outs


class NoTeacher:
    def __getattr__(self, name):
        raise AssertionError(f"the teacher was asked ({name}) although the EI-Test was on disk")


@pytest.fixture(scope="module")
def items():
    return data.load("arith", "test", limit=6, sample_seed=0)


def test_the_ei_test_holds_each_probe_eq1_kept_with_the_teachers_exact_answer(items, tmp_path):
    rule_set = rules.load_rules()
    examples = ei_test.build_ei_test(items, teachers.ProgramTeacher(), rule_set, out_dir=tmp_path, teacher_identity=IDENTITY)
    assert len(examples) > len(items)  # several rules per question
    assert {ex.meta["source_id"] for ex in examples} <= {ex.id for ex in items}
    assert all(ex.dataset == "arith-ei" and ex.meta["rule"] and ex.answer for ex in examples)
    assert len({ex.id for ex in examples}) == len(examples)
    again = ei_test.build_ei_test(items, NoTeacher(), rule_set, out_dir=tmp_path, teacher_identity=IDENTITY)
    assert again == examples  # read back, the teacher not asked
    with pytest.raises(StaleOutputError, match="EI-Test made from other inputs"):
        ei_test.build_ei_test(items[:3], NoTeacher(), rule_set, out_dir=tmp_path, teacher_identity=IDENTITY)


def test_ei_test_scores_overall_and_per_rule(items, tmp_path):
    examples = ei_test.build_ei_test(items, teachers.ProgramTeacher(), rules.load_rules(), out_dir=tmp_path / "set",
                                     teacher_identity=IDENTITY)
    wrong = sorted({ex.meta["rule"] for ex in examples})[0]
    recs = evaluation.evaluate_examples(GoldGenerator(examples, wrong_rules=[wrong]), examples, tmp_path / "arith-ei.jsonl",
                                        sampling=SamplingConfig(), progress=False)
    scores = ei_test.ei_test_scores(recs, examples).set_index("rule")
    n_wrong = sum(ex.meta["rule"] == wrong for ex in examples)
    assert scores.loc["all", "n"] == len(examples) and scores.loc["all", "correct"] == len(examples) - n_wrong
    assert scores.loc[wrong, "accuracy"] == 0 and all(scores.drop(index=["all", wrong])["accuracy"] == 100)
    assert scores.loc["all", "low"] < scores.loc["all", "accuracy"] <= scores.loc["all", "high"]


def test_figure_one_draws_each_models_two_bars(tmp_path):
    import pandas as pd

    from exgrpo_utils.report import plotting

    points = pd.DataFrame([{"model": m, "set": s, "accuracy": a, "low": a - 5, "high": a + 5}
                           for m, pair in (("teacher", (80, 60)), ("student", (60, 20))) for s, a in zip(("original", "EI-Test"), pair)])
    assert list(points["set"]) == ["original", "EI-Test"] * 2 and (points["low"] <= points["accuracy"]).all()
    fig = plotting.figure1_ei_test(points)
    assert len(fig.axes[0].patches) == 4
    plotting.publish(fig, tmp_path / "figure1")
    assert (tmp_path / "figure1.png").exists() and (tmp_path / "figure1.pdf").exists()


def _record(layout, key, seed, acc, acc_ei, n=200, n_ei=100):
    import json

    rid = key if seed == 0 else f"{key}-s{seed}"
    rec = {"run_id": rid, "key": key, "label": key, "kind": "zero-shot" if key == "zero-shot" else "sft", "seed": seed,
           "train_dataset": "arith", "status": "ok", "reason": "", "train_tokens": 1, "train_seconds": 1.0,
           "accuracy": {"arith": acc, "arith_rev": 5.0, "arith-ei": acc_ei}, "n": {"arith": n, "arith_rev": n, "arith-ei": n_ei},
           "correct": {"arith": round(acc * n / 100), "arith_rev": round(5 * n / 100), "arith-ei": round(acc_ei * n_ei / 100)}}
    layout.record(rid).parent.mkdir(parents=True, exist_ok=True)
    layout.record(rid).write_text(json.dumps(rec))


def _items(layout, rid, dataset, right: list[int]):
    """Evaluation records of one model: item k right when right[k] (EI-Test ids: <question>/<rule>)."""
    import json

    ids = [f"q{k // 4}/rule{k % 4}" for k in range(len(right))] if dataset.endswith("-ei") else [f"i{k}" for k in range(len(right))]
    layout.task_eval_dir(rid).mkdir(parents=True, exist_ok=True)
    (layout.task_eval_dir(rid) / f"{dataset}.jsonl").write_text("".join(
        json.dumps({"id": i, "prompt": f"Q {i}", "correct_flexible": bool(ok)}) + "\n" for i, ok in zip(ids, right)))


def test_figure_one_from_the_records_deficit_over_seeds_and_for_one_model(tmp_path):
    """SFT's three seeds lose 30, 28 and 26 points on the EI-Test (t-interval over seeds: 28 +- 4.97);
    zero-shot, one model, loses 12 - 5 = 7 points, its interval from a bootstrap over the test items
    and the EI-Test's questions (25 of them, four probes each, the 5 right probes in two questions)."""
    from exgrpo_utils.evaluate import ei_test as eit
    from exgrpo_utils.evaluate.stats import seed_cluster_interval
    from exgrpo_utils.infra.layout import RunLayout
    from exgrpo_utils.report import figure1, paper_tables

    layout = RunLayout.of("cpu", tmp_path)
    _record(layout, "zero-shot", 0, 12.0, 5.0)
    on_test, on_ei = [1] * 24 + [0] * 176, [1] * 5 + [0] * 95
    _items(layout, "zero-shot", "arith", on_test)
    _items(layout, "zero-shot", "arith-ei", on_ei + [1] * 8)  # 8 records of an earlier build: ignored
    ids = [f"q{k // 4}/rule{k % 4}" for k in range(100)]
    layout.ei_test_dir("arith").mkdir(parents=True)
    (layout.ei_test_dir("arith") / eit.EI_TEST_FILE).write_text("".join(
        json.dumps(Example(i, "arith-ei", "Q", "1", meta={"rule": "r", "answer_type": "number"}).to_dict()) + "\n" for i in ids))
    sft_test = [[int(i < 62 - 2 * s) for s in range(3)] for i in range(200)]  # 31, 30, 29 %
    sft_ei = [[int(i < 1 + s) for s in range(3)] for i in range(100)]  # 1, 2, 3 %
    for seed, (acc, acc_ei) in enumerate([(31.0, 1.0), (30.0, 2.0), (29.0, 3.0)]):
        _record(layout, "sft", seed, acc, acc_ei)
        _items(layout, "sft" if seed == 0 else f"sft-s{seed}", "arith", [r[seed] for r in sft_test])
        _items(layout, "sft" if seed == 0 else f"sft-s{seed}", "arith-ei", [r[seed] for r in sft_ei])
    table = figure1.ei_test_table(paper_tables.load_records([layout]), [layout]).set_index("key")
    assert list(table.index) == ["zero-shot", "sft"]
    # the report reads items in the order of their ids
    t_order, e_order = sorted(range(200), key=lambda k: f"i{k}"), sorted(range(100), key=lambda k: ids[k])
    sft_test, sft_ei = [sft_test[k] for k in t_order], [sft_ei[k] for k in e_order]
    on_test, on_ei = [on_test[k] for k in t_order], [on_ei[k] for k in e_order]
    questions = [ids[k].split("/")[0] for k in e_order]
    sft = seed_cluster_interval([(1.0, sft_test, None), (-1.0, sft_ei, questions)])
    assert table.loc["sft", "deficit_mean"] == pytest.approx(28.0) and table.loc["sft", "seeds"] == 3
    assert table.loc["sft", "interval covers"] == "seeds, items and questions"
    assert table.loc["sft", "deficit"] == f"+28.0 [{100 * sft['low']:+.1f}, {100 * sft['high']:+.1f}]"
    assert 100 * sft["low"] <= 23.03 and 100 * sft["high"] >= 32.97  # never narrower than Student-t: 28 +- 4.97
    zs = seed_cluster_interval([(1.0, [[x] for x in on_test], None), (-1.0, [[x] for x in on_ei], questions)])
    assert table.loc["zero-shot", "deficit_mean"] == pytest.approx(7.0) == pytest.approx(100 * zs["mean"])
    assert table.loc["zero-shot", "deficit"] == f"+7.0 [{100 * zs['low']:+.1f}, {100 * zs['high']:+.1f}]"
    assert table.loc["zero-shot", "interval covers"] == "items and questions"
    ei_acc = seed_cluster_interval([(1.0, [[x] for x in on_ei], questions)])
    assert (table.loc["zero-shot", "ei"]["low"], table.loc["zero-shot", "ei"]["high"]) == (100 * ei_acc["low"], 100 * ei_acc["high"])
    on_sft_test = seed_cluster_interval([(1.0, sft_test, None)])  # the test set from the same seeds and items
    assert (table.loc["sft", "original"]["low"], table.loc["sft", "original"]["high"]) == (100 * on_sft_test["low"],
                                                                                       100 * on_sft_test["high"])
    assert table.loc["sft", "original"]["mean"] - table.loc["sft", "ei"]["mean"] == pytest.approx(table.loc["sft", "deficit_mean"])
    by_probe = seed_cluster_interval([(1.0, [[x] for x in on_ei], None)])  # probes as independent: narrower
    assert by_probe["high"] - by_probe["low"] < ei_acc["high"] - ei_acc["low"]
    points = figure1.figure1_points(table.reset_index())
    assert len(points) == 4 and set(points["set"]) == {"original", "EI-Test"}
    assert "| arith | SFT (EI, all rules) |" in figure1.table_markdown(table.reset_index())
    comparisons = paper_tables.paired_comparisons([layout], pairs=(("sft", "zero-shot"),))
    ei_row = comparisons.set_index("dataset").loc["arith-ei"]  # compared item by item like the test sets, by question
    assert ei_row["items"] == 100 and ei_row["seeds"] == 3 and "questions" in ei_row["interval covers"]
    assert math.isnan(ei_row["McNemar p"])  # McNemar would take the probes as independent pairs


def test_an_ei_test_left_by_an_earlier_call_is_moved_aside_when_none_is_asked_for(tmp_path):
    """With ei_test_items 0 notebook 05 must not score a set an earlier call of notebook 01 built."""
    from exgrpo_utils.infra.layout import RunLayout
    from exgrpo_utils.teach.settings import EISettings, TeacherSettings

    layout = RunLayout.of("r", tmp_path)
    (layout.ei_test_dir("arith")).mkdir(parents=True)
    (layout.ei_test_dir("arith") / ei_test.EI_TEST_FILE).write_text("{}\n")
    out = ei_test.build_ei_tests(layout, EISettings(datasets=("arith",), test_items=0), TeacherSettings(teacher="program"),
                                 log=lambda *_: None)
    assert out == {} and ei_test.load_ei_test(layout, "arith") == []
    assert (layout.ei_test_dir("arith").parent / "arith.replaced-1" / ei_test.EI_TEST_FILE).exists()  # kept, not deleted


def test_an_ei_test_of_a_few_questions_gives_no_interval_and_still_a_figure(tmp_path):
    """The smoke presets build one or two EI questions: a bootstrap over them would be degenerate,
    so the table says there is no interval, the figure hatches the bar, the comparison gives no verdict."""
    from exgrpo_utils.infra.layout import RunLayout
    from exgrpo_utils.report import figure1, paper_tables, plotting

    layout = RunLayout.of("cpu", tmp_path)
    ids = [f"q{k // 4}/rule{k % 4}" for k in range(8)]  # two questions
    layout.ei_test_dir("arith").mkdir(parents=True)
    (layout.ei_test_dir("arith") / ei_test.EI_TEST_FILE).write_text("".join(
        json.dumps(Example(i, "arith-ei", "Q", "1", meta={"rule": "r", "answer_type": "number"}).to_dict()) + "\n" for i in ids))
    for key, right in (("zero-shot", [1, 0] * 4), ("sft", [1] * 8)):
        _record(layout, key, 0, 50.0, 100.0 * sum(right) / 8, n=4, n_ei=8)
        _items(layout, key, "arith", [1, 1, 0, 0])
        _items(layout, key, "arith-ei", right)
    table = figure1.ei_test_table(paper_tables.load_records([layout]), [layout]).set_index("key")
    assert table.loc["sft", "interval covers"] == "no interval: 2 questions (fewer than 10)"
    assert table.loc["sft", "deficit"] == "-50.0 [n/a]"  # no interval written as one of nan bounds
    assert table.loc["zero-shot", "deficit_mean"] == pytest.approx(0.0) and table.loc["sft", "EI-Test"] == "100.0"
    fig = plotting.figure1_ei_test(figure1.figure1_points(table.reset_index()))
    assert [p.get_hatch() for p in fig.axes[0].patches][2:] == ["//", "//"]  # the EI-Test bars: no interval
    row = paper_tables.paired_comparisons([layout], pairs=(("sft", "zero-shot"),)).set_index("dataset").loc["arith-ei"]
    assert row["verdict"].startswith("no interval: 2 questions") and "[n/a]" in paper_tables.comparisons_markdown(
        paper_tables.paired_comparisons([layout], pairs=(("sft", "zero-shot"),)))
