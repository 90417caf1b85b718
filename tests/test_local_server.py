"""The kit's OpenAI-compatible loopback server (paper-mini's stand-in teacher endpoint), driven by the
kit's own HTTP client; a stand-in backend replaces the model so no weights are loaded."""
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

from exgrpo_utils.models.cache import ChatResult, CompletionCache
from exgrpo_utils.models.chat import CachedBackend, OpenAICompatibleBackend, TeacherConfigError, TeacherError
from exgrpo_utils.models.generation import SamplingConfig
from exgrpo_utils.models.local_server import make_server
from exgrpo_utils.teach import teachers
from exgrpo_utils.teach.settings import TeacherSettings


class EchoBackend:
    """Answers each prompt's last message reversed; records the batches it was given."""

    def __init__(self):
        self.batches: list[int] = []

    def complete(self, batch, sampling):
        self.batches.append(len(batch))
        if any("explode" in m[-1]["content"] for m in batch):
            raise RuntimeError("boom")
        return [ChatResult(m[-1]["content"][::-1], None, min(3, sampling.max_new_tokens)) for m in batch]


@pytest.fixture
def server():
    backend = EchoBackend()
    srv = make_server(backend, "echo", port=0, max_batch=16, wait_s=0.2)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1", backend
    srv.shutdown()
    srv.batcher.close()
    srv.server_close()


def test_requests_in_flight_are_generated_together(server):
    url, backend = server
    client = OpenAICompatibleBackend(base_url=url, model="echo", max_in_flight=8, max_retries=0)
    out = client.complete([[{"role": "user", "content": f"q{i}"}] for i in range(8)], SamplingConfig(max_new_tokens=5))
    assert [r.text for r in out] == [f"{i}q" for i in range(8)]
    assert sum(backend.batches) == 8 and max(backend.batches) > 1  # batched, not one by one
    assert client.usage.requests == 8 and client.usage.completion_tokens == 24


def test_wrong_model_and_failures_are_clear_errors(server):
    url, _ = server
    with pytest.raises(TeacherConfigError, match="wrong model name"):
        OpenAICompatibleBackend(base_url=url, model="other", max_retries=0).complete_one(
            [{"role": "user", "content": "x"}], SamplingConfig())
    with pytest.raises(TeacherError, match="HTTP 500"):  # a generation error reaches the client; the server lives on
        OpenAICompatibleBackend(base_url=url, model="echo", max_retries=0).complete_one(
            [{"role": "user", "content": "explode"}], SamplingConfig())
    ok = OpenAICompatibleBackend(base_url=url, model="echo", max_retries=0).complete_one(
        [{"role": "user", "content": "ab"}], SamplingConfig())
    assert ok.text == "ba"


def test_a_served_teacher_is_cached_by_what_it_serves_not_its_port(server, tmp_path):
    url, backend = server
    cache = CompletionCache(tmp_path / "c.sqlite")
    msgs = [[{"role": "user", "content": "hello"}]]
    first = CachedBackend(OpenAICompatibleBackend(base_url=url, model="echo", identity=teachers.SERVED_IDENTITY), cache)
    first.complete(msgs, SamplingConfig())
    elsewhere = OpenAICompatibleBackend(base_url="http://127.0.0.1:1/v1", model="echo", identity=teachers.SERVED_IDENTITY,
                                        max_retries=0)
    assert CachedBackend(elsewhere, cache).complete(msgs, SamplingConfig())[0].text == "olleh"  # from the cache
    assert elsewhere.usage.requests == 0
    plain = OpenAICompatibleBackend(base_url="http://127.0.0.1:1/v1", model="echo", max_retries=0)
    assert plain.identity == {"base_url": "http://127.0.0.1:1/v1"}  # a remote API is known by its URL


def test_serving_needs_an_openai_teacher_and_records_a_stable_endpoint():
    plain = TeacherSettings(teacher="program")
    with teachers.serving(plain) as s:
        assert s is plain
    with pytest.raises(TeacherConfigError, match="teacher openai"):
        with teachers.serving(TeacherSettings(teacher="program", teacher_serve=True)):
            pass
    served = TeacherSettings(teacher="openai", teacher_model="smollm2-135m-instruct", teacher_serve=True,
                             teacher_base_url="http://127.0.0.1:5555/v1")
    assert teachers.endpoint(served) == "served locally: smollm2-135m-instruct"
    assert teachers.endpoint(TeacherSettings()) == TeacherSettings().teacher_base_url


