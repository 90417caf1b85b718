"""Probe the kit's OpenAI-compatible loopback server with what one client can do to the others.

    python benchmarks/probe_server.py [--model smollm2-135m-instruct] [--long-tokens 600]

Starts the server (``models.local_server.serve_locally``, the kit's engine, float32) on loopback and
prints one line per case, with the HTTP status and the latency:

* malformed bodies (bad JSON, wrong types, a deeply nested body, an unknown route);
* a prompt longer than the model's positions sent with seven normal requests;
* a short request sent 1.5 s after a long one (``--long-tokens`` new tokens): the short one's latency;
* a client that disconnects during a long generation, then a new request: its wait, and the CPU
  seconds the server spends in the 3 s after it (a generation left running would keep it busy);
* a 50 MB body (refused from its Content-Length); ``max_tokens: 1e400``; ``temperature: 1e-300``;
* a ``GET`` hidden in the body of a ``POST`` that gets an error: the bytes that come back;
* 16 and 32 requests at once, and 200 idle connections (how many the server turns away).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from exgrpo_utils.models.local_server import serve_locally

# httpx is imported inside main (the kit's HTTP client library, like the server module does).


def line(case: str, status, seconds: float, note: str = "") -> None:
    print(f"{case:<44} {str(status):<26} {seconds:8.2f} s  {note}", flush=True)


def raw(port: int, data: bytes, wait_s: float = 30.0) -> bytes:
    """Send raw bytes; what comes back until the server closes or ``wait_s`` passes."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        try:
            s.sendall(data)
        except OSError:  # the server stopped reading (a refused body): its reply may still be there
            pass
        got, end = b"", time.monotonic() + wait_s
        while (left := end - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            got += chunk
        return got


def post_bytes(body: bytes, path: str = "/v1/chat/completions", close: bool = True) -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (path.encode(), len(body), b"Connection: close\r\n" if close else b"") + body)


def statuses(reply: bytes) -> list[int]:
    """The status of every response in ``reply`` (several when a connection answered several requests)."""
    return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", reply)]


def server_pid(port: int) -> int | None:
    """The server process listening on ``port`` (Linux: from /proc), for its CPU time."""
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"exgrpo_utils.models.local_server" in cmd and str(port).encode() in cmd:
            return int(proc.name)
    return None


def cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(fn, *args, **kwargs):
    start = time.monotonic()
    out = fn(*args, **kwargs)
    return out, time.monotonic() - start


def probe(base: str, port: int, long_tokens: int) -> None:
    import httpx

    url = f"{base}/chat/completions"
    client = httpx.Client(timeout=600)

    def ask(text: str, **fields):
        return client.post(url, json={"messages": [{"role": "user", "content": text}], **fields})

    def story(n: int):
        return ask("Write a very long story about a lighthouse keeper, with many chapters.", max_tokens=n,
                   temperature=0)

    for name, body in (("malformed: bad JSON", b"{not json"), ("malformed: messages not a list", b'{"messages": 3}'),
                       ("malformed: nested 100,000 deep", b"[" * 100_000 + b"]" * 100_000),
                       ("malformed: unknown route", b"{}")):
        reply, s = timed(raw, port, post_bytes(body, "/v1/nowhere" if "route" in name else "/v1/chat/completions"))
        line(name, statuses(reply), s)

    big = "lighthouse keeper " * 4500  # about 9,000 tokens
    with ThreadPoolExecutor(8) as pool:
        start = time.monotonic()
        futures = [pool.submit(ask, big, max_tokens=16)] + [pool.submit(ask, f"Say hello to person {i}.", max_tokens=16)
                                                           for i in range(7)]
        replies = [f.result() for f in futures]
    oversized = replies[0].json()["error"]["message"] if replies[0].status_code != 200 else ""
    line("oversized prompt + 7 normal", [r.status_code for r in replies], time.monotonic() - start, oversized[:90])

    long = threading.Thread(target=story, args=(long_tokens,))
    start = time.monotonic()
    long.start()
    time.sleep(1.5)
    short, s = timed(ask, "Say hi.", max_tokens=4, temperature=0)
    long.join()
    line(f"short 1.5 s after a {long_tokens}-token one", short.status_code, s,
         f"(the long one took {time.monotonic() - start:.1f} s)")

    pid = server_pid(port)
    body = json.dumps({"messages": [{"role": "user", "content": "Write a very long story."}], "max_tokens": long_tokens,
                       "temperature": 0}).encode()
    with socket.create_connection(("127.0.0.1", port)) as s_:
        s_.sendall(post_bytes(body))
        time.sleep(1.5)
    after, s = timed(ask, "Say hi.", max_tokens=4, temperature=0)
    before_cpu = cpu_seconds(pid)
    time.sleep(3)
    line("request after a client disconnected", after.status_code, s,
         f"server CPU in the next 3 s: {cpu_seconds(pid) - before_cpu:.2f} s")

    huge = b'{"messages": [{"role": "user", "content": "' + b"a" * (50 << 20) + b'"}]}'
    reply, s = timed(raw, port, post_bytes(huge))
    line("50 MB body", statuses(reply), s)
    for name, fields in (("max_tokens: 1e400", b'"max_tokens": 1e400'),
                         ("temperature: 1e-300", b'"max_tokens": 4, "temperature": 1e-300')):
        body = b'{"messages": [{"role": "user", "content": "Say hi."}], ' + fields + b"}"
        reply, s = timed(raw, port, post_bytes(body), 120)
        line(name, statuses(reply) or "no reply", s, reply.rsplit(b"\r\n\r\n", 1)[-1][:80].decode(errors="replace"))
    smuggled = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    reply, s = timed(raw, port, post_bytes(smuggled, "/v1/nowhere", close=False) + smuggled, 5)
    line("GET smuggled in a POST body after an error", statuses(reply), s,
         "served" if b'"ok"' in reply else "not served")

    for n in (16, 32):
        with ThreadPoolExecutor(n) as pool:
            start = time.monotonic()
            codes = list(pool.map(lambda i: ask(f"What is {i} + {i}?", max_tokens=32, temperature=0).status_code,
                                  range(n)))
        line(f"{n} requests at once", f"{codes.count(200)}/{n} answered 200", time.monotonic() - start)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]
    time.sleep(0.5)
    refused = 0
    for s_ in idle:
        s_.settimeout(0.05)
        try:
            refused += s_.recv(12).startswith(b"HTTP/1.1 503")
        except (TimeoutError, ConnectionResetError):
            pass
    line("200 idle connections", f"{refused} turned away (503)", 0.0, f"health meanwhile: {raw_health(port)}")
    for s_ in idle:
        s_.close()


def raw_health(port: int) -> str:
    reply = raw(port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", 5)
    return str(statuses(reply))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="registry name or checkpoint")
    ap.add_argument("--long-tokens", type=int, default=600, help="new tokens of the long requests")
    args = ap.parse_args()
    start = time.monotonic()
    with serve_locally(args.model) as base:
        port = int(base.rsplit(":", 1)[1].split("/")[0])
        line("server started", "", time.monotonic() - start, base)
        probe(base, port, args.long_tokens)


if __name__ == "__main__":
    main()
