import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from exgrpo_utils.models.cache import CompletionCache
from exgrpo_utils.models.chat import CachedBackend, OpenAICompatibleBackend, TeacherAuthError, TeacherConfigError, TeacherError
from exgrpo_utils.models.generation import SamplingConfig

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import FakeServer  # noqa: E402

MSG = [{"role": "user", "content": "hi"}]
GREEDY = SamplingConfig(max_new_tokens=16)


def client(server, **kw):
    kw.setdefault("backoff_s", 0.01)
    return OpenAICompatibleBackend(base_url=server.url, model="m", **kw)


def test_429_then_success_honours_retry_after_and_counts():
    with FakeServer([("status", 429, 0), ("status", 503)]) as srv:
        c = client(srv)
        assert c.complete([MSG], GREEDY)[0].text == "echo: hi"
        assert len(srv.requests) == 3
        assert c.usage.as_dict() == {"requests": 1, "retries": 2, "prompt_tokens": 7, "completion_tokens": 3}
        body = srv.requests[-1][2]
        assert body["model"] == "m" and body["max_tokens"] == 16 and body["temperature"] == 0.0


def test_persistent_500s_give_up_with_the_last_error():
    with FakeServer([("status", 500)] * 10) as srv:
        with pytest.raises(TeacherError, match=r"gave up after 3 attempts; last error: HTTP 500"):
            client(srv, max_retries=2).complete([MSG], GREEDY)
        assert len(srv.requests) == 3


def test_malformed_json_is_retried_then_reported():
    with FakeServer([("malformed",), ("not_json_choices",)]) as srv:
        assert client(srv).complete([MSG], GREEDY)[0].text == "echo: hi"
    with FakeServer([("malformed",)] * 5) as srv:
        with pytest.raises(TeacherError, match="malformed response body"):
            client(srv, max_retries=1).complete([MSG], GREEDY)


def test_slow_response_times_out_and_is_retried():
    with FakeServer([("sleep", 2.0)]) as srv:
        c = client(srv, timeout_s=0.5)
        t0 = time.time()
        assert c.complete([MSG], GREEDY)[0].text == "echo: hi"
        assert time.time() - t0 < 2.0 and c.usage.retries == 1


def test_401_fails_at_once_without_leaking_the_key(monkeypatch):
    monkeypatch.setenv("KIT_TEST_KEY", "sk-very-secret")
    with FakeServer([("status", 401)]) as srv:
        c = client(srv, api_key_env="KIT_TEST_KEY")
        with pytest.raises(TeacherAuthError) as err:
            c.complete([MSG], GREEDY)
        assert len(srv.requests) == 1
        assert "sk-very-secret" not in str(err.value) and "$KIT_TEST_KEY" in str(err.value)
        assert srv.requests[0][1]["Authorization"] == "Bearer sk-very-secret"


def test_wrong_model_name_and_missing_key_are_config_errors(monkeypatch):
    with FakeServer([("status", 404)]) as srv:
        with pytest.raises(TeacherConfigError, match="wrong model name or base URL"):
            client(srv).complete([MSG], GREEDY)
    monkeypatch.delenv("KIT_MISSING_KEY", raising=False)
    with pytest.raises(TeacherConfigError, match=r"\$KIT_MISSING_KEY, which is not set"):
        OpenAICompatibleBackend(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="KIT_MISSING_KEY")


def test_connection_refused_is_retried_then_reported():
    with FakeServer() as srv:
        url = srv.url
    c = OpenAICompatibleBackend(base_url=url, model="m", max_retries=1, backoff_s=0.01)
    with pytest.raises(TeacherError, match="ConnectError"):
        c.complete([MSG], GREEDY)


def test_requests_in_flight_are_bounded():
    with FakeServer(delay=0.2) as srv:
        batch = [[{"role": "user", "content": f"q{i}"}] for i in range(12)]
        out = client(srv, max_in_flight=3).complete(batch, GREEDY)
        assert [r.text for r in out] == [f"echo: q{i}" for i in range(12)]  # order kept
        assert 2 <= srv.max_in_flight <= 3


