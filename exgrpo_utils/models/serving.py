"""The schedulers behind the kit's loopback server (``local_server``): they take the server's checked
requests and answer each through a future.

* ``EngineBatcher`` (a backend over the kit's engine, ``generation.FastGenerator``): **continuous
  batching across requests**. One engine run serves the requests that share sampling settings;
  requests that arrive while it runs join it as slots free up (``SlotEngine.run``'s ``source``), so a
  short request is never held behind a long one, and a request whose client went away leaves its slot
  at the next step (``cancelled``). Requests with other sampling settings (temperature, top_p, seed;
  every greedy request shares one setting whatever its seed or top_p) wait for the running engine run
  to drain and then get their own, in arrival order: the oldest waiting request decides the next run,
  and no later request passes it. Each request's prompt is tokenized once, by the server's handler.
* ``Batcher`` (any other backend, e.g. plain ``generate``): the requests in flight at one moment go
  to one ``backend.complete`` call per sampling setting; a call cannot take requests that arrive
  during it.

Both isolate failures: when a run or a call fails, its unanswered requests are retried one at a time,
so a bad request gets its own error and the others their answers. Greedy outputs follow the engine's
own rule: exact for a given schedule, and a schedule depends on what else is in flight.

The checks the server makes before it queues a request live here too (``sampling_of``,
``fit_budget``, ``messages_of``): numbers range-checked (inf, NaN, huge integers refused), a
temperature below ``GREEDY_BELOW`` is greedy decoding, and prompt + ``max_tokens`` must fit in the
model's positions (``context_limit``), as OpenAI's API checks it.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

from .cache import ChatResult
from .engine import SlotEngine, single_turn
from .generation import FastGenerator, SamplingConfig


class Cancelled(RuntimeError):
    """The request's client went away before its answer was ready."""


def context_limit(model) -> int | None:
    """The most tokens (prompt + generated) one sequence may hold in ``model``, as the engine checks
    it: its positions, or its sliding window when it uses one; None when the model does not say."""
    config = getattr(model, "config", None)
    limits = [getattr(config, "max_position_embeddings", None)]
    if getattr(config, "use_sliding_window", True):
        limits.append(getattr(config, "sliding_window", None))
    limits = [int(v) for v in limits if isinstance(v, int) and v > 0]
    return min(limits) if limits else None


DEFAULT_MAX_TOKENS = 1024  # a request without max_tokens: this, or the room its prompt leaves
GREEDY_BELOW = 1e-5  # a smaller temperature is greedy decoding (dividing logits by it would overflow)


