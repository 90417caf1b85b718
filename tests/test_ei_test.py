"""The EI-Test (the paper's Figure 1): probes of test questions made as training probes are, scored
like test questions; with the program teacher on arith (exact answers, no model)."""
import pytest

from exgrpo_utils.data import datasets as data
from exgrpo_utils.evaluate import ei_test, evaluation
from exgrpo_utils.evaluate.stats import newcombe_difference
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


def test_the_deficit_interval_and_figure_one(tmp_path):
    import pandas as pd

    from exgrpo_utils.report import plotting

    d, low, high = newcombe_difference(56, 70, 48, 80)
    assert (round(100 * d, 1), round(100 * low, 2), round(100 * high, 2)) == (20.0, 5.24, 33.39)  # Newcombe (1998)
    assert 100 * newcombe_difference(60, 100, 20, 100)[0] == pytest.approx(40)
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


def test_figure_one_from_the_records_deficit_over_seeds_and_for_one_model(tmp_path):
    """SFT's three seeds lose 30, 28 and 26 points on the EI-Test (t-interval over seeds: 28 +- 4.97);
    zero-shot, one model, loses 12 - 5 = 7 points (Newcombe's interval over the items)."""
    from exgrpo_utils.infra.layout import RunLayout
    from exgrpo_utils.report import figure1, paper_tables

    layout = RunLayout.of("cpu", tmp_path)
    _record(layout, "zero-shot", 0, 12.0, 5.0)
    for seed, (acc, acc_ei) in enumerate([(31.0, 1.0), (30.0, 2.0), (29.0, 3.0)]):
        _record(layout, "sft", seed, acc, acc_ei)
    table = figure1.ei_test_table(paper_tables.load_records([layout])).set_index("key")
    assert list(table.index) == ["zero-shot", "sft"]
    assert table.loc["sft", "deficit_mean"] == pytest.approx(28.0) and table.loc["sft", "interval covers"] == "seeds"
    assert table.loc["sft", "deficit"] == "+28.0 [+23.0, +33.0]"
    d, _, _ = newcombe_difference(24, 200, 5, 100)
    assert table.loc["zero-shot", "deficit_mean"] == pytest.approx(100 * d) and table.loc["zero-shot", "interval covers"] == "items (one model)"
    points = figure1.figure1_points(table.reset_index())
    assert len(points) == 4 and set(points["set"]) == {"original", "EI-Test"}
    assert "| arith | SFT (EI, all rules) |" in figure1.table_markdown(table.reset_index())
    comparisons = paper_tables.paired_comparisons([layout], pairs=(("sft", "zero-shot"),))
    assert "arith-ei" in set(comparisons["dataset"])  # the EI-Test is compared item by item like the test sets


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