@pytest.mark.parametrize("body", [{"messages": [{"role": "user", "content": "x"}], "seed": [1]},
                                  {"messages": [{"role": "user", "content": 5}]},
                                  {"messages": [{"role": "user", "content": "x"}], "max_tokens": -3},
                                  {"messages": []}, ["not", "an", "object"]])
def test_bad_requests_are_refused_and_the_server_lives_on(server, body):
    import httpx

    url, _ = server
    r = httpx.post(f"{url}/chat/completions", json=body, timeout=10)
    assert r.status_code == 400 and "bad request" in r.json()["error"]["message"]
    ok = OpenAICompatibleBackend(base_url=url, model="echo", max_retries=0).complete_one(
        [{"role": "user", "content": "ok"}], SamplingConfig())
    assert ok.text == "ko"


# ---------------------------------------------------------------------------------------------
# A server that one client cannot break (issue 23, item 3): each test below failed on the server
# before it (one request's fault failed the batch, a short request waited for a long one, a client
# that left kept its generation running, bodies and numbers were not bounded, an unread body was
# taken for the next request).

STOP, NEVER = 7, 10_000  # the tiny model's EOS; a stop id it can never produce (its rows run their budget)


class CharTokenizer:
    """One token per character (ids 8..95) and a plain chat template: enough of a tokenizer for the
    kit's engine on a tiny random model."""
    eos_token_id = pad_token_id = STOP
    padding_side = "left"
    all_special_ids = [STOP]

    def get_added_vocab(self):
        return {}

    def get_vocab(self):
        return {chr(32 + i): 8 + i for i in range(88)}

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=False):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + ("<assistant>" if add_generation_prompt else "")

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [8 + ord(c) % 88 for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(32 + (i - 8) % 88) for i in ids if i != STOP)


def engine_backend(stop_ids=(NEVER,), step_s: float = 0.0):
    """A backend on the kit's engine over a tiny random model (256 positions); ``forwards[0]`` counts
    the model's forward passes, each of which takes at least ``step_s``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from exgrpo_utils.models.chat import GeneratorBackend
    from exgrpo_utils.models.generation import FastGenerator

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                         eos_token_id=STOP, pad_token_id=0)).eval()
    forwards = [0]
    plain = model.forward

    def counted(*args, **kwargs):
        forwards[0] += 1
        time.sleep(step_s)
        return plain(*args, **kwargs)

    model.forward = counted
    gen = FastGenerator(model, CharTokenizer(), batch_size=8)
    gen.stop_ids = tuple(stop_ids)
    return GeneratorBackend(gen, "fast", "tiny", batch_size=8), forwards


@contextmanager
def running(srv):
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.batcher.close()
        srv.server_close()


def post(port: int, body, timeout: float = 60):
    import httpx

    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", content=content, timeout=timeout,
                      headers={"Content-Type": "application/json"})


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def ask(text: str, **fields) -> dict:
    return {"messages": [{"role": "user", "content": text}], **fields}


def wait_for(condition, timeout_s: float = 60) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def exchange(port: int, data: bytes, wait_s: float = 5.0) -> tuple[bytes, bool]:
    """Send raw bytes; return what came back within ``wait_s`` and whether the server closed."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(data)
        got, end = b"", time.monotonic() + wait_s
        while (left := end - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                return got, True
            got += chunk
        return got, False


def test_a_prompt_longer_than_the_model_is_refused_alone_with_the_limit():
    backend, _ = engine_backend()
    with running(make_server(backend, "tiny", max_batch=8, wait_s=0.3)) as port:
        bodies = [ask(f"q{i}", max_tokens=4, temperature=0) for i in range(6)]
        bodies += [ask("x" * 300, max_tokens=4, temperature=0),  # 300 prompt tokens > 256 positions
                   ask("y" * 200, max_tokens=100, temperature=0)]  # 217 tokens fit; with max_tokens they do not
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda b: post(port, b), bodies))
        assert [r.status_code for r in replies] == [200] * 6 + [400, 400]
        assert all("256 positions" in r.json()["error"]["message"] for r in replies[6:])
        assert "217 tokens + max_tokens 100 = 317" in replies[7].json()["error"]["message"]
        short = post(port, ask("y" * 200, temperature=0))  # no max_tokens: the room the prompt leaves
        assert short.status_code == 200 and short.json()["usage"]["completion_tokens"] == 256 - 217
        assert post(port, ask("z" * 10_000)).status_code == 400  # refused before it is tokenized


