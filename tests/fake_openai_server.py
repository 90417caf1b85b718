"""A scripted OpenAI-compatible server on loopback, for fault cases (tests only).

Each request pops the next action from a script; when the script is empty it answers normally
with "echo: <last user message>". Actions: ("ok",), ("status", code[, retry_after]),
("malformed",), ("sleep", seconds) (then answers normally), ("not_json_choices",),
("echo_headers", code[, pad]): answers ``code`` with a body that echoes the request's headers, its
bearer token as it is and URL-encoded, after ``pad`` filler characters (a careless server's error
page; code 200 gives a body without choices, a malformed answer).
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote


class FakeServer:
    def __init__(self, script=None, delay: float = 0.0):
        self.script = list(script or [])
        self.delay = delay
        self.requests = []  # (path, headers, body)
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with server._lock:
                    server.requests.append((self.path, dict(self.headers), body))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    action = server.script.pop(0) if server.script else ("ok",)
                try:
                    if server.delay:
                        time.sleep(server.delay)
                finally:  # counted out before the reply is sent: the client may send its next request at once
                    with server._lock:
                        server.in_flight -= 1
                self._act(action, body)

            def _act(self, action, body):
                kind = action[0]
                if kind == "sleep":
                    time.sleep(action[1])
                    kind = "ok"
                if kind == "echo_headers":
                    self._echo_headers(action[1], action[2] if len(action) > 2 else 0)
                    return
                if kind == "status":
                    self.send_response(action[1])
                    if len(action) > 2:
                        self.send_header("Retry-After", str(action[2]))
                    payload = json.dumps({"error": {"message": f"scripted {action[1]}"}}).encode()
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if kind == "malformed":
                    payload = b'{"choices": [ {"message": '
                elif kind == "not_json_choices":
                    payload = json.dumps({"choices": []}).encode()
                else:
                    user = [m["content"] for m in body.get("messages", []) if m["role"] == "user"][-1]
                    payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": f"echo: {user}"}}],
                                          "usage": {"prompt_tokens": 7, "completion_tokens": 3}}).encode()
                self._send(200, payload)

            def _echo_headers(self, code, pad):
                token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                echo = {"padding": "x" * pad, "message": f"scripted {code}", "seen_token": token,
                        "seen_url": f"{self.path}?key={quote(token, safe='')}", "request_headers": dict(self.headers)}
                self._send(code, json.dumps({"error": echo} if code != 200 else {"choices": [], "echo": echo}).encode())

            def _send(self, code, payload):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


if __name__ == "__main__":  # used by the kill/resume test: serve until killed
    import sys

    with FakeServer(delay=float(sys.argv[1])) as s:
        print(s.port, flush=True)
        threading.Event().wait()