def test_cache_serves_repeats_and_never_stores_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_TEST_KEY", "sk-do-not-store")
    with FakeServer() as srv:
        cache = CompletionCache(tmp_path / "c.sqlite")
        cached = CachedBackend(client(srv, api_key_env="KIT_TEST_KEY"), cache)
        batch = [[{"role": "user", "content": f"q{i}"}] for i in range(5)]
        first = cached.complete(batch, GREEDY)
        second = cached.complete(batch + [[{"role": "user", "content": "new"}]], GREEDY)
        assert [r.text for r in second[:5]] == [r.text for r in first] and len(srv.requests) == 6
        other = cached.complete(batch[:1], SamplingConfig(max_new_tokens=16, temperature=0.7))
        assert len(srv.requests) == 7 and other[0].text == "echo: q0"  # sampling is part of the key
        cache.close()
    for f in tmp_path.iterdir():
        assert b"sk-do-not-store" not in f.read_bytes()


CHILD = textwrap.dedent("""
    import json, sys
    from exgrpo_utils.infra.files import atomic_write_json
    from exgrpo_utils.models.cache import CompletionCache
    from exgrpo_utils.models.chat import CachedBackend, OpenAICompatibleBackend
    from exgrpo_utils.models.generation import SamplingConfig
    url, cache_path, out = sys.argv[1:4]
    backend = CachedBackend(OpenAICompatibleBackend(base_url=url, model="m", max_in_flight=2), CompletionCache(cache_path))
    batch = [[{"role": "user", "content": f"q{i}"}] for i in range(30)]
    res = backend.complete(batch, SamplingConfig(max_new_tokens=8))
    atomic_write_json(out, [r.text for r in res])
""")


def test_killed_run_resumes_without_losing_or_repeating_paid_requests(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    out = tmp_path / "out.json"
    with FakeServer(delay=0.05) as srv:
        args = [sys.executable, str(script), srv.url, str(tmp_path / "cache.sqlite"), str(out)]
        proc = subprocess.Popen(args)
        while len(srv.requests) < 10:
            time.sleep(0.01)
            assert proc.poll() is None, "the child finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not out.exists()
        paid_before = len(srv.requests)
        cached_before = len(CompletionCache(tmp_path / "cache.sqlite"))
        assert cached_before >= paid_before - 2  # at most the requests in flight were lost
        subprocess.run(args, check=True, timeout=120)
        texts = json.loads(out.read_text())
        assert texts == [f"echo: q{i}" for i in range(30)]
        assert len(srv.requests) == 30 + (paid_before - cached_before)  # nothing cached was asked again
        assert len(CompletionCache(tmp_path / "cache.sqlite")) == 30


class _StandInGenerator:
    """What GeneratorBackend reads of a generator: the weights' dtype, stop ids, the tokenizer's EOS."""
    dtype, stop_ids = "torch.float32", (2,)

    def __init__(self):
        self.calls = 0

    def generate(self, batch, sampling):
        self.calls += len(batch)
        return [SimpleNamespace(text=f"answer {self.calls}", n_tokens=2) for _ in batch]


def test_cached_local_answers_are_keyed_by_the_model_folder_content(tmp_path):
    """Issue 23: weights altered in place under the same path must not reuse the old answers."""
    from exgrpo_utils.models.chat import GeneratorBackend

    folder = tmp_path / "student"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights v1")
    gen = _StandInGenerator()
    backend = GeneratorBackend(gen, "fast", str(folder))
    before = backend.identity
    assert before["dtype"] == "torch.float32" and before["stop_ids"] == [2] and "weights" in before["model"]
    cache = CompletionCache(tmp_path / "c.sqlite")
    cached = CachedBackend(backend, cache)
    assert cached.complete([MSG], GREEDY)[0].text == "answer 1"
    assert cached.complete([MSG], GREEDY)[0].text == "answer 1" and gen.calls == 1  # served from the cache
    (folder / "model.safetensors").write_bytes(b"weights v2, altered in place")
    assert backend.identity["model"] != before["model"]
    assert cached.complete([MSG], GREEDY)[0].text == "answer 2" and gen.calls == 2  # asked again
    cache.close()
    hub = GeneratorBackend(gen, "fast", "some-org/some-hub-model")  # neither a registry name nor a folder
    assert hub.identity == {"dtype": "torch.float32", "stop_ids": [2]}
