# The two commands of the README:
#   make reproduce   set up .venv if needed, then run the default reproduction (CPU, offline)
#   make test        set up .venv if needed, then run the whole test suite (what CI runs)
# Optional: make test-fast (no model loaded, nothing trained: the inner loop), make reproduce-full
# (3-seed baselines and ablations), make reproduce-scratch (main job from scratch into
# scratch-results/), make lab (JupyterLab), make bench, make bench-rl, make bench-sft, make smoke, make config-files.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PRESET ?= cpu
export EXGRPO_DATA_DIR ?= $(abspath ../shared/datasets)
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup setup-gpu reproduce reproduce-full reproduce-scratch smoke test test-fast config-files lab bench bench-rl bench-sft clean-venv

setup:
	@bash scripts/setup_env.sh

setup-gpu:
	@bash scripts/setup_env.sh --gpu

reproduce: setup
	$(PY) -m exgrpo_utils.runner --preset $(PRESET)

# every baseline and ablation with 3 seeds, added to the cpu run (about 2 h more on 2 cores)
reproduce-full: reproduce
	$(PY) -m exgrpo_utils.runner --preset cpu-full

# the main job from scratch into scratch-results/ (the committed results/ stay untouched)
reproduce-scratch: setup
	EXGRPO_RESULTS_DIR=$(abspath scratch-results) $(PY) -m exgrpo_utils.runner --preset $(PRESET)

smoke: setup
	$(PY) -m exgrpo_utils.runner --preset smoke --run-name smoke

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# regenerate the notebooks' parameter cells and docs/configuration.md from the settings dataclasses
config-files: setup
	$(PY) -m exgrpo_utils.config --write-notebooks --write-docs

lab: setup
	$(PY) -m ipykernel install --user --name exgrpo-kit --display-name "Python (exgrpo-kit)"
	$(VENV)/bin/jupyter lab notebooks/

bench: setup
	$(PY) benchmarks/bench_generation.py

bench-rl: setup
	$(PY) benchmarks/bench_rl_step.py

bench-sft: setup
	$(PY) benchmarks/bench_sft.py

clean-venv:
	rm -rf $(VENV)
