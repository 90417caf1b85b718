"""Error messages built from a server's answer never carry the API key (issue 23): a server that echoes
the request's headers in its error body must not put the key into an exception, a log or a warning
(papermill saves all of them in the executed notebook)."""
import logging
import sys
import warnings
from pathlib import Path
from urllib.parse import quote

import pytest

from exgrpo_utils.models.chat import OpenAICompatibleBackend, TeacherConfigError, TeacherError, redact
from exgrpo_utils.models.generation import SamplingConfig

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import FakeServer  # noqa: E402

MSG = [{"role": "user", "content": "hi"}]
GREEDY = SamplingConfig(max_new_tokens=16)
KEY = "sk-Zq9vXt/Leak+Me=7f3a9c2e41b8"  # "/", "+" and "=" differ once URL-encoded
FRAGMENTS = (KEY, quote(KEY, safe=""), "Zq9vXt", "7f3a9c2e41b8", "Leak+Me", "Leak%2BMe")


def _fail(srv, n_requests: int, caplog, capsys, **kw) -> BaseException:
    """The error of one request through ``srv`` (``n_requests`` sent in all so far), after checking
    that it, the logs, the warnings and the output hold no part of the key."""
    caplog.set_level(logging.DEBUG)
    c = OpenAICompatibleBackend(base_url=srv.url, model="m", api_key_env="KIT_LEAK_KEY", backoff_s=0.001, **kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TeacherError) as err:
            c.complete([MSG], GREEDY)
    assert len(srv.requests) == n_requests and srv.requests[-1][1]["Authorization"] == f"Bearer {KEY}"
    out = capsys.readouterr()
    seen = [str(err.value), repr(err.value), caplog.text, out.out, out.err] + [str(w.message) for w in caught]
    for text in seen:
        for fragment in FRAGMENTS:
            assert fragment not in text, f"{fragment!r} leaked into {text!r}"
    return err.value


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("KIT_LEAK_KEY", KEY)


def test_a_fatal_4xx_echoing_the_headers_keeps_the_key_out(caplog, capsys):
    with FakeServer([("echo_headers", 400)]) as srv:
        exc = _fail(srv, 1, caplog, capsys)
    assert type(exc) is TeacherError and f"{srv.url}/chat/completions answered HTTP 400" in str(exc)
    assert "scripted 400" in str(exc) and "[redacted]" in str(exc)  # what the server said, less the key


def test_a_404_echoing_the_headers_is_a_config_error_without_the_key(caplog, capsys):
    with FakeServer([("echo_headers", 404)]) as srv:
        exc = _fail(srv, 1, caplog, capsys)
    assert isinstance(exc, TeacherConfigError) and "wrong model name or base URL" in str(exc)
    assert f"{srv.url}/chat/completions answered HTTP 404 for model 'm'" in str(exc) and "scripted 404" in str(exc)


def test_retried_5xx_and_malformed_bodies_echoing_the_headers_give_up_without_the_key(caplog, capsys):
    with FakeServer([("echo_headers", 503), ("echo_headers", 200), ("echo_headers", 503)]) as srv:
        exc = _fail(srv, 3, caplog, capsys, max_retries=2)
    assert f"{srv.url}/chat/completions: gave up after 3 attempts; last error: HTTP 503" in str(exc)
    with FakeServer([("echo_headers", 200)]) as srv:
        exc = _fail(srv, 1, caplog, capsys, max_retries=0)
    assert "gave up after 1 attempts; last error: malformed response body" in str(exc)


PADS = range(96, 140, 3)  # the key's first copy then straddles the 200 characters kept of a 5xx body


def test_a_key_cut_by_the_length_limit_is_not_left_half_there(caplog, capsys):
    """The server's text is cut to a length after redacting: a key cut in two would be missed."""
    with FakeServer([("echo_headers", 503, pad) for pad in PADS]) as srv:
        for n, _ in enumerate(PADS, 1):
            assert "last error: HTTP 503" in str(_fail(srv, n, caplog, capsys, max_retries=0))


def test_redact_removes_the_key_and_credential_headers_in_every_form():
    text = (f'Authorization: Bearer {KEY}\n{{"x-api-key": "abc123", "Api-Key": "def456"}} '
            f'GET /v1/models?key={quote(KEY, safe="")}&alt=json token={KEY!r} "Bearer other-token-99"')
    out = redact(text, [KEY])
    for gone in FRAGMENTS + ("abc123", "def456", "other-token-99"):
        assert gone not in out
    assert out.startswith("Authorization: [redacted]\n") and "&alt=json" in out and redact(out, [KEY]) == out
    assert redact("HTTP 503: upstream overloaded") == "HTTP 503: upstream overloaded"  # plain text untouched
