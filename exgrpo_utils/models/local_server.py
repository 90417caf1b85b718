"""A local OpenAI-compatible server on loopback, started and stopped by the caller, so that the
paper-scale teacher path (HTTP client, cache, Eq. 1) runs offline end to end with any local model as
a stand-in teacher (tests, the paper-mini preset).

Two engines behind ``POST /v1/chat/completions``:

* ``kit`` (default): this module run as a program (``python -m exgrpo_utils.models.local_server
  MODEL``): the kit's engine (``chat.transformers_backend``) with continuous batching across requests
  (``serving.EngineBatcher``): a request joins the running generation as soon as a row is free, so a
  short one is not held behind a long one, and leaves it when its client disconnects;
* ``transformers``: ``transformers serve`` (one request at a time on CPU: about 25 times slower
  here for 16 requests in flight, and its continuous-batching mode reserves most of the RAM).

What one client cannot do to the others (the kit's server): a body over ``--max-body`` (4 MiB) is
refused from its Content-Length, unread (413); a prompt whose tokens + ``max_tokens`` exceed the
model's positions gets 400 naming the limit before it is queued (without ``max_tokens``: 1024 or the
room the prompt leaves); numbers are range-checked (inf, NaN, huge integers: 400), a temperature
below 1e-5 is greedy decoding; after any error reply the connection closes, so no unread byte is
taken for a request; a generation that fails is retried request by request, so it fails (500) only
the request that caused it; a connection idle for ``--idle-timeout`` s (30) closes, and beyond
``--max-connections`` (128) open connections a new one gets 503.

    with serve_locally("/path/to/checkpoint") as base_url:   # "http://127.0.0.1:<port>/v1"
        backend = OpenAICompatibleBackend(base_url=base_url, model="/path/to/checkpoint")
"""
from __future__ import annotations

import argparse
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import Future, wait
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .chat import transformers_backend
from .generation import SamplingConfig
from .serving import Batcher, EngineBatcher, fit_budget, messages_of, sampling_of, shown

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

REQUEST_TIMEOUT_S = 3600.0  # a request still unanswered after this gets HTTP 500 (and leaves the engine)
MAX_BODY_BYTES = 4 << 20
IDLE_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 128
POLL_S = 0.1  # how often a handler waiting for its answer looks whether its client is still there


class _Refusal(Exception):
    """A request answered with the error ``status``; ``unread``: its body was left unread."""

    def __init__(self, status: int, message: str, unread: bool = False):
        super().__init__(message)
        self.status, self.unread = status, unread


class ChatServer(ThreadingHTTPServer):
    """The loopback server: what its requests need (the batcher, the served model's name, the limits)
    lives here, where ``ChatHandler`` reads it through ``self.server``. A thread per connection, at most
    ``max_connections``: a connection beyond gets 503 at once."""
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address, batcher: Batcher, model_name: str, *, max_body_bytes: int = MAX_BODY_BYTES,
                 idle_timeout_s: float = IDLE_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS):
        super().__init__(address, ChatHandler)
        self.batcher, self.model_name = batcher, model_name
        self.max_body_bytes, self.idle_timeout_s = max_body_bytes, idle_timeout_s
        self._room = threading.BoundedSemaphore(max_connections)

    def process_request(self, request, client_address):
        if not self._room.acquire(blocking=False):
            body = json.dumps({"error": {"message": "too many connections; retry later", "code": 503}}).encode()
            try:
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
                                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._room.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._room.release()


