import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Tests never reach the network: the hub is off for the whole session, notebooks included.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("EXGRPO_PROGRESS", "off")


def shared_data_dir() -> Path | None:
    value = os.environ.get("EXGRPO_DATA_DIR")
    if value and Path(value).is_dir():
        return Path(value)
    guess = ROOT.parent / "shared" / "datasets"
    return guess if guess.is_dir() else None


if shared_data_dir() is not None:  # notebooks run by the tests read the data through the environment
    os.environ["EXGRPO_DATA_DIR"] = str(shared_data_dir())


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.fail("the datasets are needed: set EXGRPO_DATA_DIR (make test points it at ../shared/datasets)")
    return path


@pytest.fixture(scope="session")
def student_path() -> str:
    """The embedded student as a plain checkpoint (converted once per cache directory)."""
    from exgrpo_utils.models import ensure_local

    return ensure_local("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def student(student_path):
    from exgrpo_utils.models import load_model

    return load_model("smollm2-135m-instruct", dtype="float32", device="cpu")
