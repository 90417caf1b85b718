"""Two training processes for real: ``accelerate launch`` (torchrun, gloo on CPU) of ``train_cli`` for
SFT and ExGRPO on a tiny randomly initialised model of the student's architecture, against the same
training in one process. What must hold with several processes: one writer (one fingerprint, one log
line per step, one printed summary), a step's questions each rolled out on one process, and the same
steps as a single-process run with the same global batch."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from exgrpo_utils.infra.files import read_log_jsonl

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "accelerate" / "cpu_two_processes.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(stage: str, run: str, sets: list[str], *, processes: int) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", EXGRPO_PROGRESS="off")
    cli = ["-m", "exgrpo_utils.train_cli", stage, "--preset", "smoke", "--run-name", run, "--set", *sets]
    if processes == 1:
        cmd = [sys.executable, *cli]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG),
               "--num_processes", str(processes), "--main_process_port", str(_free_port()), *cli]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def _copy_probes(runs: Path, run: str) -> None:
    target = runs / run / "ei"
    target.mkdir(parents=True)
    (target / "arith").symlink_to(runs / "dist" / "ei" / "arith")


def _one_writer(folder: Path, stdout: str, steps: int) -> list[dict]:
    log = [r for r in read_log_jsonl(folder / "train_log.jsonl") if "loss" in r]
    assert [r["step"] for r in log] == list(range(1, steps + 1))  # one line per step: the main process only
    assert stdout.count('"final"') == 1  # one summary printed
    assert len(list(folder.glob("fingerprint*.json"))) == 1 and (folder / "final").is_dir()
    return log


def test_sft_in_two_processes_trains_the_steps_of_one_process_with_one_writer(tiny_student, cli_run_root):
    common = [f"student={tiny_student}", "sft_lora_dropout=0", "sft_max_steps=2", "sft_save_steps=2"]
    two = _train("sft", "dist", [*common, "sft_batch_size=4"], processes=2)
    log2 = _one_writer(cli_run_root / "dist" / "train" / "sft", two, steps=2)
    summary = json.loads((cli_run_root / "dist" / "train" / "sft" / "sft_summary.json").read_text())
    assert summary["steps"] == 2 and summary["train_tokens"] > 0

    # one process, 2 accumulated passes of 4 rows: the same 8 rows per step, in the same order
    _copy_probes(cli_run_root, "one")
    one = _train("sft", "one", [*common, "sft_batch_size=4", "sft_gradient_accumulation_steps=2"], processes=1)
    log1 = _one_writer(cli_run_root / "one" / "train" / "sft", one, steps=2)
    for a, b in zip(log1, log2):
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["num_tokens"] == b["num_tokens"]


def test_exgrpo_in_two_processes_rolls_each_question_of_a_step_out_once(tiny_student, cli_run_root):
    sets = [f"student={tiny_student}", "sft_max_steps=1", "rl_max_steps=2", "rl_save_steps=2"]
    _train("sft", "dist", sets, processes=1)
    two = _train("exgrpo", "dist", [*sets, "rl_questions_per_step=1"], processes=2)
    folder = cli_run_root / "dist" / "train" / "exgrpo"
    _one_writer(folder, two, steps=2)
    visits = read_log_jsonl(folder / "question_visits.jsonl")
    assert [v["step"] for v in visits] == [1, 2] and all(len(v["questions"]) == 2 for v in visits)  # two processes
    per_step = [sorted(q for ids in v["questions"] for q in ids) for v in visits]
    assert all(len(set(s)) == len(s) == 2 for s in per_step)  # each question of a step on one process only
    assert sorted(q for s in per_step for q in s) == [f"arith-train-{i}" for i in range(4)]
    summary = json.loads((folder / "rl_summary.json").read_text())
    assert (summary["question_visits"], summary["questions_visited"], summary["fewest_visits_per_question"]) == (4, 4, 1)

    # one process with 2 questions per step: the same questions at each step
    _copy_probes(cli_run_root, "one")
    _train("sft", "one", sets, processes=1)
    _train("exgrpo", "one", [*sets, "rl_questions_per_step=2"], processes=1)
    visits1 = read_log_jsonl(cli_run_root / "one" / "train" / "exgrpo" / "question_visits.jsonl")
    assert [sorted(v["questions"][0]) for v in visits1] == per_step
