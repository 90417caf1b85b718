"""The reproduction's comparison with the committed reference, and the paired tests it uses."""
import json
import math

import pytest

from exgrpo_utils.evaluate import stats
from exgrpo_utils.infra.layout import RunLayout
from exgrpo_utils.report import compare


@pytest.mark.parametrize("b, c, p", [(0, 0, 1.0), (5, 0, 2 / 32), (0, 5, 2 / 32), (10, 2, 2 * (1 + 12 + 66) / 4096),
                                     (1, 1, 1.0), (20, 20, 1.0)])
def test_mcnemar_exact_hand_computed(b, c, p):
    assert stats.mcnemar_exact(b, c) == pytest.approx(p)


def test_paired_bootstrap_difference_interval_and_p():
    same = [[1, 0, 1]] * 20 + [[0, 0, 0]] * 20
    r = stats.paired_bootstrap(same, same)
    assert r["diff"] == 0 and r["p"] == 1.0 and r["low"] == r["high"] == 0
    worse = [[0]] * 100
    better = [[1]] * 40 + [[0]] * 60
    r = stats.paired_bootstrap(worse, better, seed=1)
    assert r["diff"] == pytest.approx(0.4) and 0.28 < r["low"] < 0.4 < r["high"] < 0.52 and r["p"] < 0.01
    mixed = stats.paired_bootstrap([[0, 1]] * 10, [[1, 1]] * 10)  # per item 0.5 -> 1.0 over two seeds
    assert mixed["diff"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same non-empty items"):
        stats.paired_bootstrap([[1]], [[1], [0]])


def _write(root, folder, model, dataset, rows, dtype="float32", prompt="Q {}"):
    d = root / "runs" / "cpu" / folder / model
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{dataset}.jsonl").write_text("".join(json.dumps({"id": i, "prompt": prompt.format(i), "extracted_flexible": a,
                                                            "correct_flexible": ok}) + "\n" for i, (a, ok) in rows.items()))
    (d / "config.json").write_text(json.dumps({"dtype": dtype}))


def _machine(root, cpu):
    (root / "runs" / "cpu" / "00_setup.json").write_text(json.dumps({"environment": {"cpu_model": cpu, "cpu_threads": 2}}))


def test_compare_pairs_items_and_judges_each_cell_against_its_noise(tmp_path):
    ref, rep = tmp_path / "ref", tmp_path / "rep"
    base = {f"i{k}": (str(k), k % 2 == 0) for k in range(40)}
    _write(ref, "eval_arith", "sft", "arith", base)
    _write(rep, "eval_task", "sft", "arith", base)  # identical (a new run names the folder eval_task/)
    _write(ref, "eval_arith", "sft", "arith_rev", base)
    _write(rep, "eval_task", "sft", "arith_rev", {**base, "i0": ("x", False), "i1": ("one", True)})  # one each way
    _write(ref, "eval", "zero-shot", "gsm8k", {f"i{k}": ("1", True) for k in range(30)})
    _write(rep, "eval", "zero-shot", "gsm8k", {f"i{k}": ("2", False) for k in range(30)})  # all 30 flipped
    _write(ref, "eval", "zero-shot", "csqa", {"i0": ("A", True)})  # not in the reproduction yet
    _machine(ref, "CPU A")
    _machine(rep, "CPU B")
    result = compare.compare(RunLayout.of("cpu", ref), RunLayout.of("cpu", rep))
    cells = {(c["model"], c["dataset"]): c for c in result["cells"]}
    assert cells[("sft", "arith")]["verdict"] == "identical" and cells[("sft", "arith")]["same_answer"] == 40
    rev = cells[("sft", "arith_rev")]
    assert rev["verdict"] == "within noise" and rev["same_answer"] == 38 and rev["p_value"] == 1.0
    assert (rev["only_reference_right"], rev["only_reproduction_right"]) == (1, 1)
    gsm = cells[("zero-shot", "gsm8k")]
    assert gsm["verdict"] == "differs" and gsm["acc_reference"] == 1.0 and gsm["acc_reproduction"] == 0.0
    assert result["counts"] == {"identical": 1, "within noise": 1, "differs": 1, "not comparable": 0}
    assert result["only_reference"] == ["eval/zero-shot/csqa"]
    assert result["reference"]["cpu"] == "CPU A" and result["reproduction"]["cpu"] == "CPU B"
    text = compare.to_markdown(result)
    assert "CPU A" in text and "CPU B" in text and "| differs |" in text


