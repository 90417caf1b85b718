import json

import pytest

from exgrpo_utils.data import prompts
from exgrpo_utils.data.datasets import Example
from exgrpo_utils.evaluate import evaluation, stats
from exgrpo_utils.evaluate.evaluation import EvalIdentity, SettingsMismatchError
from exgrpo_utils.models.generation import Completion, SamplingConfig


class FakeGenerator:
    """Answers '<gold>' for even-numbered items, a wrong number otherwise; can die after N batches."""

    name = "fake"

    def __init__(self, die_after_batches=None):
        self.calls, self.seen, self.die_after = 0, [], die_after_batches

    def render(self, messages):
        return messages[-1]["content"]

    def generate(self, batch, sampling):
        if self.die_after is not None and self.calls >= self.die_after:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        outs = []
        for m in batch:
            idx = int(m[-1]["content"].split()[1])
            self.seen.append(idx)
            outs.append(Completion(f"The answer is {idx if idx % 2 == 0 else idx + 1000}.", 5, True))
        return outs


def _examples(n):
    return [Example(f"q{i}", "gsm8k", f"Item {i} question", str(i)) for i in range(n)]


def test_wilson_interval_hand_computed():
    lo, hi = stats.wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = stats.wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    assert stats.wilson_interval(0, 0)[0] != stats.wilson_interval(0, 0)[0]  # nan


def test_mean_interval_hand_computed():
    lo, hi = stats.mean_interval([0, 0], [10, 10])
    assert lo == 0.0 and hi == pytest.approx(0.1296, abs=1e-4)
    lo, hi = stats.mean_interval([5, 10], [10, 10])  # mean 0.75
    p1, p2 = 7 / 14, 12 / 14
    half = 1.959964 * ((p1 * (1 - p1) / 14 + p2 * (1 - p2) / 14) / 4) ** 0.5
    assert (lo, hi) == (pytest.approx(0.75 - half), pytest.approx(min(1.0, 0.75 + half)))


def test_interrupted_evaluation_resumes_without_duplicates(tmp_path):
    exs = _examples(10)
    out = tmp_path / "gsm8k.jsonl"
    sampling = SamplingConfig(max_new_tokens=8)
    dying = FakeGenerator(die_after_batches=2)
    with pytest.raises(KeyboardInterrupt):
        evaluation.evaluate_examples(dying, exs, out, sampling=sampling, batch_size=3, progress=False)
    assert len(out.read_text().splitlines()) == 6
    resumed = FakeGenerator()
    recs = evaluation.evaluate_examples(resumed, exs, out, sampling=sampling, batch_size=3, progress=False)
    assert sorted(resumed.seen + dying.seen) == list(range(10))  # each item generated exactly once
    assert [r["id"] for r in recs] == [e.id for e in exs]
    lines = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(lines) == 10 and len({r["id"] for r in lines}) == 10
    score = evaluation.score_records("gsm8k", recs)
    assert (score.n, score.correct, score.correct_strict) == (10, 5, 5)
    again = FakeGenerator()
    evaluation.evaluate_examples(again, exs, out, sampling=sampling, batch_size=3, progress=False)
    assert again.calls == 0


def test_resume_with_other_settings_is_refused(tmp_path):
    evaluation.check_settings(tmp_path, EvalIdentity(model="m", max_new_tokens=8))
    evaluation.check_settings(tmp_path, EvalIdentity(model="m", max_new_tokens=8))
    with pytest.raises(SettingsMismatchError, match="max_new_tokens"):
        evaluation.check_settings(tmp_path, EvalIdentity(model="m", max_new_tokens=16))


def test_stored_records_are_rescored_with_the_current_scorer(tmp_path):
    exs = _examples(2)
    out = tmp_path / "gsm8k.jsonl"
    prompt = FakeGenerator().render(prompts.messages_for(exs[0]))
    stale = {"id": "q0", "dataset": "gsm8k", "answer": "0", "prompt": prompt, "completion": "The answer is 0.",
             "n_tokens": 3, "finished": True, "extracted_strict": None, "extracted_flexible": None,
             "correct_strict": False, "correct_flexible": False}
    out.write_text(json.dumps(stale) + "\n")
    gen = FakeGenerator()
    recs = evaluation.evaluate_examples(gen, exs, out, sampling=SamplingConfig(), batch_size=4, progress=False)
    assert recs[0]["correct_flexible"] is True and gen.seen == [1]
    assert json.loads(out.read_text().splitlines()[0])["correct_strict"] is True