def test_one_failing_request_does_not_fail_the_requests_batched_with_it():
    backend = EchoBackend()
    texts = ["a1", "b2", "explode", "c3", "d4", "e5", "f6", "g7"]
    with running(make_server(backend, "echo", max_batch=8, wait_s=30)) as port:  # one batch of all 8
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda t: post(port, ask(t)), texts))
    assert [r.status_code for r in replies] == [200, 200, 500, 200, 200, 200, 200, 200]
    assert [r.json()["choices"][0]["message"]["content"] for r in replies if r.status_code == 200] == \
        [t[::-1] for t in texts if t != "explode"]
    assert backend.batches == [8] + [1] * 8  # the batch failed; the retry went one by one


def test_an_engine_run_that_fails_is_retried_one_request_at_a_time():
    backend, _ = engine_backend()
    srv = make_server(backend, "tiny", max_batch=8, wait_s=0.3)
    with running(srv):
        futures = [srv.batcher.submit([{"role": "user", "content": text}], SamplingConfig(max_new_tokens=3))
                   for text in ("fine", "x" * 300, "also fine")]  # the middle one fails the engine's run
        assert [len(futures[i].result(timeout=60).text) for i in (0, 2)] == [3, 3]
        with pytest.raises(ValueError, match="256 positions"):
            futures[1].result(timeout=60)


def test_a_short_request_joins_the_running_generation_instead_of_waiting_for_it():
    backend, forwards = engine_backend(step_s=0.003)
    with running(make_server(backend, "tiny", max_batch=8, wait_s=0.0)) as port:
        long_reply = []
        long = threading.Thread(target=lambda: long_reply.append(post(port, ask("long", max_tokens=230, temperature=0))))
        long.start()
        wait_for(lambda: forwards[0] >= 10)  # the long request is generating
        before = forwards[0]
        short = post(port, ask("short", max_tokens=3, temperature=0))
        assert short.status_code == 200 and long.is_alive() and not long_reply  # answered while the long one runs
        assert forwards[0] - before < 110  # a few steps (and the HTTP exchange), not the long one's 220 more
        long.join(timeout=120)
        assert long_reply[0].status_code == 200 and long_reply[0].json()["usage"]["completion_tokens"] == 230
    alone = backend.generator.generate([[{"role": "user", "content": "short"}]], SamplingConfig(max_new_tokens=3))
    assert short.json()["choices"][0]["message"]["content"] == alone[0].text  # greedy: as when run alone


def test_a_client_that_disconnects_leaves_the_engine_at_its_next_step():
    backend, forwards = engine_backend(step_s=0.003)
    with running(make_server(backend, "tiny", max_batch=8, wait_s=0.0)) as port:
        body = json.dumps(ask("long", max_tokens=200, temperature=0)).encode()
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_for(lambda: forwards[0] >= 10)
        s.close()  # the client goes away
        assert post(port, ask("next", max_tokens=3, temperature=0)).status_code == 200
        last, end = -1, time.monotonic() + 60
        while forwards[0] != last and time.monotonic() < end:  # until the engine is idle
            last = forwards[0]
            time.sleep(0.5)
        assert forwards[0] < 150  # the left request's 200 steps were not all run
        assert backend.usage.requests == 1  # only the second request was answered