def shown(value) -> str:
    """``value`` for an error message: short (a client's huge number or string is cut)."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10 ** 30 else "a huge integer"
    return text if len(text) <= 60 else text[:57] + "..."


def _number(body: dict, key: str, kind, default, low: float, high: float):
    """``body[key]`` checked: a JSON number (inf, NaN and out-of-range values refused), of ``kind``."""
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number, got {shown(value)}")
    if (isinstance(value, float) and not math.isfinite(value)) or not low <= value <= high:
        raise ValueError(f"{key} must be in [{low}, {high}], got {shown(value)}")
    if kind is int and value != int(value):
        raise ValueError(f"{key} must be an integer, got {shown(value)}")
    return kind(value)


def sampling_of(body: dict, limit: int | None) -> tuple[int | None, SamplingConfig]:
    """A request body's ``max_tokens`` (None when absent; at most ``limit``, the model's positions) and
    sampling settings, checked (ValueError: the client's mistake)."""
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    asked = _number(body, key, int, None, 1, limit or 1 << 20)
    temperature = _number(body, "temperature", float, 1.0, 0.0, 100.0)
    return asked, SamplingConfig(max_new_tokens=asked or DEFAULT_MAX_TOKENS,
                                 temperature=0.0 if temperature < GREEDY_BELOW else temperature,
                                 top_p=_number(body, "top_p", float, 1.0, 0.0, 1.0),
                                 seed=_number(body, "seed", int, None, -(1 << 63), (1 << 64) - 1))


def fit_budget(sampling: SamplingConfig, asked: int | None, prompt_ids: list[int] | None,
               limit: int | None) -> SamplingConfig:
    """The token budget against the model's positions: prompt + max_tokens must fit, as OpenAI's API
    checks it (ValueError naming the limit); without max_tokens it is DEFAULT_MAX_TOKENS or the room
    the prompt leaves."""
    if limit is None or prompt_ids is None:
        return sampling
    n, room = len(prompt_ids), limit - len(prompt_ids)
    if room < 1 or (asked is not None and asked > room):
        wanted = f" + max_tokens {asked} = {n + asked}" if asked is not None else ""
        raise ValueError(f"the prompt has {n} tokens{wanted}: more than the model's context of {limit} "
                         "positions (prompt + max_tokens must fit)")
    return replace(sampling, max_new_tokens=asked or min(DEFAULT_MAX_TOKENS, room))


def messages_of(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages):
        raise ValueError("messages must be a non-empty list of {role: str, content: str}")
    return messages


@dataclass(eq=False)
class Request:
    messages: list[dict]
    sampling: SamplingConfig
    prompt_ids: list[int] | None = None  # the rendered prompt's tokens, when the server had a tokenizer
    cancel: threading.Event = field(default_factory=threading.Event)  # set when the client is gone
    future: Future = field(default_factory=Future)

    @property
    def key(self) -> tuple:
        """The settings one engine run shares (the token budget is per request)."""
        s = self.sampling
        return (0.0, 1.0, None) if s.temperature <= 0 else (float(s.temperature), float(s.top_p), s.seed)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class Batcher:
    """Answers the requests in flight through one ``backend.complete`` call per batch (requests with
    the same sampling settings share a batch). ``wait_s``: how long the first request of a batch waits
    for company; ``max_batch``: requests per batch (for ``EngineBatcher``: rows in flight)."""

    def __init__(self, backend, *, max_batch: int = 64, wait_s: float = 0.05):
        self.backend, self.max_batch, self.wait_s = backend, max_batch, wait_s
        generator = getattr(backend, "generator", None)
        self.tokenizer = getattr(generator, "tokenizer", None)
        self.limit = context_limit(getattr(generator, "model", None))
        self._tokenizer_lock = threading.Lock()  # shared by the handlers' threads and the batch thread
        self._chars_per_token: int | None = None
        self._waiting: deque[Request] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def prompt_ids(self, messages: list[dict]) -> list[int] | None:
        """The token ids of ``messages`` rendered with the chat template (None without a tokenizer).
        A prompt with more characters than the model's positions could hold at the vocabulary's
        longest token is refused untokenized (ValueError)."""
        if self.tokenizer is None:
            return None
        with self._tokenizer_lock:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            if self.limit and len(text) > 2 * self.limit * self._longest_token():
                raise ValueError(f"the prompt has {len(text)} characters: far more tokens than the model's "
                                 f"{self.limit} positions")
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _longest_token(self) -> float:
        if self._chars_per_token is None:
            vocab = getattr(self.tokenizer, "get_vocab", dict)()
            self._chars_per_token = max(map(len, vocab), default=0) or 0
        return self._chars_per_token or float("inf")

    def submit(self, messages: list[dict], sampling, *, prompt_ids: list[int] | None = None,
               cancel: threading.Event | None = None) -> Future:
        """Queue one request; its future gets a ``ChatResult`` or the generation's exception. Setting
        ``cancel`` drops it (an ``EngineBatcher`` frees its row at the next step)."""
        req = Request(messages, sampling, prompt_ids, cancel or threading.Event())
        with self._cv:
            if self._closed:
                req.fail(RuntimeError("the server is shutting down"))
            else:
                self._waiting.append(req)
                self._cv.notify_all()
        return req.future

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=10)
        with self._cv:
            while self._waiting:
                self._waiting.popleft().fail(RuntimeError("the server is shutting down"))

    def _gather(self) -> bool:
        """Wait for a request, then up to ``wait_s`` for company; False once closed."""
        with self._cv:
            while not (self._waiting or self._closed):
                self._cv.wait()
            deadline = time.monotonic() + self.wait_s
            while not self._closed and len(self._waiting) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            return not self._closed

    def _pop(self, n: int, key: tuple | None = None) -> list[Request]:
        """Up to ``n`` requests from the front of the queue (while they have ``key``, when given);
        cancelled ones are dropped on the way; none once closing (a running engine run drains)."""
        out: list[Request] = []
        with self._cv:
            while self._waiting and len(out) < n and not self._closed:
                req = self._waiting[0]
                if req.cancel.is_set():
                    self._waiting.popleft().fail(Cancelled("the client went away"))
                elif key is not None and req.key != key:
                    break
                else:
                    out.append(self._waiting.popleft())
        return out

    def _loop(self) -> None:
        while self._gather():
            groups: dict = {}
            for req in self._pop(self.max_batch):
                groups.setdefault(req.sampling, []).append(req)
            for sampling, reqs in groups.items():
                self._complete(reqs, sampling)

    def _complete(self, reqs: list[Request], sampling) -> None:
        reqs = [r for r in reqs if not r.cancel.is_set()]
        if not reqs:
            return
        try:
            results = self.backend.complete([r.messages for r in reqs], sampling)
            if len(results) != len(reqs):
                raise RuntimeError(f"the backend returned {len(results)} results for {len(reqs)} requests")
        except Exception as exc:  # noqa: BLE001 - the request's error (HTTP 500); the server lives on
            if len(reqs) == 1:
                reqs[0].fail(exc)
            else:  # one at a time: a bad request fails alone
                for r in reqs:
                    self._complete([r], sampling)
            return
        for r, res in zip(reqs, results):
            if not r.future.done():
                r.future.set_result(res)


