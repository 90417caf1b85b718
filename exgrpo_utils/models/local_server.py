"""A local OpenAI-compatible server on loopback, started and stopped by the caller: ``transformers
serve`` with a local checkpoint. The paper-scale teacher path (HTTP client, cache, Eq. 1) can then run
offline end to end with any local model as a stand-in teacher (tests, the paper-mini preset).

    with serve_locally("/path/to/checkpoint") as base_url:   # "http://127.0.0.1:<port>/v1"
        backend = OpenAICompatibleBackend(base_url=base_url, model="/path/to/checkpoint")
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

# httpx is imported inside the function that uses it.


class ServerError(RuntimeError):
    """The local server exited or did not answer its health check in time (the message holds its log's tail)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextmanager
def serve_locally(model_path: str, *, host: str = "127.0.0.1", port: int | None = None, startup_timeout_s: float = 240,
                  log_path: str | Path | None = None, env: dict[str, str] | None = None):
    """Run ``transformers serve`` for ``model_path`` on ``host`` until the block ends; yields the
    ``/v1`` base URL. Offline: the hub is never contacted (``HF_HUB_OFFLINE=1``); ``env`` adds to the
    server's environment."""
    import httpx

    port = port or free_port(host)
    exe = Path(sys.executable).with_name("transformers")
    if not exe.exists():
        raise ServerError(f"{exe} not found: the transformers CLI comes with the kit's environment (make setup)")
    log_path = Path(log_path) if log_path else Path(tempfile.mkdtemp(prefix="exgrpo-serve-")) / "serve.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", **(env or {}))
    with open(log_path, "w") as fh:
        proc = subprocess.Popen([str(exe), "serve", "--host", host, "--port", str(port), str(model_path)],
                                stdout=fh, stderr=subprocess.STDOUT, env=env)
    url = f"http://{host}:{port}"

    def tail() -> str:
        return log_path.read_text(errors="replace")[-2000:]

    try:
        deadline = time.time() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise ServerError(f"transformers serve exited with {proc.returncode} (log {log_path}):\n{tail()}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                raise ServerError(f"transformers serve did not answer {url}/health within {startup_timeout_s:.0f} s "
                                  f"(log {log_path}):\n{tail()}")
            time.sleep(1)
        yield f"{url}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