def test_changed_gold_is_refused(tmp_path):
    out = tmp_path / "gsm8k.jsonl"
    out.write_text(json.dumps({"id": "q0", "answer": "999", "completion": "x"}) + "\n")
    with pytest.raises(SettingsMismatchError, match="data or the prompt changed"):
        evaluation.evaluate_examples(FakeGenerator(), _examples(1), out, sampling=SamplingConfig(), progress=False)


def test_changed_question_with_the_same_gold_is_refused(tmp_path):
    """Regenerated data (say the synthetic set's difficulty changed) can keep an item's id and gold:
    its stored completion answered another question and must not be reused."""
    out = tmp_path / "gsm8k.jsonl"
    evaluation.evaluate_examples(FakeGenerator(), _examples(2), out, sampling=SamplingConfig(), progress=False)
    changed = [Example("q0", "gsm8k", "Item 0 question, now another one", "0"), _examples(2)[1]]
    with pytest.raises(SettingsMismatchError, match="another prompt than the one rendered now"):
        evaluation.evaluate_examples(FakeGenerator(), changed, out, sampling=SamplingConfig(), progress=False)


def test_question_shortened_inside_the_stored_prompt_is_refused(tmp_path):
    """A question cut down to its last sentence is still a substring of the stored prompt (the check
    the kit made before): the stored prompt must equal the rendered one, not merely contain it."""
    out = tmp_path / "gsm8k.jsonl"
    long = [Example("q0", "gsm8k", "Item 0 question. Ann has 3 pens and buys 2 more. How many now?", "0")]
    evaluation.evaluate_examples(FakeGenerator(), long, out, sampling=SamplingConfig(), progress=False)
    short = [Example("q0", "gsm8k", "Item 0 question. How many now?", "0")]
    with pytest.raises(SettingsMismatchError, match="record q0 has another prompt.*first difference at character"):
        evaluation.evaluate_examples(FakeGenerator(), short, out, sampling=SamplingConfig(), progress=False)
    assert len(out.read_text().splitlines()) == 1  # nothing appended, nothing lost


def test_fresh_moves_a_file_asked_other_questions_aside_and_evaluates_again(tmp_path):
    """An EI-Test rebuilt from other inputs keeps its item ids (<question>/<rule>) with other probes:
    under ``fresh`` the old records are moved aside, kept, and the new items evaluated."""
    out = tmp_path / "arith-ei.jsonl"
    old = [Example("q0/inversion", "arith-ei", "Item 0 old probe: how many pens?", "0", meta={"answer_type": "number"})]
    evaluation.evaluate_examples(FakeGenerator(), old, out, sampling=SamplingConfig(), progress=False)
    new = [Example("q0/inversion", "arith-ei", "Item 0 new probe: how many books?", "0", meta={"answer_type": "number"})]
    logged = []
    recs = evaluation.evaluate_pooled(FakeGenerator(), {"": (new, out)}, sampling=SamplingConfig(), progress=False,
                                      fresh=True, log=logged.append)[""]
    assert [r["prompt"].count("new probe") for r in recs] == [1] and len(out.read_text().splitlines()) == 1
    assert "old probe" in (tmp_path / "arith-ei.jsonl.replaced-1").read_text() and "moved it aside" in logged[0]


def test_another_system_prompt_is_refused(tmp_path):
    out = tmp_path / "gsm8k.jsonl"
    evaluation.evaluate_examples(_SystemAware(), _examples(1), out, sampling=SamplingConfig(), progress=False)
    with pytest.raises(SettingsMismatchError, match="another prompt"):
        evaluation.evaluate_examples(_SystemAware(), _examples(1), out, sampling=SamplingConfig(), progress=False,
                                     system_prompt="Be brief.")


