import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines):
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", line)
            assert m, f"not an exact pin: {line!r}"
            pins[m.group(1).lower()] = m.group(2)
    return pins


def test_requirements_pyproject_and_environment_agree():
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = _pins(project["dependencies"]) | _pins(project["optional-dependencies"]["test"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert req == deps == _pins(pip_section)
    assert req["torch"] == "2.13.0" and req["transformers"] == "5.23.0" and req["trl"] == "1.16.0"


def test_gpu_extra_pins_a_vllm_that_trl_accepts():
    gpu = _pins((ROOT / "requirements-gpu.txt").read_text().splitlines())
    major, minor = map(int, gpu["vllm"].split(".")[:2])
    assert (major, minor) >= (0, 22) and (major, minor) <= (0, 31)
