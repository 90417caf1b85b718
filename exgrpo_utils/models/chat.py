"""Chat backends behind one small interface: ``complete(batch of message lists, sampling) -> results``.

* ``OpenAICompatibleBackend``: any server speaking ``POST /v1/chat/completions``: Gemini's
  OpenAI-compatible endpoint (the paper's teacher, Gemini-1.5-Pro), OpenAI, ``vllm serve`` (e.g.
  Llama-3-70B-Instruct, the paper's alternative teacher) and ``transformers serve``;
* ``GeneratorBackend`` (``transformers_backend``, ``vllm_backend``): local batched generation through
  a ``models.generation`` generator (the kit's engine or plain ``generate`` on CPU or GPU; vLLM's
  offline engine, GPU only);
* ``CachedBackend``: wraps any of them with the persistent :class:`~exgrpo_utils.models.cache.CompletionCache`.

API keys are read from the environment variable named in the configuration, at request time, and
appear nowhere else: not in the cache key, the cache, logs, errors or results. Every error text that
comes from a server (response bodies, headers, transport errors) passes through :func:`redact` first:
a server that echoes the request's headers in its error body must not put the key into an executed
notebook.
"""
from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from typing import Protocol, Sequence
from urllib.parse import quote, quote_plus

from .cache import ChatResult, CompletionCache, request_key
from .generation import FastGenerator, SamplingConfig, TransformersGenerator, VLLMGenerator
from .registry import model_identity

# httpx is imported inside the functions that use it (heavy, or needed only on some paths).

Messages = list[dict]


class ChatBackend(Protocol):
    kind: str
    model: str

    def complete(self, batch: Sequence[Messages], sampling: SamplingConfig, on_result=None) -> list[ChatResult]: ...


class TeacherError(RuntimeError):
    """A teacher request failed for a reason retrying cannot fix (or retries ran out)."""


class TeacherAuthError(TeacherError):
    pass


class TeacherConfigError(TeacherError):
    pass


@dataclass
class UsageCounter:
    """Running totals, safe to update from the request threads."""
    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, *, requests=0, retries=0, prompt_tokens=0, completion_tokens=0) -> None:
        with self._lock:
            self.requests += requests
            self.retries += retries
            self.prompt_tokens += prompt_tokens or 0
            self.completion_tokens += completion_tokens or 0

    def as_dict(self) -> dict:
        return {"requests": self.requests, "retries": self.retries, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens}


# ---------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP client

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
ENV_NAME_RE = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")  # GEMINI_API_KEY; API keys have lower case or "-"
REDACTED = "[redacted]"
# the value of a credential header or parameter, as a server may echo it: "Authorization: Bearer ..",
# '"x-api-key": ".."', "api_key=..", "?key=.."; a value already redacted is left as it is
_CREDENTIAL_RE = re.compile(
    r"""(?ix)
    ( (?:proxy-)?authorization | x-goog-api-key | x-api-key | api[-_]?key | access[-_]?token | (?<=[?&])key )
    ( ["']? \s* [:=] \s* ["']? )
    (?!\[redacted\]) (?:\[redacted\]|[^\s"'\r\n,;&{}\[\]]) (?:\[redacted\]|[^"'\r\n,;&{}\[\]])*""")
_BEARER_RE = re.compile(r"(?i)\b(bearer)\s+(?!\[redacted\])[^\s\"',;{}\[\]]+")


def redact(text: object, secrets: Sequence[str] = ()) -> str:
    """``text`` without ``secrets`` (as they are, URL-encoded or JSON-escaped) and without the values of
    credential headers and parameters (Authorization, Bearer tokens, api-key, x-api-key, ?key=).

    >>> redact('{"Authorization": "Bearer sk/1", "echo": "sk/1 and sk%2F1"}', ["sk/1"])
    '{"Authorization": "[redacted]", "echo": "[redacted] and [redacted]"}'
    >>> redact("HTTP 500: bad token Bearer abc.def for /v1?key=xyz&alt=json")
    'HTTP 500: bad token Bearer [redacted] for /v1?key=[redacted]&alt=json'
    """
    text = str(text)
    variants = {v for s in secrets if s
                for v in (s, quote(s, safe=""), quote(s), quote_plus(s), json.dumps(s)[1:-1])}
    if variants:
        text = re.sub("|".join(re.escape(v) for v in sorted(variants, key=len, reverse=True)), REDACTED, text)
    text = _CREDENTIAL_RE.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    return _BEARER_RE.sub(lambda m: f"{m.group(1)} {REDACTED}", text)


