"""A long plan finished over several machines: a triple whose weights are not here is kept only when
its training and every evaluation of it are current (``experiments.kept``)."""
import json
import shutil

import pytest
from test_train_loop import FakeTok, FakeTrainer

from exgrpo_utils.data.datasets import Example
from exgrpo_utils.evaluate.evaluation import SettingsMismatchError, run_evaluation
from exgrpo_utils.experiments import kept
from exgrpo_utils.infra.fingerprint import read_stamp
from exgrpo_utils.models.generation import Completion
from exgrpo_utils.models.registry import record_identity
from exgrpo_utils.train.loop import Built, train_and_save
from exgrpo_utils.train.settings import SFTSettings


def _render(messages):
    return " | ".join(m["content"] for m in messages)


class EchoTokenizer:
    """Renders as the student's chat template would for these tests: the messages joined."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return _render(messages)


class Answering:
    """Answers each item with its own number, as a trained model would; counts what it generated."""

    name, streams = "answering", False

    def __init__(self):
        self.generated = 0

    def render(self, messages):
        return _render(messages)

    def generate(self, batch, sampling, **_):
        self.generated += len(batch)
        return [Completion(f"The answer is {m[-1]['content'].split()[1]}.", 5, True) for m in batch]


ITEMS = [Example(f"q{i}", "gsm8k", f"Item {i} question", str(i)) for i in range(6)]


@pytest.fixture
def finished(tmp_path, monkeypatch):
    """A finished training under a results root (stamp, summary, final model, recorded identity) and
    one evaluation of its model, as a machine that trained it leaves them."""
    monkeypatch.setenv("EXGRPO_RESULTS_DIR", str(tmp_path))
    monkeypatch.setattr(kept, "_tokenizer", lambda student: EchoTokenizer())
    folder = tmp_path / "runs" / "cpu" / "train" / "sft"
    summary = train_and_save(out_dir=folder, summary_name="sft_summary.json", settings=SFTSettings(max_steps=3),
                             identity={"model": "student"}, data="d1", max_steps=3,
                             build=lambda: Built(FakeTrainer(3), FakeTok(), {"rows": 7}))
    (folder / "final" / "model.safetensors").write_bytes(b"trained weights")  # FakeTrainer saves no weights
    record_identity(folder / "final")  # the weights written after the save: record their identity again
    evals = tmp_path / "runs" / "cpu" / "eval_task" / "sft"

    def evaluate(final, generator):
        return run_evaluation(model=final, datasets=[], extra={"toy": ITEMS}, out_dir=evals, generator=generator,
                              max_new_tokens=8, progress=False)

    answering = Answering()
    evaluate(summary["final"], answering)
    assert answering.generated == len(ITEMS)
    inputs = read_stamp(folder)["inputs"]
    return folder, summary, evaluate, inputs, evals


def _kept(folder, evaluate, planned, evals=None):
    evals = evals or folder.parent.parent / "eval_task" / "sft"
    return kept.kept_summary(folder, "sft_summary.json", planned=lambda: planned, evaluate=evaluate, student="student",
                             eval_dirs=[evals])


def test_a_current_training_without_its_weights_is_kept_and_generates_nothing(finished):
    folder, summary, evaluate, inputs, evals = finished
    assert _kept(folder, evaluate, inputs) is None  # its weights are here: the usual path reuses it
    shutil.rmtree(folder / "final")
    before = (evals / "toy.jsonl").read_text()
    assert _kept(folder, evaluate, inputs) == json.loads((folder / "sft_summary.json").read_text())
    assert (evals / "toy.jsonl").read_text() == before
    # the evaluation is rebuilt from the stored items alone, with the same scores
    table = evaluate(summary["final"], kept.RenderOnly("student"))
    assert float(table[table["dataset"] == "toy"]["accuracy"].iloc[0]) == 100.0


def test_a_stale_or_incomplete_training_or_evaluation_is_not_kept(finished):
    folder, summary, evaluate, inputs, evals = finished
    shutil.rmtree(folder / "final")
    # other settings than the stamp's: the trainer would stamp other inputs
    other = {**inputs, "settings": {**inputs["settings"], "learning_rate": 1.0}}
    assert _kept(folder, evaluate, other) is None and _kept(folder, evaluate, None) is None
    # an evaluation with an item missing would have to generate it: not kept, nothing written
    lines = (evals / "toy.jsonl").read_text().splitlines(keepends=True)
    (evals / "toy.jsonl").write_text("".join(lines[:-1]))
    assert _kept(folder, evaluate, inputs) is None
    assert (evals / "toy.jsonl").read_text() == "".join(lines[:-1])
    (evals / "toy.jsonl").write_text("".join(lines))
    assert _kept(folder, evaluate, inputs) is not None
    # an item asked another prompt than the one rendered now (the chat template changed)
    rows = [json.loads(line) for line in lines]
    rows[0]["prompt"] = "another prompt"
    (evals / "toy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SettingsMismatchError, match="toy.jsonl: record q0 has another prompt"):
        _kept(folder, evaluate, inputs)  # stopped as the usual path stops, before anything is trained
    (evals / "toy.jsonl").write_text("".join(lines))
    # the evaluation was of another model than the one the training recorded
    identity = folder / "final.identity.json"
    recorded = identity.read_text()
    identity.write_text(json.dumps({"weights": "another model"}))
    with pytest.raises(SettingsMismatchError, match="model_fingerprint"):
        _kept(folder, evaluate, inputs)
    # no identity recorded (a folder made before the kit recorded one): what the model was is unknown
    identity.unlink()
    assert _kept(folder, evaluate, inputs) is None
    identity.write_text(recorded)
    assert _kept(folder, evaluate, inputs) is not None
    # a precision left to the node that trains (a SLURM plan) is the stamp's
    assert _kept(folder, evaluate, {**inputs, "precision": None}) is not None
    # an evaluation the record needs that never started: not kept, and no folder stamped for this model
    never = folder.parent.parent / "eval_suite" / "sft"
    assert _kept(folder, evaluate, inputs, evals=never) is None and not never.exists()


def test_a_warm_up_trained_again_here_must_come_out_as_recorded(finished):
    """The identity recorded for a model not on this machine is what a retraining must reproduce: the
    same weights pass; other weights (other CPU arithmetic) stop the run, naming the training, before
    anything is evaluated or started from it."""
    folder, summary, *_ = finished
    final = folder / "final"
    assert kept.recorded_before(summary["final"]) is None  # its weights are here
    shutil.copytree(final, folder / "kept-aside")
    shutil.rmtree(final)
    before = kept.recorded_before(summary["final"])
    assert before == json.loads((folder / "final.identity.json").read_text())
    shutil.copytree(folder / "kept-aside", final)  # trained again: the same bits
    kept.check_retrained("sft", before, summary["final"])
    (final / "model.safetensors").write_bytes(b"other bits")
    with pytest.raises(kept.RetrainedDiffers, match="sft was trained again here .* other weights"):
        kept.check_retrained("sft", before, summary["final"])
    kept.check_retrained("sft", None, summary["final"])  # nothing was recorded for it: nothing to reproduce


def test_a_warm_up_that_a_method_of_the_plan_needs_is_not_kept():
    """Hand-made plan: seed 0 finished before (SFT, ExGRPO) and now adds ExGRPO without the bonus,
    which starts from SFT seed 0: that SFT must be trained again; seed 1 is kept whole; SFT + GRPO of
    seed 2 cannot be kept, so SFT seed 2 is trained again, while ExGRPO seed 2 may still be kept
    (checked again at its turn, against the retrained SFT)."""
    def rid(key, seed, task):
        return f"{key}-s{seed}"

    triples = [("arith", key, seed) for seed, keys in ((0, ("sft", "exgrpo", "exgrpo-nobonus")),
                                                      (1, ("sft", "sft-grpo", "exgrpo")), (2, ("sft", "sft-grpo", "exgrpo")))
               for key in keys]
    new = {"exgrpo-nobonus-s0", "sft-grpo-s2"}
    got = kept.keepable(triples, rid, lambda t, k, s: rid(k, s, t) not in new)
    assert got == {"exgrpo-s0", "sft-s1", "sft-grpo-s1", "exgrpo-s1", "exgrpo-s2"}
    # SKD trains from the base student: it needs no warm-up
    assert kept.keepable([("arith", "sft", 0), ("arith", "skd", 0)], rid, lambda t, k, s: k == "sft") == {"sft-s0"}


@pytest.mark.parametrize("run,preset", [("cpu", "cpu-full"), ("cpu-rl", "cpu-rl")])
def test_the_committed_cpu_run_is_kept_whole_on_a_machine_without_its_weights(tmp_path, monkeypatch, student_path,
                                                                               run, preset):
    """The committed results hold no weights (a fresh clone, the next part of a plan on another
    machine). Every trained (task, method, seed) of the committed cpu run (and of cpu-rl, which
    runs in parts too) is kept as it is: its stamp is
    what the trainer would stamp now, every evaluation is reused item by item with prompts rendered by
    the student's tokenizer, and each record comes out byte for byte, with nothing trained and no
    model loaded."""
    from exgrpo_utils import config
    from exgrpo_utils.experiments import runs
    from exgrpo_utils.infra.paths import PROJECT_ROOT

    # what git holds: a clone has no weights, whatever a run left in this working tree (.gitignore)
    shutil.copytree(PROJECT_ROOT / "results" / "runs" / run, tmp_path / "runs" / run,
                    ignore=shutil.ignore_patterns("checkpoints", "final", "init", "merged", "tensorboard"))
    monkeypatch.setenv("EXGRPO_RESULTS_DIR", str(tmp_path))
    from exgrpo_utils.train import loop

    train = runs._train_method

    def only_planned(*a, **k):  # training_inputs runs the trainer in planning mode: that trains nothing
        return train(*a, **k) if loop._PLANNING else pytest.fail("a kept triple was trained")

    monkeypatch.setattr(runs, "_train_method", only_planned)
    monkeypatch.setattr("exgrpo_utils.evaluate.evaluation.make_generator",
                        lambda *a, **k: pytest.fail("a model was loaded to evaluate"))
    params = config.for_notebook("05_experiments", config.resolve(config.load_preset(preset), run_name=run))
    ctx = runs.Context.from_params(params, check=False)
    stored = {p.name: p.read_bytes() for p in ctx.layout.records_dir.glob("*.json")}
    every_file = _files(tmp_path / "runs" / run)
    recs = [json.loads(b) for b in stored.values()]
    pairs = sorted({(r["key"], r["seed"]) for r in recs if r["status"] == "ok" and r["kind"] != "zero-shot"},
                   key=lambda p: (p[1], runs.METHODS[p[0]].kind == "rl"))  # warm-ups first, as methods.plan does
    assert {"sft", "sft-grpo", "exgrpo"} <= {k for k, _ in pairs}
    for key, seed in pairs:
        assert runs.kept_training(ctx, "arith", key, seed) is not None, (key, seed)
    runs.run_plan(pairs, replace_tasks(ctx, ("arith",)), log=lambda *_: None)
    assert {p.name: p.read_bytes() for p in ctx.layout.records_dir.glob("*.json")} == stored
    # nothing else the run holds was rewritten either (summaries, logs, per-item files)
    after = _files(tmp_path / "runs" / run)
    assert [p for p in every_file if after.get(p) != every_file[p]] == []


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


def replace_tasks(ctx, tasks):
    from dataclasses import replace

    return replace(ctx, experiments=replace(ctx.experiments, tasks=tasks))


def test_run_triple_stops_when_a_model_trained_again_here_differs_from_the_recorded_one(tmp_path, monkeypatch):
    from test_experiments import _fake_run

    from exgrpo_utils.experiments import runs

    ctx, trained, evaluated = _fake_run(tmp_path, monkeypatch)
    monkeypatch.setenv("EXGRPO_RESULTS_DIR", str(tmp_path))
    folder = ctx.layout.train_dir("sft")
    folder.mkdir(parents=True)
    final = "runs/run/train/sft/final"
    (folder / "sft_summary.json").write_text(json.dumps({"final": final}))
    (folder / "final.identity.json").write_text(json.dumps({"weights": "the committed run's"}))

    def retrain(*, out_dir, **_):
        (out_dir / "final").mkdir()
        (out_dir / "final" / "model.safetensors").write_bytes(b"this machine's bits")
        return {"final": final, "train_tokens": 10, "seconds": 1.0, "steps": 1}

    monkeypatch.setattr(runs, "train_sft", retrain)
    with pytest.raises(kept.RetrainedDiffers, match="sft was trained again here"):
        runs.run_triple("arith", "sft", 0, ctx, {}, log=lambda *_: None)
    assert evaluated == [] and not ctx.layout.record("sft").exists()