def test_sixteen_requests_in_flight_on_the_engine_are_all_served_as_one_by_one():
    backend, _ = engine_backend(stop_ids=(STOP,))
    texts = [f"question {i}" * (1 + i % 3) for i in range(16)]
    with running(make_server(backend, "tiny", max_batch=8, wait_s=0.05)) as port:
        url = f"http://127.0.0.1:{port}/v1"
        client = OpenAICompatibleBackend(base_url=url, model="tiny", max_in_flight=16, max_retries=0)
        out = client.complete([[{"role": "user", "content": t}] for t in texts], SamplingConfig(max_new_tokens=6))
    one_by_one = [backend.generator.generate([[{"role": "user", "content": t}]], SamplingConfig(max_new_tokens=6))[0]
                  for t in texts]
    assert [r.text for r in out] == [c.text for c in one_by_one]
    assert client.usage.prompt_tokens == sum(len(CharTokenizer().apply_chat_template(
        [{"role": "user", "content": t}], add_generation_prompt=True)) for t in texts)


def test_an_oversized_body_is_refused_from_its_content_length_unread(server):
    port = port_of(server[0])
    start = time.monotonic()
    got, closed = exchange(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n"
                                 b'{"messages": [')
    assert got.startswith(b"HTTP/1.1 413") and b"4194304 bytes" in got and closed
    assert time.monotonic() - start < 3  # the body was never waited for


def test_idle_connections_are_closed_and_capped():
    srv = make_server(EchoBackend(), "echo", idle_timeout_s=0.5, max_connections=2)
    with running(srv) as port:
        first = socket.create_connection(("127.0.0.1", port))
        second = socket.create_connection(("127.0.0.1", port))
        time.sleep(0.2)
        got, _ = exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 503")  # a third connection is refused at once
        first.settimeout(5)
        assert first.recv(1) == b""  # idle for 0.5 s: closed by the server
        second.close()
        time.sleep(0.2)
        got, _ = exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", wait_s=1)
        assert got.startswith(b"HTTP/1.1 200")  # room again


@pytest.mark.parametrize("route", ["/v1/no-such-route", "/v1/chat/completions"])
def test_after_an_error_the_connection_closes_so_a_body_is_never_taken_for_a_request(server, route):
    port = port_of(server[0])
    smuggled = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    body = smuggled if route != "/v1/chat/completions" else b"not json" + smuggled
    got, closed = exchange(port, b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s%s"
                           % (route.encode(), len(body), body, smuggled))
    assert got.count(b"HTTP/1.1 ") == 1 and b"Connection: close" in got and closed
    assert got.startswith(b"HTTP/1.1 404" if route != "/v1/chat/completions" else b"HTTP/1.1 400")


class RecordingEcho(EchoBackend):
    def complete(self, batch, sampling):
        self.sampling = sampling
        return super().complete(batch, sampling)


@pytest.mark.parametrize("raw", ['"max_tokens": 1e400', '"max_tokens": NaN', '"max_tokens": -Infinity',
                                 '"max_tokens": 1' + "0" * 400, '"temperature": 1e400', '"top_p": NaN',
                                 '"seed": 1' + "0" * 400])
def test_overflowing_numbers_are_client_errors(raw):
    with running(make_server(RecordingEcho(), "echo")) as port:
        r = post(port, '{"messages": [{"role": "user", "content": "hi"}], %s}' % raw)
        assert r.status_code == 400 and "bad request" in r.json()["error"]["message"]
        assert len(r.json()["error"]["message"]) < 200


def test_a_deeply_nested_body_is_a_client_error(server):
    port = port_of(server[0])
    assert post(port, "[" * 100_000 + "]" * 100_000).status_code == 400  # json's RecursionError


def test_a_vanishing_temperature_is_greedy():
    backend = RecordingEcho()
    with running(make_server(backend, "echo")) as port:
        assert post(port, ask("hi", temperature=1e-300)).status_code == 200
        assert backend.sampling.temperature == 0.0
    engine, _ = engine_backend()
    with running(make_server(engine, "tiny")) as port:
        tiny_t, greedy = (post(port, ask("hi", temperature=t, max_tokens=5)) for t in (1e-300, 0))
        assert tiny_t.status_code == 200 and tiny_t.json()["choices"] == greedy.json()["choices"]
