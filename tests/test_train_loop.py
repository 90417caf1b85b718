"""The one train-and-save path every trainer uses, with a stand-in trainer (no model)."""
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from exgrpo_utils.infra.fingerprint import StaleOutputError
from exgrpo_utils.infra.runsettings import RunSettings
from exgrpo_utils.models.registry import model_identity
from exgrpo_utils.train.loop import Built, checkpoint_complete, last_checkpoint, tracking_callbacks, train_and_save
from exgrpo_utils.train.settings import ExGRPOSettings, SFTSettings
from exgrpo_utils.train.trainlog import JsonlLogCallback


@dataclass
class FakeState:
    global_step: int = 0
    log_history: list = field(default_factory=list)
    epoch: float = 0.0
    num_input_tokens_seen: int = 0
    is_world_process_zero: bool = True


class FakeAccelerator:
    at_barrier = None  # what the other processes do while this one waits (a test sets it)

    def wait_for_everyone(self):
        if FakeAccelerator.at_barrier:
            FakeAccelerator.at_barrier()


class FakeTrainer:
    def __init__(self, steps):
        self.steps, self.callbacks, self.trained = steps, [], 0
        self.state = FakeState(is_world_process_zero=os.environ.get("RANK", "0") == "0")
        self.accelerator = FakeAccelerator()

    def add_callback(self, cb):
        self.callbacks.append(cb)

    def train(self, resume_from_checkpoint=None):
        self.trained += 1
        logs = [cb for cb in self.callbacks if isinstance(cb, JsonlLogCallback)]  # the kit's log, as the trainer calls it
        for cb in logs:
            cb.on_train_begin(None, self.state, None)
        self.state.global_step = self.steps
        self.state.log_history = [{"step": self.steps, "num_tokens": 123.0}]
        for cb in logs:
            cb.on_log(None, self.state, None, logs=self.state.log_history[-1])

    def save_model(self, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "weights").write_text("w")


class FakeTok:
    def save_pretrained(self, path):
        (Path(path) / "tok").write_text("t")


