"""Training from the command line, for ``accelerate launch`` on several GPUs (paper scale).

    accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m exgrpo_utils.train_cli sft \\
        --preset paper --run-name qwen-gsm8k
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m exgrpo_utils.train_cli exgrpo \\
        --preset paper --run-name qwen-gsm8k --set rl_max_steps=500

A training of notebook 05's plan, as ``exp_executor`` accelerate or slurm runs it (``experiments.jobs``):

    python -m exgrpo_utils.train_cli method --params results/runs/R/experiments/dispatch/params.json \
        --task gsm8k --key exgrpo --seed 1

It resolves the same parameters as notebooks 02 (``sft``) and 03 (``exgrpo``) and calls the same
library functions, writing the same folders (``RunLayout``); the notebooks remain the place for the
before/after evaluations and plots. With several processes each one must hold whole rollout groups
(the DSU bonus compares the Scenario A and B rollouts of a question): each process rolls out
G x ``rl_questions_per_step`` dialogues per step and updates one question's rows at a time, and a
step's questions are split between the processes (each rolled
out on one; ``train/exgrpo/question_visits.jsonl`` lists them by process). One process writes
(the fingerprint, the log, the summary, the merged SFT start). ``tests/test_distributed.py`` runs it
for real with two processes on CPU (``configs/accelerate/cpu_two_processes.yaml``: torchrun, gloo) on
a tiny model, against the same training in one process; no GPU run is in the kit's CI.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .config import for_notebook, load_preset, parse_overrides, resolve
from .experiments.runs import Context, Skipped, train_one
from .infra.layout import RunLayout
from .infra.settings import SettingsError, build
from .teach.inversion import load_probe_dataset
from .train.exgrpo import train_exgrpo
from .train.loop import NoTrainingData
from .train.settings import ExGRPOSettings, SFTSettings
from .train.sft import train_sft

STAGES = {"sft": "02_sft", "exgrpo": "03_exgrpo"}


def stage_params(stage: str, preset: str, overrides: list[str], run_name: str) -> dict:
    """The parameters notebook 02 or 03 would receive for this preset, run and ``--set`` list."""
    return for_notebook(STAGES[stage], resolve(load_preset(preset), parse_overrides(overrides), run_name=run_name))


def train_stage(stage: str, params: dict) -> dict:
    layout = RunLayout.of(params["run_name"]).create()
    records = load_probe_dataset(layout.probe_dataset(params["train_dataset"]))
    report_to = tuple(params["report_to"])
    if stage == "sft":
        return train_sft(model=params["student"], probe_records=records, out_dir=layout.train_dir("sft"),
                         settings=build(SFTSettings, params), report_to=report_to, fresh=params["fresh"])
    return train_exgrpo(init_model=str(layout.final_model("sft")), probe_records=records,
                        out_dir=layout.train_dir("exgrpo"), settings=build(ExGRPOSettings, params), report_to=report_to,
                        fresh=params["fresh"])


def train_method(params_path: str, task: str, key: str, seed: int) -> dict | None:
    """One (task, method, seed) of notebook 05 with the notebook's parameters (``experiments.jobs``)."""
    try:
        params = json.loads(open(params_path).read())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: {params_path}: cannot read the plan's parameters ({exc})") from None
    try:
        return train_one(Context.from_params(params), task, key, seed)
    except (NoTrainingData, Skipped) as exc:  # the job's log says why; notebook 05 records it as not trained
        raise SystemExit(f"not trained: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=sorted(STAGES) + ["method"])
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--run-name", help="sft, exgrpo: the run (required)")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
    ap.add_argument("--params", help="method: notebook 05's parameters (JSON)")
    ap.add_argument("--task", help="method: the training task")
    ap.add_argument("--key", help="method: the method (experiments.methods.METHODS)")
    ap.add_argument("--seed", type=int, default=0, help="method: the training seed")
    args = ap.parse_args(argv)
    if args.stage == "method":
        if not (args.params and args.task and args.key):
            ap.error("method needs --params, --task and --key")
        summary = train_method(args.params, args.task, args.key, args.seed)
    else:
        if not args.run_name:
            ap.error(f"{args.stage} needs --run-name")
        try:
            params = stage_params(args.stage, args.preset, args.set, args.run_name)
        except (SettingsError, ValueError) as exc:
            raise SystemExit(f"error: {exc}") from None
        summary = train_stage(args.stage, params)
    if int(os.environ.get("RANK", "0")) == 0:  # under accelerate launch every process returns it; one prints
        print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
