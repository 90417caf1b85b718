"""A local OpenAI-compatible server on loopback, started and stopped by the caller, so that the
paper-scale teacher path (HTTP client, cache, Eq. 1) runs offline end to end with any local model as
a stand-in teacher (tests, the paper-mini preset).

Two engines behind ``POST /v1/chat/completions``:

* ``kit`` (default): this module run as a program (``python -m exgrpo_utils.models.local_server
  MODEL``): the kit's batched engine (``chat.transformers_backend``); the requests in flight at one
  moment are generated together, so a client with ``max_in_flight`` 16 gets 16-row batches;
* ``transformers``: ``transformers serve`` (one request at a time on CPU: about 25 times slower
  here for 16 requests in flight, and its continuous-batching mode reserves most of the RAM).

    with serve_locally("/path/to/checkpoint") as base_url:   # "http://127.0.0.1:<port>/v1"
        backend = OpenAICompatibleBackend(base_url=base_url, model="/path/to/checkpoint")
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import Future
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .chat import transformers_backend
from .generation import SamplingConfig

# httpx is imported inside the function that uses it.


class ServerError(RuntimeError):
    """The local server exited or did not answer its health check in time (the message holds its log's tail)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextmanager
def serve_locally(model_path: str, *, engine: str = "kit", host: str = "127.0.0.1", port: int | None = None,
                  startup_timeout_s: float = 240, log_path: str | Path | None = None, env: dict[str, str] | None = None,
                  dtype: str = "float32"):
    """Run an OpenAI-compatible server for ``model_path`` on ``host`` until the block ends; yields the
    ``/v1`` base URL. ``engine``: "kit" (this module, batched) or "transformers" (``transformers
    serve``). Offline: the hub is never contacted (``HF_HUB_OFFLINE=1``); ``env`` adds to the
    server's environment."""
    import httpx

    port = port or free_port(host)
    if engine == "kit":
        cmd = [sys.executable, "-m", "exgrpo_utils.models.local_server", "--host", host, "--port", str(port),
               "--dtype", dtype, str(model_path)]
    elif engine == "transformers":
        exe = Path(sys.executable).with_name("transformers")
        if not exe.exists():
            raise ServerError(f"{exe} not found: the transformers CLI comes with the kit's environment (make setup)")
        cmd = [str(exe), "serve", "--host", host, "--port", str(port), str(model_path)]
    else:
        raise ValueError(f"engine must be 'kit' or 'transformers', got {engine!r}")
    log_path = Path(log_path) if log_path else Path(tempfile.mkdtemp(prefix="exgrpo-serve-")) / "serve.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", **(env or {}))
    with open(log_path, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    url = f"http://{host}:{port}"

    def tail() -> str:
        return log_path.read_text(errors="replace")[-2000:]

    try:
        deadline = time.time() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise ServerError(f"the {engine} server exited with {proc.returncode} (log {log_path}):\n{tail()}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                raise ServerError(f"the {engine} server did not answer {url}/health within {startup_timeout_s:.0f} s "
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


# ---------------------------------------------------------------------------------------------
# The kit's server: ``python -m exgrpo_utils.models.local_server MODEL [--port N]``

class Batcher:
    """Collects the requests in flight and answers them through one ``backend.complete`` call per
    batch (requests with the same sampling settings share a batch). ``wait_s``: how long the first
    request of a batch waits for company."""

    def __init__(self, backend, *, max_batch: int = 64, wait_s: float = 0.05):
        self.backend, self.max_batch, self.wait_s = backend, max_batch, wait_s
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def submit(self, messages: list[dict], sampling) -> Future:
        fut: Future = Future()
        self._queue.put((messages, sampling, fut))
        return fut

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _take(self) -> list | None:
        first = self._queue.get()
        if first is None:
            return None
        batch, deadline = [first], time.time() + self.wait_s
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.time()))
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)
                break
            batch.append(item)
        return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            groups: dict = {}
            for messages, sampling, fut in batch:
                groups.setdefault(sampling, []).append((messages, fut))
            for sampling, items in groups.items():
                try:
                    results = self.backend.complete([m for m, _ in items], sampling)
                    if len(results) != len(items):
                        raise RuntimeError(f"the backend returned {len(results)} results for {len(items)} requests")
                except Exception as exc:  # every waiting request gets the error (HTTP 500), the server lives on
                    for _, fut in items:
                        fut.set_exception(exc)
                    continue
                for (_, fut), res in zip(items, results):
                    fut.set_result(res)


REQUEST_TIMEOUT_S = 3600.0  # a request still unanswered after this gets HTTP 500 (the batch thread is stuck)