def test_compare_cli_writes_the_report_and_refuses_a_missing_run(tmp_path, capsys):
    ref, rep = tmp_path / "ref", tmp_path / "rep"
    _write(ref, "eval_arith", "sft", "arith", {"a": ("1", True)})
    assert compare.main(["--reference", str(ref), "--reproduction", str(rep)]) == 2
    assert "does not exist" in capsys.readouterr().out
    _write(rep, "eval_arith", "sft", "arith", {"a": ("1", True)})
    assert compare.main(["--reference", str(ref), "--reproduction", str(rep)]) == 0
    assert (rep / "runs" / "cpu" / "comparison.md").exists() and "1 identical" in capsys.readouterr().out


def test_items_asked_other_questions_are_not_compared(tmp_path):
    ref, rep = tmp_path / "ref", tmp_path / "rep"
    rows = {f"i{k}": (str(k), True) for k in range(5)}
    _write(ref, "eval_arith", "sft", "arith", rows)
    _write(rep, "eval_arith", "sft", "arith", {k: ("9", False) for k in rows}, prompt="another question {}")
    result = compare.compare(RunLayout.of("cpu", ref), RunLayout.of("cpu", rep))
    assert result["cells"][0]["verdict"] == "not comparable" and result["counts"]["not comparable"] == 1
    assert "not comparable" in compare.to_markdown(result)


def test_no_common_item_is_not_comparable_and_partial_runs_are_flagged(tmp_path):
    ref, rep = tmp_path / "ref", tmp_path / "rep"
    _write(ref, "eval_arith", "sft", "arith", {"a": ("1", True), "b": ("2", True)})
    _write(rep, "eval_arith", "sft", "arith", {"c": ("1", True)})
    _write(ref, "eval_arith", "sft", "arith_rev", {"a": ("1", True), "b": ("2", True)})
    _write(rep, "eval_arith", "sft", "arith_rev", {"a": ("1", True)})  # unfinished
    result = compare.compare(RunLayout.of("cpu", ref), RunLayout.of("cpu", rep))
    cells = {c["dataset"]: c for c in result["cells"]}
    assert cells["arith"]["verdict"] == "not comparable" and cells["arith"]["n"] == 0
    assert cells["arith_rev"]["verdict"] == "identical" and (cells["arith_rev"]["n"], cells["arith_rev"]["n_reference"]) == (1, 2)
    assert "part of their items only" in compare.to_markdown(result)


def test_paired_comparisons_pair_items_over_common_seeds(tmp_path):
    from exgrpo_utils.report import paper_tables

    layout = RunLayout.of("cpu", tmp_path)
    # exgrpo right on items 0-29 at both seeds, sft-grpo on items 0-9; 100 items; sft-grpo has a third seed
    for key, right, seeds in (("exgrpo", 30, (0, 1)), ("sft-grpo", 10, (0, 1, 2))):
        for seed in seeds:
            rid = key if seed == 0 else f"{key}-s{seed}"
            _write(tmp_path, "eval_arith", rid, "arith", {f"i{k}": (str(k), k < right) for k in range(100)})
            rec = {"run_id": rid, "key": key, "label": key, "kind": "rl", "seed": seed, "train_dataset": "arith",
                   "status": "ok", "reason": "", "train_tokens": 1, "train_seconds": 1.0, "accuracy": {"arith": right},
                   "n": {"arith": 100}, "correct": {"arith": right}}
            layout.record(rid).parent.mkdir(parents=True, exist_ok=True)
            layout.record(rid).write_text(json.dumps(rec))
    table = paper_tables.paired_comparisons([layout], pairs=(("exgrpo", "sft-grpo"), ("exgrpo", "skd")), datasets=("arith",))
    row = table.iloc[0]
    assert row["seeds"] == 2 and row["items"] == 100 and row["method %"] == 30 and row["baseline %"] == 10
    assert row["difference"] == pytest.approx(20) and row["low"] > 0 and row["verdict"] == "method better"
    assert (row["only method right"], row["only baseline right"]) == (20, 0)  # the first seed's items, once each
    assert row["McNemar p"] == pytest.approx(stats.mcnemar_exact(20, 0))
    assert table.iloc[1]["verdict"] == "not run in these results"
    assert "< 0.001" in paper_tables.comparisons_markdown(table)