class ChatHandler(BaseHTTPRequestHandler):
    """One connection: ``/health``, ``/v1/models`` and ``/v1/chat/completions`` (no streaming)."""
    protocol_version = "HTTP/1.1"
    server: ChatServer

    def setup(self):
        self.timeout = self.server.idle_timeout_s  # each read or write waits at most this: idle connections close
        super().setup()

    def log_message(self, fmt, *args):  # one line per request on stderr (the server's log)
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

    def _send(self, status: int, payload: dict, close: bool = False) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, unread: bool = False) -> None:
        """An error reply, after which the connection closes: no byte the request left unread is ever
        taken for the next request."""
        self._send(status, {"error": {"message": message, "type": "invalid_request_error", "code": status}}, close=True)
        if unread:
            self._drain()

    def _drain(self, max_bytes: int = 64 << 20, max_s: float = 2.0) -> None:
        """After refusing a body unread: take in and drop what the client still sends, briefly, so that
        it reads the reply rather than a reset connection."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            end, got = time.monotonic() + max_s, 0
            while got < max_bytes and (left := end - time.monotonic()) > 0:
                self.connection.settimeout(left)
                chunk = self.connection.recv(1 << 16)
                if not chunk:
                    break
                got += len(chunk)
        except OSError:
            pass

    def do_GET(self):
        # a GET that declares a body is answered, then its connection closed (the body is never read)
        close = bool(self.headers.get("Transfer-Encoding")) or self.headers.get("Content-Length", "0").strip() != "0"
        if self.path.rstrip("/") == "/health":
            self._send(200, {"status": "ok"}, close)
        elif self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": self.server.model_name, "object": "model",
                                                         "owned_by": "local"}]}, close)
        else:
            self._error(404, f"no route {self.path}")

    def _body(self) -> bytes:
        """The whole declared body: refused unread above the size limit (413), else read before any reply."""
        if self.headers.get("Transfer-Encoding"):
            raise _Refusal(411, "send the body with a Content-Length (chunked bodies are refused)", unread=True)
        declared = {v.strip() for v in self.headers.get_all("Content-Length") or ["0"]}
        raw = declared.pop()
        if declared or not (raw.isascii() and raw.isdigit()):
            raise _Refusal(400, "bad request: a bad Content-Length", unread=True)
        limit = self.server.max_body_bytes
        if len(raw) > 15 or int(raw) > limit:
            raise _Refusal(413, f"the body of {int(raw) if len(raw) <= 15 else 'over 10^15'} bytes is larger than "
                                f"this server takes ({limit} bytes; --max-body)", unread=True)
        length, chunks, got = int(raw), [], 0
        deadline = time.monotonic() + self.server.idle_timeout_s
        while got < length:
            if time.monotonic() > deadline:
                raise _Refusal(408, "the body did not arrive in time", unread=True)
            chunk = self.rfile.read1(min(1 << 16, length - got))
            if not chunk:
                raise _Refusal(400, "bad request: the body ended before its Content-Length")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _parse(self, raw: bytes) -> tuple[list[dict], SamplingConfig, list[int] | None]:
        """The request's messages, sampling settings and prompt tokens (tokenized once, here), checked."""
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            if body.get("stream"):
                raise _Refusal(400, "bad request: streaming is not supported by this server")
            if body.get("model") not in (None, self.server.model_name):
                raise _Refusal(404, f"model {shown(body.get('model'))} not found; this server has "
                                    f"{self.server.model_name!r}")
            messages = messages_of(body)
            asked, sampling = sampling_of(body, self.server.batcher.limit)
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            raise _Refusal(400, f"bad request: {exc}") from exc
        try:
            ids = self.server.batcher.prompt_ids(messages)
            return messages, fit_budget(sampling, asked, ids, self.server.batcher.limit), ids
        except Exception as exc:  # noqa: BLE001 - the chat template or the length checks refused these messages
            raise _Refusal(400, f"bad request: {exc}") from exc

    def do_POST(self):
        try:
            raw = self._body()
            if self.path.rstrip("/") != "/v1/chat/completions":
                raise _Refusal(404, f"no route {self.path}")
            messages, sampling, ids = self._parse(raw)
        except _Refusal as refusal:
            return self._error(refusal.status, str(refusal), refusal.unread)
        cancel = threading.Event()
        try:
            res = self._await(self.server.batcher.submit(messages, sampling, prompt_ids=ids, cancel=cancel), cancel)
        except Exception as exc:  # noqa: BLE001 - reported to the client, logged, the server goes on
            sys.stderr.write(f"generation failed: {type(exc).__name__}: {exc}\n")
            return self._error(500, f"generation failed: {type(exc).__name__}: {exc}")
        if res is None:  # the client went away: its generation was dropped, there is no one to answer
            self.close_connection = True
            return
        prompt_tokens, completion = len(ids or ()), res.completion_tokens or 0
        self._send(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": self.server.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": res.text},
                         "finish_reason": "length" if completion >= sampling.max_new_tokens else "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                      "total_tokens": prompt_tokens + completion}})

    def _await(self, fut: Future, cancel: threading.Event):
        """The future's result, or None when the client went away first (then ``cancel`` is set: the
        engine drops the request's row at its next step)."""
        deadline, watching = time.monotonic() + REQUEST_TIMEOUT_S, True
        while not fut.done():
            if time.monotonic() > deadline:
                cancel.set()
                raise TimeoutError(f"no answer within {REQUEST_TIMEOUT_S:.0f} s")
            wait([fut], timeout=POLL_S)
            if watching and not fut.done():
                gone = self._client_gone()
                if gone:
                    cancel.set()
                    return None
                watching = gone is False
        return fut.result()

    def _client_gone(self) -> bool | None:
        """True when the client closed or reset the connection; False while it waits quietly; None when
        it sent more bytes (a pipelined request: the connection can no longer be watched this way)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b"" or None
        except ValueError:  # a descriptor beyond select's range
            return None
        except OSError:
            return True


def make_server(backend, model_name: str, host: str = "127.0.0.1", port: int = 0, *,
                max_body_bytes: int = MAX_BODY_BYTES, idle_timeout_s: float = IDLE_TIMEOUT_S,
                max_connections: int = MAX_CONNECTIONS, **batcher_options) -> ChatServer:
    """The HTTP server (not started): ``/health``, ``/v1/models`` and ``/v1/chat/completions`` (no
    streaming), over an ``EngineBatcher`` for a backend on the kit's engine, else a ``Batcher``."""
    batcher = (EngineBatcher if EngineBatcher.fits(backend) else Batcher)(backend, **batcher_options)
    try:
        return ChatServer((host, port), batcher, model_name, max_body_bytes=max_body_bytes,
                          idle_timeout_s=idle_timeout_s, max_connections=max_connections)
    except BaseException:
        batcher.close()
        raise


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Serve a local model (registry name or checkpoint) behind an "
                                             "OpenAI-compatible /v1/chat/completions on loopback, with the kit's engine.")
    ap.add_argument("model", help="registry name (models.registry.MODELS) or local checkpoint")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch-size", type=int, default=64, help="rows generated together (the engine's slots)")
    ap.add_argument("--wait", type=float, default=0.05, help="seconds an idle server's first request waits for company")
    ap.add_argument("--max-body", type=int, default=MAX_BODY_BYTES, help="largest request body in bytes (else 413)")
    ap.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT_S, help="seconds before an idle connection closes")
    ap.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS, help="open connections at most (else 503)")
    args = ap.parse_args(argv)
    backend = transformers_backend(args.model, dtype=args.dtype, batch_size=args.batch_size)
    server = make_server(backend, args.model, args.host, args.port, max_batch=args.batch_size, wait_s=args.wait,
                         max_body_bytes=args.max_body, idle_timeout_s=args.idle_timeout,
                         max_connections=args.max_connections)
    sys.stderr.write(f"serving {args.model} on http://{args.host}:{server.server_address[1]}/v1\n")
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.batcher.close()
        server.server_close()


if __name__ == "__main__":
    main()