class _SystemAware(FakeGenerator):
    def render(self, messages):
        return " | ".join(m["content"] for m in messages)


def test_suite_summary_has_per_dataset_rows_and_averages(tmp_path):
    exs = {"gsm8k": _examples(4), "gsm8k_rev": [Example(f"r{i}", "gsm8k_rev", f"Item {i} q", str(i)) for i in range(4)]}
    table = evaluation.evaluate_suite(FakeGenerator(), exs, tmp_path, settings=EvalIdentity(model="fake"),
                                      batch_size=2, label="zero-shot", progress=False)
    rows = dict(zip(table["dataset"], table["accuracy"]))
    assert rows == {"gsm8k": 50.0, "gsm8k_rev": 50.0, "held-in-avg8": 50.0, "ood-avg4": 50.0}
    assert (tmp_path / "summary.csv").exists()
    assert table.loc[table["dataset"] == "held-in-avg8", "role"].item() == "average of 1/8"


def test_paper_layout_puts_paper_numbers_beside_ours(tmp_path):
    from exgrpo_utils.report import paper_layout

    exs = {"gsm8k": _examples(4)}
    table = evaluation.evaluate_suite(FakeGenerator(), exs, tmp_path, settings=EvalIdentity(model="fake"),
                                      batch_size=2, label="zero-shot", progress=False)
    layout = paper_layout.paper_layout([table], student="fake")
    ours = layout[layout["source"] == "ours"].iloc[0]
    assert ours["GSM8K"] == 50.0 and ours["Avg (held-in)"] == 50.0
    qwen = layout[(layout["student"] == "Qwen2.5-7B-Instruct") & (layout["method"] == "ExGRPO")].iloc[0]
    assert qwen["Avg (held-in)"] == 82.54 and qwen["Avg (OOD)"] == 82.34
    paths = paper_layout.write_eval_report(table, tmp_path, student="fake")
    assert all(p.exists() for p in paths.values())
    assert "| fake | zero-shot | ours |" in paths["table_md"].read_text()


def test_pooled_evaluation_shares_batches_and_resumes(tmp_path):
    """Items of several datasets share batches; each record lands in its own file; a kill resumes."""
    a = [Example(f"a{i}", "gsm8k", f"Item {i} question", str(i)) for i in range(0, 5)]
    b = [Example(f"b{i}", "gsm8k_rev", f"Item {i} question", str(i)) for i in range(5, 9)]
    jobs = {"gsm8k": (a, tmp_path / "gsm8k.jsonl"), "gsm8k_rev": (b, tmp_path / "gsm8k_rev.jsonl")}
    sampling = SamplingConfig(max_new_tokens=8)
    dying = FakeGenerator(die_after_batches=1)
    with pytest.raises(KeyboardInterrupt):
        evaluation.evaluate_pooled(dying, jobs, sampling=sampling, batch_size=4, progress=False)
    resumed = FakeGenerator()
    out = evaluation.evaluate_pooled(resumed, jobs, sampling=sampling, batch_size=4, progress=False)
    assert resumed.calls == 2  # 9 items, 4 done before the kill: 5 left = 2 batches of up to 4
    assert sorted(dying.seen + resumed.seen) == list(range(9))
    assert [r["id"] for r in out["gsm8k"]] == [e.id for e in a] and [r["id"] for r in out["gsm8k_rev"]] == [e.id for e in b]
    for name, (exs, path) in jobs.items():
        lines = [json.loads(l) for l in path.read_text().splitlines()]
        assert sorted(r["id"] for r in lines) == sorted(e.id for e in exs)  # no record in the wrong file, none twice


def test_resolve_models(tmp_path):
    from exgrpo_utils.infra.layout import RunLayout

    layout = RunLayout.of("r", tmp_path)
    layout.final_model("sft").mkdir(parents=True)
    got = evaluation.resolve_models(["zero-shot", "sft", "mine=train/sft/final", "reg=qwen2.5-7b-instruct"], layout,
                                    "smollm2-135m-instruct")
    assert got == {"zero-shot": "smollm2-135m-instruct", "sft": str(layout.final_model("sft")),
                   "mine": str(layout.final_model("sft")), "reg": "qwen2.5-7b-instruct"}
    with pytest.raises(FileNotFoundError, match="'exgrpo'.*did its training finish"):
        evaluation.resolve_models(["exgrpo"], layout, "s")
    with pytest.raises(FileNotFoundError, match="'x': 'nope' is neither"):
        evaluation.resolve_models(["x=nope"], layout, "s")