def _number(body: dict, key: str, kind, default, low: float, high: float):
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise ValueError(f"{key} must be a number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{key} must be in [{low}, {high}], got {value!r}")
    return kind(value)


def _sampling_of(body: dict) -> SamplingConfig:
    """The request's sampling settings, checked (a bad value is the client's error, HTTP 400)."""
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return SamplingConfig(max_new_tokens=_number(body, key, int, 1024, 1, 1 << 20),
                          temperature=_number(body, "temperature", float, 1.0, 0.0, 100.0),
                          top_p=_number(body, "top_p", float, 1.0, 0.0, 1.0),
                          seed=_number(body, "seed", int, None, -(1 << 63), (1 << 64) - 1))


def _messages_of(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages):
        raise ValueError("messages must be a non-empty list of {role: str, content: str}")
    return messages


class ChatServer(ThreadingHTTPServer):
    """The loopback server: what its requests need (the batcher, the served model's name, its tokenizer
    for the usage counts) lives here, where ``ChatHandler`` reads it through ``self.server``."""
    daemon_threads = True

    def __init__(self, address, batcher: Batcher, model_name: str, tokenizer=None):
        super().__init__(address, ChatHandler)
        self.batcher, self.model_name, self.tokenizer = batcher, model_name, tokenizer

    def prompt_tokens(self, messages: list[dict]) -> int:
        if self.tokenizer is None:
            return 0
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


class ChatHandler(BaseHTTPRequestHandler):
    """One request: ``/health``, ``/v1/models`` and ``/v1/chat/completions`` (no streaming)."""
    protocol_version = "HTTP/1.1"
    server: ChatServer

    def log_message(self, fmt, *args):  # one line per request on stderr (the server's log)
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": {"message": message, "type": "invalid_request_error", "code": status}})

    def do_GET(self):
        if self.path.rstrip("/") == "/health":
            self._send(200, {"status": "ok"})
        elif self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": self.server.model_name, "object": "model",
                                                         "owned_by": "local"}]})
        else:
            self._error(404, f"no route {self.path}")

    def _request(self) -> tuple[dict, list[dict], SamplingConfig]:
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        body = json.loads(self.rfile.read(length) or b"{}")
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        return body, _messages_of(body), _sampling_of(body)

    def do_POST(self):
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._error(404, f"no route {self.path}")
        try:
            body, messages, sampling = self._request()
        except (ValueError, KeyError, TypeError) as exc:
            return self._error(400, f"bad request: {exc}")
        model_name = self.server.model_name
        if body.get("stream"):
            return self._error(400, "streaming is not supported by this server")
        if body.get("model") not in (None, model_name):
            return self._error(404, f"model {body.get('model')!r} not found; this server has {model_name!r}")
        try:
            res = self.server.batcher.submit(messages, sampling).result(timeout=REQUEST_TIMEOUT_S)
            prompt_tokens = self.server.prompt_tokens(messages)
        except Exception as exc:  # noqa: BLE001 - reported to the client, logged, the server goes on
            sys.stderr.write(f"generation failed: {type(exc).__name__}: {exc}\n")
            return self._error(500, f"generation failed: {type(exc).__name__}: {exc}")
        completion = res.completion_tokens or 0
        self._send(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": res.text},
                         "finish_reason": "length" if completion >= sampling.max_new_tokens else "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                      "total_tokens": prompt_tokens + completion}})


def make_server(backend, model_name: str, host: str = "127.0.0.1", port: int = 0, **batcher_options) -> ChatServer:
    """The HTTP server (not started): ``/health``, ``/v1/models`` and ``/v1/chat/completions`` (no streaming)."""
    tokenizer = getattr(getattr(backend, "generator", None), "tokenizer", None)
    return ChatServer((host, port), Batcher(backend, **batcher_options), model_name, tokenizer)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Serve a local model (registry name or checkpoint) behind an "
                                             "OpenAI-compatible /v1/chat/completions on loopback, with the kit's engine.")
    ap.add_argument("model", help="registry name (models.registry.MODELS) or local checkpoint")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch-size", type=int, default=64, help="rows generated together (the engine's batch)")
    ap.add_argument("--wait", type=float, default=0.05, help="seconds a batch waits for more requests")
    args = ap.parse_args(argv)
    backend = transformers_backend(args.model, dtype=args.dtype, batch_size=args.batch_size)
    server = make_server(backend, args.model, args.host, args.port, max_batch=args.batch_size, wait_s=args.wait)
    sys.stderr.write(f"serving {args.model} on http://{args.host}:{server.server_address[1]}/v1\n")
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.batcher.close()  # type: ignore[attr-defined]
        server.server_close()


if __name__ == "__main__":
    main()
