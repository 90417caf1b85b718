"""Training from the command line, for ``accelerate launch`` on several GPUs (paper scale).

    accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m exgrpo_utils.train_cli sft \\
        --preset paper --run-name qwen-gsm8k
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m exgrpo_utils.train_cli exgrpo \\
        --preset paper --run-name qwen-gsm8k --set label=exgrpo

It reads the same preset sections as notebooks 02 (``02_sft``) and 03 (``03_exgrpo``) and calls the
same library functions; the notebooks remain the place for the before/after evaluations and plots.
With several processes each one must hold whole rollout groups (the DSU bonus compares the
Scenario A and B rollouts of a question): ``per_device_train_batch_size`` is G x questions_per_step.
This path is configured but has not been run in the kit's CI, which has no GPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from . import exgrpo, paths, probes, sft
from .runner import load_preset, parse_overrides


def settings_from(cls, params: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in params.items() if k in names})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["sft", "exgrpo"])
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--run-name", required=True)
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    section = "02_sft" if args.stage == "sft" else "03_exgrpo"
    params = dict(load_preset(args.preset).get(section, {}))
    params.update(parse_overrides(args.set))
    run = paths.run_dir(args.run_name)
    records = probes.load_probe_dataset(run / "ei" / params["train_dataset"] / "probe_dataset.jsonl")
    out_dir = run / "train" / params["label"]
    if args.stage == "sft":
        summary = sft.train_sft(model=params["model"], probe_records=records, out_dir=out_dir,
                                settings=settings_from(sft.SFTSettings, params))
    else:
        start = params.get("init_model") or str(run / "train" / "sft" / "final")
        summary = exgrpo.train_exgrpo(init_model=start, probe_records=records, out_dir=out_dir,
                                      settings=settings_from(exgrpo.ExGRPOSettings, params))
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
