"""Teachers for Explanatory Inversion: an LLM teacher over any chat backend, and a program teacher.

Both answer the same four batched calls the pipeline (``teach.inversion``) makes, one per stage of
method.md section 2:

* ``solve(items)``: chain-of-thought on the original question;
* ``write_probes(items, cots, rules)``: one probe per rule (``None`` + a reason when not applicable);
* ``answer_probes(probes)``: reasoning and a short final answer for each probe;
* ``recheck(items, probes, responses)``: Eq. 1: the probe and the teacher's own answer to it as
  context, then the original question again.

The program teacher (``teach.program_teacher``) serves the synthetic ``arith`` family; this module
holds the LLM teacher and builds either (``build_teacher``, ``teacher_session``).
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator, Sequence

from ..data import prompts
from ..data.example import LETTERS, Example
from ..infra.progress import progress
from ..models.chat import CachedBackend, OpenAICompatibleBackend, TeacherConfigError, transformers_backend, vllm_backend
from ..models.generation import SamplingConfig
from ..models.local_server import serve_locally
from ..models.registry import model_identity
from .program_teacher import ProgramTeacher
from .records import ProbeDraft
from .rules import Rule, RuleSet
from .settings import TeacherSettings

# ---------------------------------------------------------------------------------------------
# LLM teacher

def parse_probe(text: str, original_question: str) -> tuple[str | None, str | None]:
    """The probe in a teacher's reply, or (None, reason) when it is empty or restates the question."""
    body = text.rsplit("Probe:", 1)[1] if "Probe:" in text else text
    body = body.strip().strip('"').strip()
    if not body:
        return None, "empty probe"
    norm = lambda s: re.sub(r"\W+", " ", s).strip().lower()
    if norm(body) == norm(original_question) or norm(body) in norm(original_question).split("answer choices")[0]:
        return None, "probe restates the original question"
    return body, None


class LLMTeacher:
    """Prompts (from the rules file) sent through a chat backend, normally a ``CachedBackend``."""

    def __init__(self, chat, rules: RuleSet, *, max_new_tokens: int = 1024, temperature: float = 0.0):
        self.chat, self.rules = chat, rules
        self.sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature)
        self.name = f"{chat.kind}:{chat.model}"

    def _complete(self, batch, desc):
        bar = progress(total=len(batch), desc=desc)
        try:
            if hasattr(self.chat, "cache"):
                return [r.text for r in self.chat.complete(batch, self.sampling, progress=bar)]
            out = [r.text for r in self.chat.complete(batch, self.sampling)]
            bar.update(len(batch))
            return out
        finally:
            bar.close()

    def solve(self, items: Sequence[Example]) -> list[str]:
        return self._complete([prompts.messages_for(ex) for ex in items], "teacher CoT")

    def write_probes(self, items: Sequence[Example], cots: Sequence[str], rules: Sequence[Rule]) -> list[list[ProbeDraft]]:
        batch, where = [], []
        for i, (ex, cot) in enumerate(zip(items, cots)):
            for rule in rules:
                text = self.rules.probe_prompt(rule, question=ex.question, answer=_gold_text(ex), reasoning=cot)
                batch.append([{"role": "user", "content": text}])
                where.append((i, rule.id))
        replies = self._complete(batch, "teacher probes")
        out: list[list[ProbeDraft]] = [[] for _ in items]
        for (i, rule_id), reply in zip(where, replies):
            probe, reason = parse_probe(reply, items[i].question)
            out[i].append(ProbeDraft(rule_id, probe, reason))
        return out

    def answer_messages(self, probe: str) -> list[dict]:
        return [{"role": "user", "content": self.rules.answer_prompt(probe)}]

    def answer_probes(self, drafts: Sequence[ProbeDraft]) -> list[str]:
        return self._complete([self.answer_messages(d.text) for d in drafts], "teacher probe answers")

    def recheck(self, items: Sequence[Example], probes: Sequence[str], responses: Sequence[str]) -> list[str]:
        batch = [self.answer_messages(p) + [{"role": "assistant", "content": r}] + prompts.messages_for(ex)
                 for ex, p, r in zip(items, probes, responses)]
        return self._complete(batch, "teacher Eq.1 recheck")