def test_a_run_folder_keeps_its_legacy_task_evaluation_folder(tmp_path):
    """Runs written before ``eval_task/`` hold the task evaluations in ``eval_arith/``: still read there."""
    layout = RunLayout.of("cpu", tmp_path)
    assert layout.task_eval_dir("sft") == tmp_path / "runs" / "cpu" / "eval_task" / "sft"
    (tmp_path / "runs" / "cpu" / "eval_arith" / "sft").mkdir(parents=True)
    assert layout.task_eval_dir("sft") == tmp_path / "runs" / "cpu" / "eval_arith" / "sft"
    (tmp_path / "runs" / "cpu" / "eval_task").mkdir()
    assert layout.task_eval_dir("sft").parent.name == "eval_task"


def _per_seed_scores(diffs_in_items, n_items=200, base=40):
    """Item scores of two methods over seeds: both right on the first ``base`` items; per seed, the
    method is right on ``k`` more items (``k`` < 0: the baseline on ``-k`` more)."""
    first = [[0] * len(diffs_in_items) for _ in range(n_items)]
    second = [[0] * len(diffs_in_items) for _ in range(n_items)]
    for s, k in enumerate(diffs_in_items):
        for i in range(base):
            first[i][s] = second[i][s] = 1
        for i in range(base, base + abs(k)):
            (second if k > 0 else first)[i][s] = 1
    return first, second


def test_seed_level_interval_covers_the_seeds_the_items_only_one_did_not():
    """The issue's numbers: ExGRPO - SFT + GRPO per seed +1.0, +0.5, -4.5 points (200 items). A
    t-interval over the seeds gives [-8.6, +6.6]; the items-only bootstrap gave about [-4.0, +2.3]."""
    first, second = _per_seed_scores([2, 1, -9])
    r = stats.seed_level_comparison(first, second)
    assert [round(100 * d, 1) for d in r["per_seed"]] == [1.0, 0.5, -4.5]
    assert r["diff"] == pytest.approx(-0.01) and r["covers"] == "seeds and items" and r["seeds"] == 3
    _, t_low, t_high = stats.seed_interval(r["per_seed"])
    assert (round(100 * t_low, 1), round(100 * t_high, 1)) == (-8.6, 6.6)
    assert r["low"] <= t_low and r["high"] >= t_high and r["p"] > 0.5  # never narrower than the t-interval
    items_only = stats.paired_bootstrap(first, second)  # these three models only: would call it significant
    assert items_only["high"] < 0 and items_only["p"] < 0.05


def test_a_difference_that_only_the_items_only_test_calls_significant():
    """SFT + GRPO - SFT: +3.5 points, p = 0.02 item by item, but per seed 0, +8.5, +2.0: over three
    seeds the t-test says p = 0.31 and the interval holds zero."""
    first, second = _per_seed_scores([0, 17, 4])
    assert stats.paired_bootstrap(first, second)["p"] < 0.05
    r = stats.seed_level_comparison(first, second)
    assert r["diff"] == pytest.approx(0.035) and r["low"] < 0 < r["high"] and r["p"] > 0.25


def test_one_seed_is_labelled_one_model_against_one():
    first, second = _per_seed_scores([20])
    r = stats.seed_level_comparison(first, second)
    assert r["covers"] == "items (one model each)" and r["seeds"] == 1 and r["low"] > 0
    with pytest.raises(ValueError, match="same items and seeds"):
        stats.seed_level_comparison([[1, 0]], [[1]])


