"""Notebook 06 as a new user meets it: JupyterLab on loopback, the notebook opened in headless Chromium,
Run > Run All Cells, then no error output and one rendered image per figure the notebook makes.

The browser is Debian's ``chromium`` (installed by scripts/setup_env.sh; ``EXGRPO_CHROMIUM`` names
another executable), driven through Playwright, which downloads no browser of its own here. Without
chromium or Playwright the test skips, except under CI (``CI=true``), where the set-up must have
installed both. JupyterLab serves a temporary folder holding a copy of the notebook and reads a copy
of the committed ``cpu`` run (``EXGRPO_RESULTS_DIR``): the repository's ``results/`` is not written.
"""
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "06_paper_figures.ipynb"
START_TIMEOUT_S = 90  # JupyterLab up, and the notebook open with an idle kernel
RUN_TIMEOUT_S = 300  # Run All Cells (12-20 s on a shared 2-core CPU)
STOP_TIMEOUT_S = 20
PROMPT_DONE = re.compile(r"\[\d+\]:")
ERROR_TEXT = re.compile(r"Traceback|^\s*\w*(Error|Exception)\b", re.MULTILINE)  # as IPython prints an error

pytestmark = [pytest.mark.slow, pytest.mark.browser]


@pytest.fixture(scope="module")
def chromium() -> str:
    """The chromium executable; skips (fails under CI) when it or Playwright is missing."""
    chromium = os.environ.get("EXGRPO_CHROMIUM") or shutil.which("chromium")
    missing = []
    if not chromium or not os.access(chromium, os.X_OK):
        missing.append("Debian's chromium (apt-get install chromium, or EXGRPO_CHROMIUM=/path/to/chromium)")
    if importlib.util.find_spec("playwright") is None:
        missing.append("playwright (pip install -r requirements.txt)")
    if missing:
        reason = "the browser test needs " + " and ".join(missing) + "; scripts/setup_env.sh installs both"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI: the set-up must have installed them)")
        pytest.skip(reason)
    return chromium


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lab_command(port: int, token: str, served: Path, state: Path) -> list[str]:
    """JupyterLab on loopback with a token; its settings and workspaces in ``state`` (a user's own do not
    apply), no update check and no news (nothing beyond loopback)."""
    return [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
            "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={served}",
            f"--LabApp.user_settings_dir={state / 'settings'}", f"--LabApp.workspaces_dir={state / 'workspaces'}",
            "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly"]


def _lab_env(results: Path, state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # the kernel picks its own inline backend
    env.update(EXGRPO_RESULTS_DIR=str(results), JUPYTER_CONFIG_DIR=str(state / "config"),
               JUPYTER_DATA_DIR=str(state / "data"), JUPYTER_RUNTIME_DIR=str(state / "runtime"),
               IPYTHONDIR=str(state / "ipython"))
    news_off = state / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news_off.parent.mkdir(parents=True, exist_ok=True)
    news_off.write_text(json.dumps({"fetchNews": "false"}))  # no "get notified about Jupyter news?" prompt
    return env


def _wait_until_up(proc: subprocess.Popen, url: str, token: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen, url: str, token: str) -> None:
    """Ask the server to shut down (it stops its kernels), then end its process group if it lingers."""
    try:
        request = urllib.request.Request(f"{url}/api/shutdown", method="POST", headers={"Authorization": f"token {token}"})
        urllib.request.urlopen(request, timeout=5).close()
    except OSError:
        pass
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture
def lab(tmp_path, committed_cpu_results):
    """(base url, token, served folder) of a JupyterLab serving a copy of notebook 06."""
    served, state = tmp_path / "served", tmp_path / "jupyter"
    served.mkdir()
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, served / NOTEBOOK)
    port, token = _free_port(), secrets.token_hex(16)
    url, log = f"http://127.0.0.1:{port}", tmp_path / "jupyterlab.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(_lab_command(port, token, served, state), env=_lab_env(committed_cpu_results, state),
                                cwd=served, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until_up(proc, url, token, log)
        yield url, token, served
    finally:
        _stop(proc, url, token)


def _kernel_ready(url: str, token: str) -> bool:
    """The server holds a session of the notebook whose kernel is idle with the page connected to it."""
    with urllib.request.urlopen(f"{url}/api/sessions?token={token}", timeout=5) as reply:
        sessions = json.load(reply)
    return any(s["path"].endswith(NOTEBOOK) and s["kernel"]["execution_state"] == "idle" and s["kernel"]["connections"] > 0
               for s in sessions)