def test_settings_compare_portable_model_paths(tmp_path, monkeypatch):
    from exgrpo_utils.infra.paths import PROJECT_ROOT, portable, resolve

    monkeypatch.delenv("EXGRPO_RESULTS_DIR", raising=False)
    monkeypatch.setenv("EXGRPO_CACHE_DIR", str(tmp_path / "cache"))
    inside = PROJECT_ROOT / "results" / "runs" / "x" / "final"
    assert portable(inside) == "runs/x/final"  # relative to the results root
    assert portable(PROJECT_ROOT / "notebooks" / "00_setup.ipynb") == "notebooks/00_setup.ipynb"
    assert portable(tmp_path / "cache" / "models" / "m") == "$EXGRPO_CACHE_DIR/models/m"
    assert resolve("$EXGRPO_CACHE_DIR/models/m") == str(tmp_path / "cache" / "models" / "m")
    assert resolve("runs/cpu/paper") == str(PROJECT_ROOT / "results" / "runs" / "cpu" / "paper")
    assert portable("smollm2-135m-instruct") == "smollm2-135m-instruct" == resolve("smollm2-135m-instruct")
    assert portable("/elsewhere/model") == "/elsewhere/model"
    (tmp_path / "config.json").write_text(json.dumps({**evaluation.asdict(EvalIdentity(model="x")), "model": str(inside)}))
    evaluation.check_settings(tmp_path, EvalIdentity(model="runs/x/final"))  # old absolute record: same model
    with pytest.raises(SettingsMismatchError):
        evaluation.check_settings(tmp_path, EvalIdentity(model="runs/y/final"))


def test_evaluations_are_keyed_by_the_weights_not_the_path(tmp_path):
    """Retrain into the same folder: the evaluation of the first model is not returned for the second."""
    model = tmp_path / "train" / "sft" / "final"
    model.mkdir(parents=True)
    (model / "adapter_model.safetensors").write_bytes(b"first weights")
    out = tmp_path / "eval"
    kw = dict(model=str(model), datasets=["arith"], out_dir=out, limit_per_dataset=4, max_new_tokens=8, batch_size=4)
    gen = ArithGenerator()
    evaluation.run_evaluation(generator=gen, **kw)
    assert gen.calls == 1
    evaluation.run_evaluation(generator=gen, **kw)  # same weights: reused
    assert gen.calls == 1
    (model / "adapter_model.safetensors").write_bytes(b"retrained weights")
    with pytest.raises(SettingsMismatchError, match="model_fingerprint.*another run name.*fresh=true"):
        evaluation.run_evaluation(generator=gen, **kw)
    evaluation.run_evaluation(generator=gen, fresh=True, **kw)
    assert gen.calls == 2 and (tmp_path / "eval.replaced-1" / "arith.jsonl").exists()


def test_an_evaluation_without_a_model_fingerprint_is_not_reused(tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    legacy = {"model": "smollm2-135m-instruct", "max_new_tokens": 8, "prompt_version": "eval-v1", "system_prompt": None,
              "dtype": "auto", "backend": "transformers"}
    (out / "config.json").write_text(json.dumps(legacy))
    with pytest.raises(SettingsMismatchError, match="model_fingerprint"):
        evaluation.run_evaluation(model="smollm2-135m-instruct", datasets=["arith"], out_dir=out, limit_per_dataset=2,
                                  max_new_tokens=8, generator=ArithGenerator())


class ArithGenerator:
    name = "arith"

    def __init__(self):
        self.calls = 0

    def render(self, messages):
        return messages[-1]["content"]

    def generate(self, batch, sampling):
        self.calls += 1
        return [Completion("The answer is 3.", 5, True) for _ in batch]