def test_train_and_save_trains_saves_and_reuses(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return Built(FakeTrainer(3), FakeTok(), {"rows": 7})

    settings = SFTSettings(max_steps=3)
    kw = dict(out_dir=tmp_path, summary_name="s.json", settings=settings, identity={"model": "m"}, data="d1", max_steps=3)
    summary = train_and_save(build=build, report_to=("tensorboard",), **kw)
    assert calls == [1] and summary["steps"] == 3 and summary["train_tokens"] == 123 and summary["rows"] == 7
    assert summary["model"] == "m" and summary["settings"]["max_steps"] == 3 and (tmp_path / "final" / "tok").exists()
    assert json.loads((tmp_path / "s.json").read_text()) == json.loads(json.dumps(summary))
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents*"))
    recorded = json.loads((tmp_path / "final.identity.json").read_text())  # the model, for machines without it
    assert recorded == model_identity(str(tmp_path / "final")) and set(recorded) == {"weights"}
    assert train_and_save(build=build, **kw) == json.loads(json.dumps(summary)) and calls == [1]  # reused, not built
    with pytest.raises(StaleOutputError, match="models.model.name: 'm' -> 'other'"):
        train_and_save(build=build, **dict(kw, identity={"model": "other"}))  # another model: refused, not reused
    assert calls == [1]


def test_trackers_are_checked(tmp_path):
    assert tracking_callbacks((), tmp_path) == []
    with pytest.raises(ValueError, match="unknown tracker.*known: tensorboard, wandb, trackio"):
        tracking_callbacks(("mlflowx",), tmp_path)


def _kw(tmp_path, **over):
    kw = dict(out_dir=tmp_path / "train" / "sft", summary_name="sft_summary.json", settings=SFTSettings(max_steps=3),
              identity={"model": "m"}, data="data-of-12-questions", max_steps=3)
    kw.update(over)
    return kw


def _builder(calls):
    def build():
        calls.append(1)
        return Built(FakeTrainer(3), FakeTok())
    return build


def test_training_is_not_reused_after_its_data_changed(tmp_path):
    """runner --set ei_n_items=20 rewrites the probe data: the finished SFT on the old data is not returned."""
    calls = []
    train_and_save(build=_builder(calls), **_kw(tmp_path))
    with pytest.raises(StaleOutputError, match=r"train/sft holds a sft training made from other inputs \(data: "
                                               r"'data-of-12-questions' -> 'data-of-20-questions'\)"):
        train_and_save(build=_builder(calls), **_kw(tmp_path, data="data-of-20-questions"))
    assert calls == [1]


def test_a_checkpoint_of_other_settings_is_neither_reused_nor_resumed(tmp_path):
    """A run killed part-way with other settings: its checkpoint must not be loaded under the new ones."""
    kw = _kw(tmp_path)
    calls = []
    train_and_save(build=_builder(calls), **kw)
    (kw["out_dir"] / "final").rename(kw["out_dir"] / "checkpoints")  # as if killed before saving final
    new = _kw(tmp_path, settings=SFTSettings(max_steps=3, epochs=2.0))
    with pytest.raises(StaleOutputError, match=r"settings.epochs: 3.0 -> 2.0.*another run name.*fresh=true"):
        train_and_save(build=_builder(calls), **new)
    summary = train_and_save(build=_builder(calls), fresh=True, **new)  # moved aside, trained from scratch
    assert calls == [1, 1] and summary["resumed_from"] is None and summary["settings"]["epochs"] == 2.0
    aside = tmp_path / "train" / "sft.replaced-1"
    assert (aside / "checkpoints").exists() and (aside / "fingerprint.json").exists()  # kept, never deleted


def test_a_folder_without_a_fingerprint_is_refused(tmp_path):
    kw = _kw(tmp_path)
    kw["out_dir"].mkdir(parents=True)
    (kw["out_dir"] / "sft_summary.json").write_text("{}")
    with pytest.raises(StaleOutputError, match="without a fingerprint"):
        train_and_save(build=_builder([]), **kw)


def test_a_second_writer_of_the_same_folder_is_refused(tmp_path):
    from exgrpo_utils.infra.files import FolderBusyError, folder_lock

    with folder_lock(tmp_path / "x"):
        with pytest.raises(FolderBusyError, match=r"x: process \d+ is writing this training now"):
            train_and_save(build=_builder([]), **_kw(tmp_path, out_dir=tmp_path / "x"))


def test_a_new_checkpoint_interval_does_not_make_a_finished_run_stale(tmp_path):
    calls = []
    train_and_save(build=_builder(calls), **_kw(tmp_path))
    again = train_and_save(build=_builder(calls), **_kw(tmp_path, settings=SFTSettings(max_steps=3, save_steps=7)))
    assert calls == [1] and again["steps"] == 3  # save_steps is "speed only": not part of what the run is


def test_a_stamp_without_output_is_no_output(tmp_path):
    """A run that failed while building (nothing trained) does not block a run with other settings."""
    def failing():
        raise RuntimeError("out of memory while loading")

    with pytest.raises(RuntimeError, match="out of memory"):
        train_and_save(build=failing, **_kw(tmp_path))
    calls = []
    train_and_save(build=_builder(calls), **_kw(tmp_path, settings=SFTSettings(max_steps=3, epochs=1.0)))
    assert calls == [1]


def test_fresh_keeps_the_folder_locked(tmp_path):
    """The lock sits beside the folder, so moving the folder aside does not release it."""
    from exgrpo_utils.infra.files import FolderBusyError, folder_lock

    out = tmp_path / "train" / "sft"
    train_and_save(build=_builder([]), **_kw(tmp_path))
    with folder_lock(out, "training"):
        with pytest.raises(FolderBusyError):
            train_and_save(build=_builder([]), fresh=True, **_kw(tmp_path, data="other"))
    assert not (tmp_path / "train" / "sft.replaced-1").exists() and (tmp_path / "train" / ".sft.lock").exists()


def test_other_processes_of_a_distributed_launch_neither_lock_nor_stamp(tmp_path, monkeypatch):
    from exgrpo_utils.infra.files import folder_lock

    out = tmp_path / "train" / "sft"
    monkeypatch.setenv("RANK", "1")
    written_by_main = {"steps": 3, "by": "process 0"}
    monkeypatch.setattr(FakeAccelerator, "at_barrier", staticmethod(
        lambda: (out / "sft_summary.json").write_text(json.dumps(written_by_main))))
    with folder_lock(out, "training"):  # held by process 0
        summary = train_and_save(build=_builder([]), **_kw(tmp_path))
    assert summary == written_by_main  # the main process's summary, read after the barrier
    assert not (out / "fingerprint.json").exists() and not (out / "train_log.jsonl").exists()
    assert not (out / "final" / "tok").exists()  # the tokenizer is saved by the main process only


def test_rl_of_seed_k_starts_from_the_warm_up_of_seed_k(tmp_path, monkeypatch):
    from exgrpo_utils.experiments import methods, runs
    from exgrpo_utils.infra.layout import RunLayout

    seen = {}
    monkeypatch.setattr(runs, "train_exgrpo", lambda **kw: seen.setdefault("init", kw["init_model"]) and {"final": "x"})
    monkeypatch.setattr(runs.Context, "probe_records", lambda self, task: [{"id": "q"}])
    ctx = runs.Context.__new__(runs.Context)
    object.__setattr__(ctx, "layout", RunLayout.of("r", tmp_path))
    run = RunSettings(student="s", train_dataset="arith", report_to=())
    for name, value in dict(run=run, sft=SFTSettings(), rl=ExGRPOSettings()).items():
        object.__setattr__(ctx, name, value)
    done = {"sft": {"final": "sft-seed-0"}, "sft-s1": {"final": "sft-seed-1"}}
    runs._train_method(methods.METHODS["exgrpo"], 1, "arith", ctx, done)
    assert seen["init"] == "sft-seed-1"
    with pytest.raises(RuntimeError, match="exgrpo-s2 starts from sft-s2, which is not in this plan"):
        runs._train_method(methods.METHODS["exgrpo"], 2, "arith", ctx, done)


def _checkpoint(root, step, *, state=True, weights=True, state_text=None):
    path = root / "checkpoints" / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if weights:
        (path / "adapter_model.safetensors").write_bytes(b"w")
    if state:
        (path / "trainer_state.json").write_text(state_text if state_text is not None else json.dumps({"global_step": step}))
    return path


def test_an_interrupted_checkpoint_is_set_aside_and_the_one_before_resumed(tmp_path):
    """A kill (or a full disk) while checkpoint-N is written leaves it without a valid trainer_state.json
    (written last) or without weights: resuming uses the newest complete one, the rest is moved aside."""
    _checkpoint(tmp_path, 1)
    _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 3, state_text='{"global_step": 3, "log_hist')  # cut off mid-write
    _checkpoint(tmp_path, 4, state=False)  # killed before trainer_state.json
    _checkpoint(tmp_path, 10, weights=False)  # weights missing
    said = []
    assert last_checkpoint(tmp_path, log=said.append) == str(tmp_path / "checkpoints" / "checkpoint-2")
    aside = tmp_path / "incomplete-checkpoints"
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoint-10", "checkpoint-3", "checkpoint-4"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2"]
    assert len(said) == 3 and all("incomplete checkpoint" in s for s in said)
    # a later interruption of the same step is set aside beside the first, nothing overwritten
    _checkpoint(tmp_path, 4, state=False)
    assert last_checkpoint(tmp_path, log=said.append).endswith("checkpoint-2")
    assert (aside / "checkpoint-4").exists() and (aside / "checkpoint-4.1").exists()