def _open_with_idle_kernel(page, url: str, token: str) -> None:
    """Open the notebook and wait for its kernel (the page shows "idle" before a kernel even exists, and
    a Run All Cells then runs nothing): started, connected and idle on the server, idle in the status bar."""
    page.goto(f"{url}/lab/tree/{NOTEBOOK}?token={token}", timeout=START_TIMEOUT_S * 1000)
    page.locator(".jp-NotebookPanel .jp-CodeCell").first.wait_for(timeout=START_TIMEOUT_S * 1000)
    status_bar = page.locator(".jp-StatusBar-Widget").first  # "Python 3 (ipykernel) | Idle", after "| Connecting"
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (_kernel_ready(url, token) and "| Idle" in (status_bar.text_content() or "")):
        select = page.locator(".jp-Dialog .jp-mod-accept")  # "Select Kernel", where JupyterLab asks
        if select.count():
            select.first.click()
        assert time.monotonic() < deadline, "the notebook's kernel did not start, or did not become idle"
        time.sleep(0.5)


def _run_all_and_wait(page, code_cells: int) -> list[str]:
    """Run > Run All Cells; waits until every code cell has its execution count, or the run stopped at an
    error. Returns the prompts."""
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    prompts = page.locator(".jp-NotebookPanel .jp-CodeCell .jp-InputArea-prompt")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        texts = [(t or "").strip() for t in prompts.all_text_contents()]
        finished = len(texts) == code_cells and all(PROMPT_DONE.fullmatch(t) for t in texts)
        stopped = "[*]:" not in texts and _tracebacks(page)
        if finished or stopped:
            return texts
        assert page.locator(".jp-Dialog").count() == 0, f"a dialog interrupted the run: {page.locator('.jp-Dialog').inner_text()}"
        time.sleep(0.5)
    pytest.fail(f"Run All Cells did not finish within {RUN_TIMEOUT_S} s; prompts: {texts}")


def _tracebacks(page) -> list[str]:
    stderr = page.locator('.jp-NotebookPanel .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
    return [t for t in stderr.all_text_contents() if ERROR_TEXT.search(t)]


def _saved_outputs(page, path: Path) -> list:
    """Save the notebook (its toolbar's save button) and return the code cells' outputs as written to disk."""
    before = path.stat().st_mtime_ns
    page.locator('.jp-NotebookPanel-toolbar [data-command="docmanager:save"]').first.click()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while path.stat().st_mtime_ns == before:
        assert time.monotonic() < deadline, "the notebook was not saved"
        time.sleep(0.2)
    return [o for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code" for o in c.outputs]


def test_notebook_06_runs_in_jupyterlab_and_shows_every_figure(chromium, lab, committed_cpu_results, figure_calls):
    from playwright.sync_api import sync_playwright  # imported inside: only this test needs it, and may skip without it

    url, token, served = lab
    notebook = nbformat.read(ROOT / "notebooks" / NOTEBOOK, as_version=4)
    code_cells = sum(c.cell_type == "code" for c in notebook.cells)
    figures = figure_calls(ROOT / "notebooks" / NOTEBOOK)
    committed_paper = {p: p.stat().st_mtime_ns for p in (ROOT / "results" / "runs" / "cpu" / "paper").iterdir()}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            _open_with_idle_kernel(page, url, token)
            prompts = _run_all_and_wait(page, code_cells)
            errors = _tracebacks(page)
            images = page.locator(".jp-NotebookPanel .jp-OutputArea-output img").count()
            outputs = _saved_outputs(page, served / NOTEBOOK)
        finally:
            browser.close()
    assert not errors, "error output in the notebook:\n" + "\n".join(errors)
    assert not [o for o in outputs if o.output_type == "error"]
    assert all(PROMPT_DONE.fullmatch(p) for p in prompts), prompts
    assert len(figures) == 4 and images == len(figures), f"{images} images rendered for the figures {figures}"
    assert sum("image/png" in o.get("data", {}) for o in outputs) == len(figures)
    assert len(list((committed_cpu_results / "runs" / "cpu" / "paper").glob("figure*.png"))) == len(figures)
    assert {p: p.stat().st_mtime_ns for p in committed_paper} == committed_paper  # the repository's results/ untouched