def test_student_t_p_values_hand_computed():
    assert stats.t_two_sided_p(1.0, 2) == pytest.approx(1 - 1 / 3 ** 0.5)  # closed form for 2 degrees of freedom
    assert stats.t_two_sided_p(1.0, 1) == pytest.approx(0.5)  # Cauchy: P(|T| > 1) = 1/2
    assert stats.t_two_sided_p(4.303, 2) == pytest.approx(0.05, abs=1e-4)


def test_zero_shot_stands_beside_every_seed_of_the_trained_method(tmp_path):
    """Zero-shot is one untrained model (greedy, no seed): SFT's three seeds are each compared with it,
    so the interval covers SFT's seeds (per-seed +20, +18, +16 -> t-interval [+13.0, +23.0], widened
    where the bootstrap over seeds and items is wider)."""
    from exgrpo_utils.report import paper_tables

    layout = RunLayout.of("cpu", tmp_path)
    for key, seed, right in (("zero-shot", 0, 23), ("sft", 0, 63), ("sft", 1, 59), ("sft", 2, 55)):
        rid = key if seed == 0 else f"{key}-s{seed}"
        _write(tmp_path, "eval_arith", rid, "arith", {f"i{k}": (str(k), k < right) for k in range(200)})
        rec = {"run_id": rid, "key": key, "label": key, "kind": key if key == "zero-shot" else "sft", "seed": seed,
               "train_dataset": "arith", "status": "ok", "reason": "", "train_tokens": 1, "train_seconds": 1.0,
               "accuracy": {"arith": right / 2}, "n": {"arith": 200}, "correct": {"arith": right}}
        layout.record(rid).parent.mkdir(parents=True, exist_ok=True)
        layout.record(rid).write_text(json.dumps(rec))
    row = paper_tables.paired_comparisons([layout], pairs=(("sft", "zero-shot"),), datasets=("arith",)).iloc[0]
    assert row["seeds"] == 3 and row["interval covers"] == "seeds and items"
    assert row["per-seed differences"] == "+20.0 +18.0 +16.0"
    assert row["low"] <= 13.0 and row["high"] >= 23.0 and row["low"] > 0 and row["verdict"] == "method better"


def test_seeds_that_agree_keep_the_item_noise_in_the_interval():
    """Three seeds scored on the same items and agreeing item by item carry the items' noise once: the
    interval is as wide as the items-only bootstrap of one seed, not sqrt(3) narrower (as it was when
    each resampled seed drew its own items)."""
    one_first, one_second = _per_seed_scores([20])
    first = [row * 3 for row in one_first]
    second = [row * 3 for row in one_second]
    items_only = stats.paired_bootstrap(one_first, one_second)
    r = stats.seed_level_comparison(first, second)
    width, items_width = r["high"] - r["low"], items_only["high"] - items_only["low"]
    assert 0.85 * items_width <= width <= 1.15 * items_width


def _as_clusters(rows, copies: int):
    """Each item repeated ``copies`` times, the copies one cluster (probes of one test question that
    all score alike)."""
    return [r for r in rows for _ in range(copies)], [f"q{i}" for i in range(len(rows)) for _ in range(copies)]