def _gold_text(ex: Example) -> str:
    if ex.choices and len(ex.answer) == 1 and ex.answer.isalpha():
        return f"({ex.answer}) {ex.choices[LETTERS.index(ex.answer)]}"
    return ex.answer


SERVED_IDENTITY = {"served_locally": "kit engine, float32"}  # the cache identity of a teacher_serve server


def served_identity(model: str) -> dict:
    """The cache identity of a ``teacher_serve`` server: the engine, and the served model's content
    where that is more than its name (a folder, or a registry model whose weights are not the
    pristine conversion: ``models.registry.model_identity``), so changed weights are asked again."""
    weights = model_identity(model).get("weights")
    return {**SERVED_IDENTITY, **({"weights": weights} if weights else {})}


def endpoint(settings: TeacherSettings) -> str:
    """Where an openai teacher's answers come from, as recorded in provenance: its base URL, or (for
    ``teacher_serve``) the locally served model, whatever port it ran on."""
    return f"served locally: {settings.teacher_model}" if settings.teacher_serve else settings.teacher_base_url


@contextmanager
def serving(settings: TeacherSettings) -> Iterator[TeacherSettings]:
    """The teacher settings to build from inside this block: ``settings`` as they are, or, with
    ``teacher_serve``, pointing at the kit's OpenAI-compatible server on loopback serving
    ``teacher_model`` (started here, stopped when the block ends)."""
    if not settings.teacher_serve:
        yield settings
        return
    if settings.teacher != "openai" or not settings.teacher_model:
        raise TeacherConfigError("teacher_serve serves teacher_model over HTTP for teacher openai: set teacher: openai "
                                 f"and teacher_model (got teacher {settings.teacher!r}, model {settings.teacher_model!r})")
    with serve_locally(settings.teacher_model) as url:
        yield replace(settings, teacher_base_url=url, teacher_api_key_env="")


@contextmanager
def teacher_session(settings: TeacherSettings, rules: RuleSet, *, cache=None) -> Iterator["LLMTeacher | ProgramTeacher"]:
    """The teacher of ``settings`` for this block (:func:`build_teacher`); with ``teacher_serve`` its
    loopback server (:func:`serving`) runs while the block does."""
    with serving(settings) as live:
        yield build_teacher(live.teacher, rules, model=live.teacher_model, base_url=live.teacher_base_url,
                            api_key_env=live.teacher_api_key_env, max_in_flight=live.teacher_max_in_flight,
                            max_new_tokens=live.teacher_max_new_tokens, cache=cache, served=live.teacher_serve)


def build_teacher(kind: str, rules: RuleSet, *, model: str = "", base_url: str = "", api_key_env: str = "",
                  max_in_flight: int = TeacherSettings.teacher_max_in_flight,
                  max_new_tokens: int = TeacherSettings.teacher_max_new_tokens, cache=None, dtype: str = "auto",
                  batch_size: int = 32, served: bool = False):
    """``kind``: "program" (synthetic arith, exact), "openai" (any OpenAI-compatible server),
    "transformers" (local model) or "vllm" (GPU). LLM teachers go through ``cache`` when given.
    ``served``: the openai server is one of :func:`serving` (cached by what it serves, not its port)."""

    if kind == "program":
        return ProgramTeacher()
    if not model:
        raise TeacherConfigError(f"teacher {kind!r} needs a model name (teacher_model)")
    if kind == "openai":
        if not base_url:
            raise TeacherConfigError("teacher 'openai' needs teacher_base_url, e.g. "
                                     "https://generativelanguage.googleapis.com/v1beta/openai (Gemini) or "
                                     "http://127.0.0.1:8000/v1 (vllm serve / transformers serve)")
        chat = OpenAICompatibleBackend(base_url=base_url, model=model, api_key_env=api_key_env or None,
                                       max_in_flight=max_in_flight, identity=served_identity(model) if served else None)
    elif kind == "transformers":
        chat = transformers_backend(model, dtype=dtype, batch_size=batch_size)
    elif kind == "vllm":
        chat = vllm_backend(model, dtype=dtype)
    else:
        raise TeacherConfigError(f"unknown teacher {kind!r}; use program, openai, transformers or vllm")
    if cache is not None:
        chat = CachedBackend(chat, cache)
    return LLMTeacher(chat, rules, max_new_tokens=max_new_tokens)
