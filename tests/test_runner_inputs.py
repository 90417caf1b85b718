"""The runner reruns a finished notebook when what it read changed (data files, the student's weights,
an earlier notebook of the run), says why, and ends with one line when a kernel dies or the results
folder cannot be written. papermill is replaced by a stand-in that records what ran."""
import json
from pathlib import Path

import pytest

from exgrpo_utils import runner


@pytest.fixture(autouse=True)
def converted_student(monkeypatch, tmp_path):
    """A stand-in for the converted embedded student (its identity is taken by content, converting
    it first when needed: these tests must not pay for a conversion)."""
    folder = tmp_path / "cache" / "models" / "smollm2-135m-instruct"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    monkeypatch.setenv("EXGRPO_CACHE_DIR", str(tmp_path / "cache"))
    return folder


@pytest.fixture
def fake_papermill(monkeypatch, tmp_path):
    import papermill

    ran: list[str] = []

    def execute(src, dst, **kwargs):
        ran.append(Path(src).stem)
        Path(dst).write_text("{}")

    monkeypatch.setattr(papermill, "execute_notebook", execute)
    monkeypatch.setenv("EXGRPO_RESULTS_DIR", str(tmp_path / "results"))
    return ran


@pytest.fixture
def data_copy(tmp_path, monkeypatch):
    root = tmp_path / "data"
    (root / "gsm8k").mkdir(parents=True)
    (root / "gsm8k" / "test.jsonl").write_text('{"question": "Ann has 3 pens. How many?", "answer": "3"}\n')
    monkeypatch.setenv("EXGRPO_DATA_DIR", str(root))
    return root


def _main(*args: str) -> None:
    assert runner.main(["--preset", "smoke", "--run-name", "r", *args]) == 0


def test_an_edited_data_file_makes_a_finished_notebook_run_again(fake_papermill, data_copy, capsys):
    """The issue's case: EXGRPO_DATA_DIR pointed at an edited copy of the data, and every notebook was
    skipped with exit 0 (the runner compared parameters alone)."""
    _main("--only", "04_evaluate")
    _main("--only", "04_evaluate")
    assert fake_papermill == ["04_evaluate"]  # finished, same inputs: skipped
    capsys.readouterr()
    (data_copy / "gsm8k" / "test.jsonl").write_text('{"question": "How many?", "answer": "3"}\n')
    _main("--only", "04_evaluate")
    assert fake_papermill == ["04_evaluate"] * 2
    assert "its inputs changed (data.gsm8k/test.jsonl:" in capsys.readouterr().out


def test_a_rerun_upstream_notebook_makes_the_later_one_run_again(fake_papermill, data_copy, capsys):
    """The issue's case: after fresh=true redid SFT, `--only 03_exgrpo` skipped although its starting
    model had changed. A notebook's inputs name the finished run of each earlier notebook it read."""
    _main("--only", "02_sft", "03_exgrpo")
    _main("--only", "03_exgrpo")
    assert fake_papermill == ["02_sft", "03_exgrpo"]
    _main("--only", "02_sft", "--force")
    capsys.readouterr()
    _main("--only", "03_exgrpo")
    assert fake_papermill[-2:] == ["02_sft", "03_exgrpo"]
    assert "its inputs changed (upstream.02_sft:" in capsys.readouterr().out


def test_a_student_whose_weights_changed_makes_the_notebook_run_again(fake_papermill, data_copy, tmp_path, capsys):
    student = tmp_path / "student"
    student.mkdir()
    (student / "config.json").write_text("{}")
    (student / "model.safetensors").write_text("weights v1")
    _main("--only", "04_evaluate", "--set", f"student={student}")
    _main("--only", "04_evaluate", "--set", f"student={student}")
    assert fake_papermill == ["04_evaluate"]
    (student / "model.safetensors").write_text("weights v2, one layer zeroed")
    capsys.readouterr()
    _main("--only", "04_evaluate", "--set", f"student={student}")
    assert fake_papermill == ["04_evaluate"] * 2 and "models.student.weights" in capsys.readouterr().out


def test_a_done_record_without_input_digests_runs_again_saying_why(fake_papermill, data_copy, tmp_path, capsys):
    _main("--only", "04_evaluate")
    done = tmp_path / "results" / "executed" / "r" / "04_evaluate.done.json"
    rec = json.loads(done.read_text())
    done.write_text(json.dumps({"parameters": rec["parameters"], "seconds": 1.0}))  # as older versions wrote it
    capsys.readouterr()
    _main("--only", "04_evaluate")
    assert fake_papermill == ["04_evaluate"] * 2 and "holds no input digests" in capsys.readouterr().out


def test_a_dead_kernel_ends_the_runner_with_one_line(monkeypatch, tmp_path, data_copy):
    import papermill
    from nbclient.exceptions import DeadKernelError

    def die(src, dst, **kwargs):
        Path(dst).write_text("{}")
        raise DeadKernelError("Kernel died")

    monkeypatch.setattr(papermill, "execute_notebook", die)
    monkeypatch.setenv("EXGRPO_RESULTS_DIR", str(tmp_path / "results"))
    with pytest.raises(SystemExit) as err:
        _main("--only", "04_evaluate")
    message = str(err.value)
    assert message.count("\n") == 0 and "notebook 04_evaluate: its kernel died" in message
    assert str(tmp_path / "results" / "executed" / "r" / "04_evaluate.ipynb") in message
    assert not (tmp_path / "results" / "executed" / "r" / "04_evaluate.done.json").exists()  # not finished


def test_an_unwritable_results_folder_is_one_line(monkeypatch, tmp_path, data_copy):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("EXGRPO_RESULTS_DIR", str(blocker / "results"))
    with pytest.raises(SystemExit) as err:
        _main("--only", "04_evaluate")
    message = str(err.value)
    assert message.count("\n") == 0 and message.startswith("error: cannot write the results folder")
    assert "EXGRPO_RESULTS_DIR" in message


def test_a_missing_data_directory_is_one_line(fake_papermill, monkeypatch, tmp_path):
    monkeypatch.setenv("EXGRPO_DATA_DIR", str(tmp_path / "no-such-data"))
    with pytest.raises(SystemExit, match=r"^error: 04_evaluate: \$EXGRPO_DATA_DIR points at .*not a directory$"):
        _main("--only", "04_evaluate")
    assert fake_papermill == []
