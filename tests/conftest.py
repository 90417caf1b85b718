"""Shared fixtures and the two test tiers.

``make test-fast`` runs ``-m "not slow"``: everything that loads no model and trains nothing. A test
is slow when it uses the ``student``/``student_path`` fixtures (they load the embedded student) or
is marked ``@pytest.mark.slow`` itself.
"""
import ast
import inspect
import os
import shutil
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]

# Tests never reach the network: the hub is off for the whole session, notebooks included.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("EXGRPO_PROGRESS", "off")

MODEL_FIXTURES = {"student", "student_path"}


def shared_data_dir() -> Path | None:
    value = os.environ.get("EXGRPO_DATA_DIR")
    if value and Path(value).is_dir():
        return Path(value)
    guess = ROOT.parent / "shared" / "datasets"
    return guess if guess.is_dir() else None


if shared_data_dir() is not None:  # notebooks run by the tests read the data through the environment
    os.environ["EXGRPO_DATA_DIR"] = str(shared_data_dir())


def pytest_collection_modifyitems(config, items):
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.fail("the datasets are needed: set EXGRPO_DATA_DIR (make test points it at ../shared/datasets)")
    return path


@pytest.fixture(scope="session")
def student_path() -> str:
    """The embedded student as a plain checkpoint (converted once per cache directory)."""
    from exgrpo_utils.models.registry import ensure_local

    return ensure_local("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def student(student_path):
    from exgrpo_utils.models.registry import load_model

    return load_model("smollm2-135m-instruct", dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory, student_path):
    """A randomly initialised model of the student's architecture (Llama, 2 layers of width 32) with
    the student's tokenizer: the real code paths in seconds (``gpu_check.tiny_model``)."""
    from exgrpo_utils.gpu_check import tiny_model

    return tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def cli_run_root(tmp_path, monkeypatch):
    """A results root (``$EXGRPO_RESULTS_DIR``) holding run ``dist`` with the program teacher's probe
    data for 4 arith questions, as ``train_cli`` reads it; returns its ``runs`` folder."""
    from exgrpo_utils.data.datasets import load
    from exgrpo_utils.infra.layout import RunLayout
    from exgrpo_utils.teach import inversion, rules, teachers

    monkeypatch.setenv("EXGRPO_RESULTS_DIR", str(tmp_path / "results"))
    layout = RunLayout.of("dist").create()
    inversion.run_pipeline(load("arith", "train", limit=4), teachers.ProgramTeacher(), rules.load_rules(), student=None,
                           out_dir=layout.probe_dataset("arith").parent)
    return tmp_path / "results" / "runs"


@pytest.fixture(scope="session")
def arith_probe_records(tmp_path_factory) -> list[dict]:
    """The probe dataset of 4 synthetic arith training items, from the exact program teacher (no
    student pass: Eq. 2 is skipped), as notebook 01 writes it."""
    from exgrpo_utils.data.datasets import load
    from exgrpo_utils.teach.inversion import load_probe_dataset, run_pipeline
    from exgrpo_utils.teach.rules import load_rules
    from exgrpo_utils.teach.teachers import ProgramTeacher

    out = tmp_path_factory.mktemp("ei")
    run_pipeline(load("arith", "train", limit=4), ProgramTeacher(), load_rules(), student=None, out_dir=out)
    return load_probe_dataset(out / "probe_dataset.jsonl")


def _figure_calls_in(source: str) -> list[str]:
    """The calls of ``report.plotting``'s figure functions (every public function there but ``save`` and
    ``publish``) in
    the code ``source``, in order, e.g. ``["figure3_rewards", ...]``."""
    from exgrpo_utils.report import plotting

    makers = {name for name, fn in inspect.getmembers(plotting, inspect.isfunction)
              if fn.__module__ == plotting.__name__ and not name.startswith("_") and name not in ("save", "publish")}
    return [node.func.attr for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in makers
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "plotting"]


@pytest.fixture(scope="session")
def figure_calls():
    """``figure_calls(source)``: the figures a notebook cell's code makes (``figure_calls(path)`` for a
    whole notebook): each figure a notebook makes must appear in it as one image."""
    def calls(source: str | Path) -> list[str]:
        if isinstance(source, Path):
            cells = nbformat.read(source, as_version=4).cells
            return [c for cell in cells if cell.cell_type == "code" for c in _figure_calls_in(cell.source)]
        return _figure_calls_in(source)

    return calls


@pytest.fixture
def committed_cpu_results(tmp_path) -> Path:
    """A results root holding a copy of the committed ``cpu`` run without its ``paper/`` folder, for
    notebook 06 to rebuild from the records alone (it then writes nothing into the repository)."""
    root = tmp_path / "results"
    shutil.copytree(ROOT / "results" / "runs" / "cpu", root / "runs" / "cpu", ignore=shutil.ignore_patterns("paper"))
    return root