class EngineBatcher(Batcher):
    """Continuous batching across requests over the kit's engine (see the module docstring).
    ``backend.generator`` is a ``FastGenerator``; ``max_batch``: rows in flight (the engine's slots)."""

    @staticmethod
    def fits(backend) -> bool:
        return isinstance(getattr(backend, "generator", None), FastGenerator)

    def _loop(self) -> None:
        while self._gather():
            first = self._pop(1)
            if first:
                self._run(first[0])

    def _run(self, first: Request) -> None:
        """One engine run: ``first``, then the waiting requests with its settings as slots free up."""
        key, order = first.key, []

        def jobs(reqs: list[Request]) -> list:
            out = []
            for r in reqs:
                ids = self._ids(r)
                if ids is not None:
                    order.append(r)
                    out.append(single_turn(ids, r.sampling.max_new_tokens))
            return out

        try:
            self._engine().run(jobs([first]), temperature=key[0], top_p=key[1], seed=key[2],
                               on_done=lambda i, row: self._answer(order[i], row),
                               source=lambda free: jobs(self._pop(free, key)),
                               cancelled=lambda i: order[i].cancel.is_set())
        except Exception as exc:  # noqa: BLE001 - the unanswered requests are retried one by one
            for r in [r for r in order if not r.future.done()]:
                if len(order) == 1:
                    r.fail(exc)
                else:
                    self._run_alone(r)
        for r in order:  # cancelled rows end without an answer
            r.fail(Cancelled("the client went away"))

    def _run_alone(self, req: Request) -> None:
        key = req.key
        try:
            self._engine().run([single_turn(req.prompt_ids, req.sampling.max_new_tokens)], temperature=key[0],
                               top_p=key[1], seed=key[2], on_done=lambda i, row: self._answer(req, row),
                               cancelled=lambda i: req.cancel.is_set())
        except Exception as exc:  # noqa: BLE001 - this request's own error (HTTP 500)
            req.fail(exc)

    def _ids(self, req: Request) -> list[int] | None:
        if req.prompt_ids is None:
            try:
                req.prompt_ids = self.prompt_ids(req.messages)
            except Exception as exc:  # noqa: BLE001 - the request's error, not the run's
                req.fail(exc)
        return req.prompt_ids

    def _engine(self) -> SlotEngine:
        gen = self.backend.generator
        return SlotEngine(gen.model, stop_ids=list(gen.stop_ids), pad_id=gen.tokenizer.pad_token_id,
                          slots=self.max_batch)

    def _answer(self, req: Request, row: list[int]) -> None:
        with self._tokenizer_lock:
            c = self.backend.generator._completion(row)
        usage = getattr(self.backend, "usage", None)
        if usage is not None:
            usage.add(requests=1, completion_tokens=c.n_tokens)
        if not req.future.done():
            req.future.set_result(ChatResult(c.text, None, c.n_tokens))