class OpenAICompatibleBackend:
    """``POST {base_url}/chat/completions`` with bounded concurrency, timeouts and retries.

    Retries (exponential backoff with jitter, honouring ``Retry-After``) on 408/409/429/5xx,
    connection errors, timeouts and malformed response bodies; fails at once with a clear error on
    401/403 (credentials) and 404 or an unknown-model message (wrong model name or base URL).
    """

    kind = "openai"

    def __init__(self, *, base_url: str, model: str, api_key_env: str | None = None, max_in_flight: int = 8,
                 timeout_s: float = 120.0, max_retries: int = 6, backoff_s: float = 1.0, max_backoff_s: float = 60.0,
                 extra_body: dict | None = None, identity: dict | None = None):
        """``identity``: what the cache key records instead of the URL (a server started on a free port
        for one run is known by what it serves, not by its port)."""
        import httpx

        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.max_in_flight = max(1, int(max_in_flight))
        self.max_retries, self.backoff_s, self.max_backoff_s = max_retries, backoff_s, max_backoff_s
        self.extra_body = dict(extra_body or {})
        self._identity = identity
        self.usage = UsageCounter()
        if api_key_env and not ENV_NAME_RE.fullmatch(api_key_env):  # never echo it: it may be the key itself
            raise TeacherConfigError(f"teacher_api_key_env must be the NAME of the environment variable that holds the "
                                     f"API key (upper-case letters, digits and _, like GEMINI_API_KEY), not the key; the value given ({len(api_key_env)} "
                                     "characters) is not a variable name")
        if api_key_env and not os.environ.get(api_key_env):
            raise TeacherConfigError(f"the teacher's API key is read from ${api_key_env}, which is not set")
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
                                    limits=httpx.Limits(max_connections=self.max_in_flight))

    @property
    def identity(self) -> dict:
        """What the cache key records besides the model name: the server."""
        where = self._identity if self._identity is not None else {"base_url": self.base_url}
        return {**where, **({"extra_body": self.extra_body} if self.extra_body else {})}

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            headers["Authorization"] = f"Bearer {os.environ.get(self.api_key_env, '')}"
        return headers

    def _body(self, messages: Messages, sampling: SamplingConfig) -> dict:
        body = {"model": self.model, "messages": messages, "max_tokens": sampling.max_new_tokens,
                "temperature": sampling.temperature, "top_p": sampling.top_p}
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        body.update(self.extra_body)
        return body

    def _sleep_for(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(self.max_backoff_s, float(retry_after))
            except ValueError:
                pass
        base = min(self.max_backoff_s, self.backoff_s * 2 ** attempt)
        return base * (0.5 + random.random() / 2)

    def _redact(self, text: object, limit: int | None = None) -> str:
        """A server's text (body, header, transport error) fit for an error message: :func:`redact`
        with the configured key, then cut to ``limit`` characters (cut after redacting: a key cut in
        two would no longer be found)."""
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        return redact(text, (key,) if key else ())[:limit]

    def _error(self, cls: type[TeacherError], message: str) -> TeacherError:
        return cls(self._redact(message))

    def _read(self, resp, url: str) -> tuple[ChatResult | None, str]:
        """(the result, "") of a 2xx answer with a well-formed body, else (None, what went wrong) for a
        retry; raises for answers retrying cannot fix."""
        status = resp.status_code
        if status in (401, 403):
            raise self._error(TeacherAuthError, f"{url} refused the credentials (HTTP {status}). Check the key in "
                              f"${self.api_key_env or '<no api_key_env configured>'} and its permissions.")
        if status == 404 or (status == 400 and "model" in resp.text.lower() and "not" in resp.text.lower()):
            raise self._error(TeacherConfigError, f"{url} answered HTTP {status} for model {self.model!r}: wrong model "
                              f"name or base URL? Server said: {self._redact(resp.text, 300)}")
        if status in RETRY_STATUS:
            return None, f"HTTP {status}: {self._redact(resp.text, 200)}"
        if status >= 400:
            raise self._error(TeacherError, f"{url} answered HTTP {status}: {self._redact(resp.text, 300)}")
        try:
            payload = resp.json()
            text = payload["choices"][0]["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return None, (f"malformed response body ({type(exc).__name__}: {self._redact(exc, 100)}): "
                          f"{self._redact(resp.text, 200)!r}")
        usage = payload.get("usage") or {}
        return ChatResult(text, usage.get("prompt_tokens"), usage.get("completion_tokens")), ""

    def complete_one(self, messages: Messages, sampling: SamplingConfig) -> ChatResult:
        import httpx

        url = f"{self.base_url}/chat/completions"
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.usage.add(retries=1)
            retry_after = None
            try:
                resp = self._client.post(url, headers=self._headers(), content=json.dumps(self._body(messages, sampling)))
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last = f"{type(exc).__name__}: {self._redact(exc, 300)}"
            else:
                result, last = self._read(resp, url)
                if result is not None:
                    self.usage.add(requests=1, prompt_tokens=result.prompt_tokens,
                                   completion_tokens=result.completion_tokens)
                    return result
                retry_after = resp.headers.get("retry-after") if resp.status_code in RETRY_STATUS else None
            if attempt < self.max_retries:
                time.sleep(self._sleep_for(attempt, retry_after))
        raise self._error(TeacherError, f"{url}: gave up after {self.max_retries + 1} attempts; last error: {last}")

    def complete(self, batch: Sequence[Messages], sampling: SamplingConfig, on_result=None) -> list[ChatResult]:
        """At most ``max_in_flight`` requests at once; ``on_result(i, result)`` fires as each arrives."""
        results: list[ChatResult | None] = [None] * len(batch)
        with ThreadPoolExecutor(max_workers=max(1, min(self.max_in_flight, len(batch)))) as pool:
            futures = {pool.submit(self.complete_one, m, sampling): i for i, m in enumerate(batch)}
            try:
                for fut in as_completed(futures):
                    i = futures[fut]
                    results[i] = fut.result()
                    if on_result is not None:
                        on_result(i, results[i])
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
        return results  # type: ignore[return-value]

    def close(self) -> None:
        self._client.close()


# ---------------------------------------------------------------------------------------------
# Local backends

class GeneratorBackend:
    """Adapts a :mod:`generation` generator (transformers or vLLM) to the chat interface."""

    def __init__(self, generator, kind: str, model: str, batch_size: int = 32):
        self.generator, self.kind, self.model, self.batch_size = generator, kind, model, batch_size
        self.usage = UsageCounter()

    @property
    def identity(self) -> dict:
        """What the cache key records besides the model name: the model's content (a registry model or
        a model folder: ``registry.model_identity``, so weights altered in place under the same name
        or path never reuse old answers), the weights' dtype, and the stop tokens where they are more
        than the tokenizer's EOS (the chat template's end-of-turn token)."""
        weights = getattr(self.generator, "model", None)
        dtype = getattr(weights, "dtype", None) or getattr(self.generator, "dtype", None)
        ident = {"dtype": str(dtype)} if dtype is not None else {}
        content = model_identity(str(self.model))
        if "name" not in content:  # a hub id or a served name is known by its name alone, as before
            ident["model"] = content
        stops = tuple(getattr(self.generator, "stop_ids", ()) or ())
        eos = getattr(getattr(self.generator, "tokenizer", None), "eos_token_id", None)
        if stops and stops != (eos,):
            ident["stop_ids"] = list(stops)
        return ident

    def complete(self, batch: Sequence[Messages], sampling: SamplingConfig, on_result=None) -> list[ChatResult]:
        if getattr(self.generator, "streams", False):  # the kit's engine: every item in one call
            def done(i: int, c) -> None:
                self.usage.add(requests=1, completion_tokens=c.n_tokens)
                if on_result is not None:
                    on_result(i, ChatResult(c.text, None, c.n_tokens))

            outs = self.generator.generate(list(batch), sampling, on_result=done, batch_size=self.batch_size)
            return [ChatResult(c.text, None, c.n_tokens) for c in outs]
        out: list[ChatResult] = []
        for start in range(0, len(batch), self.batch_size):
            chunk = batch[start:start + self.batch_size]
            for c in self.generator.generate(chunk, sampling):
                res = ChatResult(c.text, None, c.n_tokens)
                self.usage.add(requests=1, completion_tokens=c.n_tokens)
                if on_result is not None:
                    on_result(len(out), res)
                out.append(res)
        return out


def transformers_backend(model: str, *, dtype: str = "auto", batch_size: int = 32, generator=None,
                         fast: bool = True) -> GeneratorBackend:
    """A local model: the kit's engine (``fast``, kind "fast"), or plain ``generate`` (kind "transformers").
    The kind is part of every cache key, so the two never share cached completions."""
    gen = generator or (FastGenerator if fast else TransformersGenerator).from_pretrained(model, dtype=dtype)
    return GeneratorBackend(gen, "fast" if getattr(gen, "streams", False) else "transformers", model, batch_size)


def vllm_backend(model: str, **options) -> GeneratorBackend:  # pragma: no cover - GPU only

    return GeneratorBackend(VLLMGenerator(model, **options), "vllm", model, batch_size=10_000)


class CachedBackend:
    """Serves what the cache has; sends the rest and stores each result the moment it arrives."""

    def __init__(self, backend: ChatBackend, cache: CompletionCache):
        self.backend, self.cache = backend, cache
        self.kind, self.model = backend.kind, backend.model

    @property
    def usage(self):
        return getattr(self.backend, "usage", None)

    def complete(self, batch: Sequence[Messages], sampling: SamplingConfig, progress=None) -> list[ChatResult]:
        identity = getattr(self.backend, "identity", None)
        keys = [request_key(self.kind, self.model, m, sampling, identity=identity) for m in batch]
        results: list[ChatResult | None] = [self.cache.get(k) for k in keys]
        todo = [i for i, r in enumerate(results) if r is None]
        if progress is not None:
            progress.update(len(batch) - len(todo))

        def store(j: int, res: ChatResult) -> None:
            i = todo[j]
            self.cache.put(keys[i], self.kind, self.model, {"messages": batch[i], "sampling": asdict(sampling)}, res)
            results[i] = res
            if progress is not None:
                progress.update(1)

        if todo:
            self.backend.complete([batch[i] for i in todo], sampling, on_result=store)
        return results  # type: ignore[return-value]
