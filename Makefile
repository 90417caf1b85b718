# The two commands of the README:
#   make reproduce   set up .venv if needed, run the default reproduction (CPU, offline) into
#                    reproduction/ (resumable), then compare it item by item with the committed results/
#   make test        set up .venv if needed, then run the whole test suite (what CI runs)
# Optional: make test-fast (no model loaded, nothing trained: the inner loop), make reproduce-full
# (3-seed baselines and ablations, into reproduction/ too), make update-results / update-results-full
# (maintainers: recompute the committed results/ themselves), make compare, make lab (JupyterLab),
# make bench, make bench-rl, make bench-sft, make smoke, make config-files.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PRESET ?= cpu
RUN ?= cpu
REPRO_DIR ?= reproduction
export EXGRPO_DATA_DIR ?= $(abspath ../shared/datasets)
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup setup-gpu reproduce reproduce-full reproduce-paper-mini compare update-results update-results-full update-results-paper-mini smoke test test-fast config-files lab bench bench-rl bench-sft clean-venv

setup:
	@bash scripts/setup_env.sh

setup-gpu:
	@bash scripts/setup_env.sh --gpu

# the main job into $(REPRO_DIR)/ (never the committed results/), then the comparison with results/
reproduce: setup
	EXGRPO_RESULTS_DIR=$(abspath $(REPRO_DIR)) $(PY) -m exgrpo_utils.runner --preset $(PRESET)
	$(PY) -m exgrpo_utils.report.compare --reference results --reproduction $(REPRO_DIR) --run $(RUN)

# every baseline and ablation with 3 seeds, added to the reproduction's cpu run
reproduce-full: setup
	EXGRPO_RESULTS_DIR=$(abspath $(REPRO_DIR)) $(PY) -m exgrpo_utils.runner --preset $(PRESET)
	EXGRPO_RESULTS_DIR=$(abspath $(REPRO_DIR)) $(PY) -m exgrpo_utils.runner --preset cpu-full
	$(PY) -m exgrpo_utils.report.compare --reference results --reproduction $(REPRO_DIR) --run $(RUN)

# the paper preset's code paths at toy scale (per-task protocol, LLM teacher over HTTP), into $(REPRO_DIR)/
reproduce-paper-mini: setup
	EXGRPO_RESULTS_DIR=$(abspath $(REPRO_DIR)) $(PY) -m exgrpo_utils.runner --preset paper-mini
	$(PY) -m exgrpo_utils.report.compare --reference results --reproduction $(REPRO_DIR) --run paper-mini

compare: setup
	$(PY) -m exgrpo_utils.report.compare --reference results --reproduction $(REPRO_DIR) --run $(RUN)

# maintainers: recompute the committed results/ (the runner reuses what is finished and current)
update-results: setup
	$(PY) -m exgrpo_utils.runner --preset $(PRESET)

update-results-full: update-results
	$(PY) -m exgrpo_utils.runner --preset cpu-full

update-results-paper-mini: setup
	$(PY) -m exgrpo_utils.runner --preset paper-mini

smoke: setup
	$(PY) -m exgrpo_utils.runner --preset smoke --run-name smoke

test: setup
	$(PY) -m pytest -q --durations=25 $(PYTEST_ARGS)

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
