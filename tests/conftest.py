"""Shared fixtures and the two test tiers.

``make test-fast`` runs ``-m "not slow"``: everything that loads no model and trains nothing. A test
is slow when it uses the ``student``/``student_path`` fixtures (they load the embedded student) or
is marked ``@pytest.mark.slow`` itself.
"""
import os
from pathlib import Path

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