def test_other_processes_pass_over_incomplete_checkpoints_without_moving_them(tmp_path):
    _checkpoint(tmp_path, 1)
    _checkpoint(tmp_path, 2, state=False)
    assert last_checkpoint(tmp_path, set_aside=False).endswith("checkpoint-1")
    assert (tmp_path / "checkpoints" / "checkpoint-2").exists() and not (tmp_path / "incomplete-checkpoints").exists()
    assert checkpoint_complete(tmp_path / "checkpoints" / "checkpoint-1")
    assert not checkpoint_complete(tmp_path / "checkpoints" / "checkpoint-2")
    (tmp_path / "checkpoints" / "checkpoint-1" / "trainer_state.json").write_text(json.dumps({"global_step": 7}))
    assert not checkpoint_complete(tmp_path / "checkpoints" / "checkpoint-1")  # the state of another step
    assert last_checkpoint(tmp_path / "nowhere") is None


def test_a_resumed_call_logs_the_whole_runs_token_count_and_loss(tmp_path):
    """TRL's num_tokens restarts at zero in a resumed call: the log adds what the checkpoint had reached,
    and the summary's loss averages every logged step of the run, not only the resumed call's."""
    from types import SimpleNamespace

    from exgrpo_utils.infra.files import read_log_jsonl
    from exgrpo_utils.train.loop import curve_loss, trained_tokens
    from exgrpo_utils.train.trainlog import JsonlLogCallback

    path = tmp_path / "train_log.jsonl"
    first = JsonlLogCallback(path)
    first.on_train_begin(None, SimpleNamespace(global_step=0, is_world_process_zero=True), None)
    for step, (loss, tokens) in enumerate([(2.0, 700), (1.0, 1400), (0.5, 2100)], start=1):  # killed after step 3
        first.on_log(None, SimpleNamespace(global_step=step, epoch=step / 4, num_input_tokens_seen=0, is_world_process_zero=True), None,
                     logs={"loss": loss, "num_tokens": tokens})
    resumed = JsonlLogCallback(path)  # from checkpoint-2: step 3 will be logged again
    resumed.on_train_begin(None, SimpleNamespace(global_step=2, is_world_process_zero=True), None)
    for step, (loss, tokens) in [(3, (0.5, 700)), (4, (0.5, 1400))]:
        resumed.on_log(None, SimpleNamespace(global_step=step, epoch=step / 4, num_input_tokens_seen=0, is_world_process_zero=True), None,
                       logs={"loss": loss, "num_tokens": tokens})
    curve = read_log_jsonl(path)
    assert [r["step"] for r in curve] == [1, 2, 3, 4]
    assert [r["num_tokens"] for r in curve] == [700, 1400, 2100, 2800]
    assert trained_tokens(curve) == 2800
    assert curve_loss(curve) == 1.0  # (2 + 1 + 0.5 + 0.5) / 4
    assert curve_loss([{"step": 2, "loss": 1.0}, {"step": 4, "loss": 3.0}]) == 2.0  # logged every 2 steps
    assert curve_loss([{"step": 1, "train_runtime": 3.0}]) is None


def test_question_visits_are_counted_and_a_resume_drops_the_steps_past_its_checkpoint(tmp_path):
    from types import SimpleNamespace

    from exgrpo_utils.train.trainlog import QUESTION_VISITS, QuestionVisitsLog, visit_summary

    assert visit_summary(tmp_path) == {}  # a training without the log (SFT)
    log = QuestionVisitsLog(tmp_path / QUESTION_VISITS)
    log.record(1, [["a", "b"], ["c"]], main=True)
    log.record(1, [["x"]], main=False)  # another process: writes nothing
    log.record(2, [["a"], ["d"]], main=True)
    log.record(3, [["b"], ["a"]], main=True)
    assert visit_summary(tmp_path) == {"question_visits": 7, "questions_visited": 4, "fewest_visits_per_question": 1}
    log.on_train_begin(None, SimpleNamespace(global_step=2, is_world_process_zero=True), None)  # resumed at step 2
    log.record(3, [["c"], ["d"]], main=True)
    # step 3 of the first call dropped (a 3 -> 2, b 2 -> 1), the resumed step 3 added (c 1 -> 2, d 1 -> 2)
    assert visit_summary(tmp_path) == {"question_visits": 7, "questions_visited": 4, "fewest_visits_per_question": 1}
