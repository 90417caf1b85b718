"""The GPU check script (``python -m exgrpo_utils.gpu_check``): on this CPU machine it refuses to call
a run without CUDA a GPU check, and with ``--device cpu`` runs the same checks (engine, SFT and
ExGRPO steps through train_cli) in float32 and says which GPU-only checks it skipped and why."""
import importlib.util

import pytest

from exgrpo_utils import gpu_check

pytestmark = pytest.mark.slow


def test_without_cuda_the_gpu_check_says_nothing_gpu_side_ran(capsys):
    if gpu_check.torch.cuda.is_available():
        pytest.skip("a CUDA device is here: the check would run")
    assert gpu_check.main([]) == 2
    assert "no CUDA device: nothing GPU-side ran" in capsys.readouterr().out


def test_the_checks_run_on_cpu_and_name_what_they_skipped(capsys, student_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert gpu_check.main(["--device", "cpu"]) == 0
    lines = {line.split(":", 1)[0].strip(): line for line in capsys.readouterr().out.splitlines() if ":" in line}
    for check in ("ran  engine", "ran  sft", "ran  exgrpo"):
        assert check in lines, lines
    assert "8 of 8 greedy answers equal to plain generate (float32)" in lines["ran  engine"]
    vllm = "vLLM is not installed" if importlib.util.find_spec("vllm") is None else "vLLM needs CUDA"
    assert vllm in lines["skipped  exgrpo-vllm"] and vllm in lines["skipped  vllm-eval"]
    assert "fewer than 2 GPUs" in lines["skipped  sft-2gpu"]