def test_clusters_of_identical_probes_give_the_intervals_of_their_questions():
    """Ten identical probes per question carry one question's information: resampled by question, every
    interval equals the interval of the questions alone (the same draws); resampled one by one it is
    about sqrt(10) too narrow."""
    first, second = _per_seed_scores([20])
    first3, second3 = _per_seed_scores([30, 20, 10])
    for a, b in ((first, second), (first3, second3)):
        dup_a, clusters = _as_clusters(a, 10)
        dup_b, _ = _as_clusters(b, 10)
        plain, grouped = stats.seed_level_comparison(a, b), stats.seed_level_comparison(dup_a, dup_b, clusters=clusters)
        assert (grouped["low"], grouped["high"], grouped["p"]) == pytest.approx((plain["low"], plain["high"], plain["p"]))
        assert grouped["items"] == 10 * plain["items"] and "questions" in grouped["covers"]
        one_by_one = stats.seed_level_comparison(dup_a, dup_b)
        narrowing = 0.5 if len(a[0]) == 1 else 1.0  # three seeds that disagree: the t-interval over seeds rules
        assert one_by_one["high"] - one_by_one["low"] <= narrowing * (grouped["high"] - grouped["low"])
    scores, clusters = _as_clusters([[x] for x in [1, 0, 1, 1, 0, 0, 1, 0] * 2], 10)
    alone = stats.seed_cluster_interval([(1.0, [[x] for x in [1, 0, 1, 1, 0, 0, 1, 0] * 2], [f"q{i}" for i in range(16)])])
    grouped = stats.seed_cluster_interval([(1.0, scores, clusters)])
    assert (grouped["low"], grouped["high"]) == pytest.approx((alone["low"], alone["high"]))
    assert grouped["covers"] == "items and questions" and grouped["mean"] == 0.5
    test_set = [[1]] * 30 + [[0]] * 70
    d = stats.seed_cluster_interval([(1.0, test_set, None), (-1.0, scores, clusters)])
    assert d["mean"] == pytest.approx(0.3 - 0.5) and d["low"] < d["mean"] < d["high"]


def test_a_cluster_bootstrap_weighs_questions_by_their_probes_hand_computed():
    """Question a: three probes all right, question b: one probe wrong. Each resample draws two
    questions: {a, a} -> 1, {b, b} -> 0, {a, b} -> 3/4 (the mean over the probes drawn), with chances
    1/4, 1/4, 1/2: the 95% interval runs from 0 to 1. When every question scores 1/2, every resample
    does too. Below ``min_clusters`` questions there is no interval at all."""
    two = stats.seed_cluster_interval([(1.0, [[1], [1], [1], [0]], ["a", "a", "a", "b"])], min_clusters=1)
    assert (two["mean"], two["low"], two["high"]) == (0.75, 0.0, 1.0)
    half = stats.seed_cluster_interval([(1.0, [[1], [0], [0], [1], [1], [0]], list("aabbcc"))], min_clusters=1)
    assert (half["low"], half["high"]) == (0.5, 0.5)
    few = stats.seed_cluster_interval([(1.0, [[1], [1], [1], [0]], ["a", "a", "a", "b"])])
    assert few["mean"] == 0.75 and math.isnan(few["low"]) and few["covers"] == "no interval: 2 questions (fewer than 10)"
    cmp = stats.seed_level_comparison([[0]] * 6, [[1]] * 6, clusters=list("aaabbb"))  # one question's probes decide nothing
    assert cmp["diff"] == 1.0 and math.isnan(cmp["p"]) and cmp["covers"].startswith("no interval: 2 questions")
    with pytest.raises(ValueError, match="clusters name 2 items, the scores hold 3"):
        stats.seed_cluster_interval([(1.0, [[1], [0], [1]], ["a", "b"])], min_clusters=1)


def test_the_seed_and_question_interval_over_seeds_is_never_narrower_than_the_t_interval():
    """Three seeds whose deficits are 28, 30 and 32 points: Student-t gives 30 +- 4.97; seeds that agree
    item by item keep the items' and questions' noise (the bootstrap), as for the comparisons."""
    questions = [f"q{i // 5}" for i in range(100)]
    test = [[int(i < 60 - 2 * s) for s in range(3)] for i in range(100)]
    ei = [[int(i < 30 - 4 * s) for s in range(3)] for i in range(100)]
    r = stats.seed_cluster_interval([(1.0, test, None), (-1.0, ei, questions)])
    assert [round(100 * v) for v in r["per_seed"]] == [30, 32, 34] and r["seeds"] == 3
    _, t_low, t_high = stats.seed_interval(r["per_seed"])
    assert r["low"] <= t_low and r["high"] >= t_high and r["covers"] == "seeds, items and questions"
    agree = stats.seed_cluster_interval([(1.0, [[x] * 3 for x in [1, 0] * 50], None)])
    one = stats.seed_cluster_interval([(1.0, [[x] for x in [1, 0] * 50], None)])
    assert agree["high"] - agree["low"] == pytest.approx(one["high"] - one["low"], rel=0.15) and agree["low"] < 0.5
