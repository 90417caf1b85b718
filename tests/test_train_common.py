"""The one train-and-save path every trainer uses, with a stand-in trainer (no model)."""
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from exgrpo_utils.train.common import Built, tracking_callbacks, train_and_save
from exgrpo_utils.train.settings import SFTSettings


@dataclass
class FakeState:
    global_step: int = 0
    log_history: list = field(default_factory=list)


class FakeTrainer:
    def __init__(self, steps):
        self.steps, self.state, self.callbacks, self.trained = steps, FakeState(), [], 0

    def add_callback(self, cb):
        self.callbacks.append(cb)

    def train(self, resume_from_checkpoint=None):
        self.trained += 1
        self.state.global_step = self.steps
        self.state.log_history = [{"step": self.steps, "num_tokens": 123.0}]

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
    kw = dict(out_dir=tmp_path, summary_name="s.json", settings=settings, identity={"model": "m"}, max_steps=3)
    summary = train_and_save(build=build, report_to=("tensorboard",), **kw)
    assert calls == [1] and summary["steps"] == 3 and summary["train_tokens"] == 123 and summary["rows"] == 7
    assert summary["model"] == "m" and summary["settings"]["max_steps"] == 3 and (tmp_path / "final" / "tok").exists()
    assert json.loads((tmp_path / "s.json").read_text()) == json.loads(json.dumps(summary))
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents*"))
    assert train_and_save(build=build, **kw) == json.loads(json.dumps(summary)) and calls == [1]  # reused, not built
    other = dict(kw, identity={"model": "other"})
    train_and_save(build=build, **other)
    assert calls == [1, 1]  # another model: trained again


def test_trackers_are_checked(tmp_path):
    assert tracking_callbacks((), tmp_path) == []
    with pytest.raises(ValueError, match="unknown tracker.*known: tensorboard, wandb, trackio"):
        tracking_callbacks(("mlflowx",), tmp_path)
