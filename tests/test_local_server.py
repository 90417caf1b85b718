"""The kit's OpenAI-compatible loopback server (paper-mini's stand-in teacher endpoint), driven by the
kit's own HTTP client; a stand-in backend replaces the model so no weights are loaded."""
import threading

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
