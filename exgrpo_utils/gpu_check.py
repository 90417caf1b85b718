"""The kit's GPU paths on a tiny randomly initialised model, for a CUDA machine without internet:

    python -m exgrpo_utils.gpu_check                 # CUDA: bf16, vLLM where installed, 2 GPUs where there are
    python -m exgrpo_utils.gpu_check --device cpu    # the same checks on CPU in float32 (what CI runs)

Each check prints ``ran``, ``skipped`` (with why) or ``FAILED`` (with the error); the exit status is 1
when any check failed, 2 when CUDA was asked for and there is none. The model is of the student's
architecture (Llama, 2 layers of width 32) with the embedded student's tokenizer, so nothing is
downloaded; the training data are the program teacher's probes of 4 `arith` questions. Checks:

* ``engine``: the kit's generation engine (``fast``) against plain ``generate`` on the device, greedy,
  in the device's dtype (bf16 on CUDA): how many of 8 answers agree token for token, and the time.
* ``sft``, ``exgrpo``: two steps each through ``train_cli`` (as ``accelerate launch`` runs it), bf16 on
  CUDA, the ExGRPO rollouts through the kit's engine.
* ``exgrpo-vllm``: ExGRPO with every dialogue turn through TRL's vLLM engine (colocate), and
  ``vllm-eval``: the trained SFT adapter evaluated through vLLM (merged once into its base), both
  where vLLM is installed and CUDA is there.
* ``sft-2gpu``: SFT as ``accelerate launch`` of 2 processes (configs/accelerate/multi_gpu.yaml) where
  there are two GPUs.

Everything is written to a temporary folder (``--keep`` keeps it; the trainings find it through
``EXGRPO_RESULTS_DIR``); the converted student and vLLM's merged adapter use the usual cache.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

from .data.datasets import load
from .experiments.dispatch import accelerate_prefix
from .infra.layout import RunLayout
from .infra.paths import PROJECT_ROOT
from .models.generation import SamplingConfig, make_generator
from .models.registry import ensure_local
from .teach import inversion, rules, teachers

RUN = "gpu-check"


def tiny_model(folder: Path) -> str:
    """A randomly initialised model of the student's architecture with the student's tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # imported inside: only this check builds a model

    tok = AutoTokenizer.from_pretrained(ensure_local("smollm2-135m-instruct"))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def check_engine(model: str, device: str, dtype: str) -> str:
    prompts = [[{"role": "user", "content": f"What is {a} + {a + 3}?"}] for a in range(8)]
    sampling = SamplingConfig(max_new_tokens=24)
    t0 = time.time()
    fast = make_generator(model, backend="fast", dtype=dtype, device=device).generate(prompts, sampling)
    t1 = time.time()
    plain = make_generator(model, backend="transformers", dtype=dtype, device=device).generate(prompts, sampling)
    same = sum(a.text == b.text for a, b in zip(fast, plain))
    return f"{same} of {len(prompts)} greedy answers equal to plain generate ({dtype}); engine {t1 - t0:.1f} s"


def train_cli(stage: str, sets: list[str], env: dict, *, processes: int = 1) -> str:
    """``train_cli <stage>`` of the check's run in a subprocess; its last output lines on failure."""
    cli = ["-m", "exgrpo_utils.train_cli", stage, "--preset", "smoke", "--run-name", RUN, "--set", *sets]
    launch = [sys.executable] if processes == 1 else [
        *accelerate_prefix(str(PROJECT_ROOT / "configs" / "accelerate" / "multi_gpu.yaml")), "--num_processes", str(processes)]
    done = subprocess.run([*launch, *cli], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"train_cli {stage} exited with {done.returncode}:\n" + done.stderr[-3000:])
    return f"{stage} trained ({', '.join(sets[1:])})"


def _report(name: str, check: Callable[[], str] | str, results: list[tuple[str, str]]) -> None:
    """Run one check (a string: skipped, with that reason) and print its line."""
    if isinstance(check, str):
        state, detail = "skipped", check
    else:
        try:
            state, detail = "ran", check()
        except Exception as exc:  # noqa: BLE001 - every failure is reported and the other checks go on
            state, detail = "FAILED", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
    results.append((name, state))
    print(f"{state:>7}  {name}: {detail}", flush=True)


def run_checks(device: str, work: Path) -> list[tuple[str, str]]:
    """Every check in turn (see the module docstring); returns (check, ran | skipped | FAILED)."""
    cuda = device == "cuda"
    dtype, bf16 = ("bfloat16", "true") if cuda else ("float32", "false")
    env = {**os.environ, "EXGRPO_RESULTS_DIR": str(work / "results"), "EXGRPO_PROGRESS": "off",
           **({} if cuda else {"CUDA_VISIBLE_DEVICES": ""})}
    model = tiny_model(work / "tiny")
    layout = RunLayout.of(RUN, work / "results").create()
    inversion.run_pipeline(load("arith", "train", limit=4), teachers.ProgramTeacher(), rules.load_rules(), student=None,
                           out_dir=layout.probe_dataset("arith").parent)
    sft = [f"student={model}", "sft_max_steps=2", f"sft_bf16={bf16}"]
    rl = [*sft, "rl_max_steps=2", f"rl_bf16={bf16}"]
    vllm = "vLLM is not installed (make setup-gpu)" if importlib.util.find_spec("vllm") is None else \
        "" if cuda else "vLLM needs CUDA"
    results: list[tuple[str, str]] = []
    _report("engine", lambda: check_engine(model, device, dtype), results)
    _report("sft", lambda: train_cli("sft", sft, env), results)
    _report("exgrpo", lambda: train_cli("exgrpo", rl, env), results)
    _report("exgrpo-vllm", vllm or (lambda: train_cli("exgrpo", [*rl, "rl_use_vllm=true", "fresh=true"], env)), results)
    adapter = str(layout.final_model("sft"))
    _report("vllm-eval", vllm or (lambda: check_engine_vllm(adapter)), results)
    gpus = torch.cuda.device_count() if cuda else 0
    _report("sft-2gpu", "fewer than 2 GPUs" if gpus < 2 else
            (lambda: train_cli("sft", [*sft, "fresh=true"], env, processes=2)), results)
    return results


def check_engine_vllm(adapter: str) -> str:
    prompts = [[{"role": "user", "content": f"What is {a} + 2?"}] for a in range(4)]
    out = make_generator(adapter, backend="vllm", dtype="bfloat16").generate(prompts, SamplingConfig(max_new_tokens=16))
    return f"{len(out)} answers from the SFT adapter through vLLM ({sum(c.n_tokens for c in out)} tokens)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}; CUDA available: {torch.cuda.is_available()}, "
          f"{torch.cuda.device_count()} device(s)" + (f": {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing GPU-side ran (--device cpu runs the same checks on CPU)")
        return 2
    work = Path(tempfile.mkdtemp(prefix="exgrpo-gpu-check-"))
    results = run_checks(args.device, work)
    print(f"{sum(s == 'ran' for _, s in results)} ran, {sum(s == 'skipped' for _, s in results)} skipped, "
          f"{sum(s == 'FAILED' for _, s in results)} failed; work folder {work}" + ("" if args.keep else " (removed)"))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any(s == "FAILED" for _, s in results) else 0


if __name__ == "__main__":
    sys.exit(main())
