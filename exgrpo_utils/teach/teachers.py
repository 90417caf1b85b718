"""Teachers for Explanatory Inversion: an LLM teacher over any chat backend, and a program teacher.

Both answer the same four batched calls the pipeline (``teach.inversion``) makes, one per stage of
method.md section 2:

* ``solve(items)``: chain-of-thought on the original question;
* ``write_probes(items, cots, rules)``: one probe per rule (``None`` + a reason when not applicable);
* ``answer_probes(probes)``: reasoning and a short final answer for each probe;
* ``recheck(items, probes, responses)``: Eq. 1: the probe and the teacher's own answer to it as
  context, then the original question again.

The program teacher serves the synthetic ``arith`` family: every answer is computed exactly from
the item's step program, so it needs no model. It is the default teacher of the offline CPU
reproduction because no strong LLM can run here. It cannot be derailed by a probe, so Eq. 1 keeps
all its well-formed probes; the rule statistics say so rather than hide it.
"""
from __future__ import annotations

import random
import re
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator, Sequence

from ..common.progress import progress
from ..data import prompts, synthetic
from ..data.example import LETTERS, Example
from ..models.chat import CachedBackend, OpenAICompatibleBackend, TeacherConfigError, transformers_backend, vllm_backend
from ..models.generation import SamplingConfig
from ..models.local_server import serve_locally
from .rules import Rule, RuleSet
from .settings import TeacherSettings


@dataclass(frozen=True)
class ProbeDraft:
    rule: str
    text: str | None  # None: not applicable or malformed (see reason)
    reason: str | None = None
    gold: str | None = None  # exact answer, when the teacher knows it (program teacher)
    explanation: tuple[str, ...] | None = None  # the program teacher's worked steps for that answer


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


# ---------------------------------------------------------------------------------------------
# Program teacher for the synthetic arith family

def _step_sentence(meta: dict, k: int) -> str:
    step = meta["steps"][k]
    return synthetic.TEMPLATES[step["op"]][0].format(p=meta["pronoun"], n=step["operand"], i=meta["item"])


def _explain_steps(meta: dict, upto: int | None = None, start: int | None = None) -> list[str]:
    value = meta["start"] if start is None else start
    lines = [f"{meta['name']} starts with {value} {meta['item']}."]
    for k, step in enumerate(meta["steps"][:upto]):
        new = synthetic.apply_op(step["op"], value, step["operand"])
        lines.append(f"Step {k + 1}: {_step_sentence(meta, k)} {value} {synthetic.SYMBOL[step['op']]} {step['operand']} = {new}.")
        value = new
    return lines


def _program_of(meta: dict) -> list[tuple[str, int]]:
    return [(s["op"], s["operand"]) for s in meta["steps"]]


class ProgramTeacher:
    """Exact teacher for ``arith`` items (``Example.meta`` holds the step program)."""

    name = "program"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def _rng(self, ex: Example, rule: str) -> random.Random:
        return random.Random(f"program-teacher:{self.seed}:{ex.id}:{rule}")

    def solve(self, items: Sequence[Example]) -> list[str]:
        for ex in items:
            _require_program(ex)
        return [synthetic.forward_rationale(_as_program(ex.meta)) for ex in items]

    def write_probes(self, items: Sequence[Example], cots: Sequence[str], rules: Sequence[Rule]) -> list[list[ProbeDraft]]:
        out = []
        for ex in items:
            meta = _require_program(ex)
            drafts = []
            for rule in rules:
                maker = PROBE_MAKERS.get(rule.id)
                if maker is None:
                    drafts.append(ProbeDraft(rule.id, None, "rule has no program template"))
                    continue
                made = maker(meta, self._rng(ex, rule.id))
                if made is None:
                    drafts.append(ProbeDraft(rule.id, None, "rule not applicable to this item"))
                else:
                    text, gold, explanation = made
                    drafts.append(ProbeDraft(rule.id, text, None, gold, tuple(explanation)))
            out.append(drafts)
        return out

    def answer_probes(self, drafts: Sequence[ProbeDraft]) -> list[str]:
        out = []
        for d in drafts:
            if d.gold is None or d.explanation is None:
                raise ValueError(f"the program teacher answers only probes it wrote itself (rule {d.rule})")
            out.append("\n".join(list(d.explanation) + [f"The answer is {d.gold}."]))
        return out

    def recheck(self, items: Sequence[Example], probes: Sequence[str], responses: Sequence[str]) -> list[str]:
        return self.solve(items)


def _as_program(meta: dict) -> synthetic.Program:
    return synthetic.Program(meta["name"], meta["item"], meta["start"], tuple(_program_of(meta)))


def _require_program(ex: Example) -> dict:
    meta = ex.meta or {}
    if "steps" not in meta or "start" not in meta:
        raise ValueError(f"{ex.id}: the program teacher needs an arith item with its step program in meta")
    return meta


def _problem_text(meta: dict) -> str:
    sentences = [f"{meta['name']} has {meta['start']} {meta['item']}."]
    sentences += [_step_sentence(meta, k) for k in range(len(meta["steps"]))]
    return " ".join(sentences)


OP_WORD = {"add": "add", "sub": "subtract", "mul": "multiply", "div": "divide"}


def _intermediate_steps(meta: dict) -> list[int]:
    """Indices of the steps whose result is not the final answer (all but the last)."""
    return list(range(len(meta["steps"]) - 1))


def _probe_why(meta, rng):
    # the operation behind one step: why the count changes there
    k = rng.randrange(len(meta["steps"]))
    step = meta["steps"][k]
    text = (f"{_problem_text(meta)} Why does the number of {meta['item']} change at step {k + 1}? "
            "Name the operation that step applies: add, subtract, multiply or divide.")
    word = OP_WORD[step["op"]]
    expl = [f"Step {k + 1}: {_step_sentence(meta, k)}",
            f"It takes the count from {step['before']} to {step['before']} {synthetic.SYMBOL[step['op']]} "
            f"{step['operand']} = {step['after']}, so the operation is {word}."]
    return text, word, expl


def _probe_cause_effect(meta, rng):
    # the change one step causes (signed), not the count after it
    k = rng.randrange(len(meta["steps"]))
    step = meta["steps"][k]
    change = step["after"] - step["before"]
    text = (f"{_problem_text(meta)} What effect does step {k + 1} have on the count? By how many "
            f"{meta['item']} does it change the count (negative if the count goes down)?")
    expl = _explain_steps(meta, upto=k + 1) + [
        f"The step changes the count from {step['before']} to {step['after']}: {step['after']} - {step['before']} = {change}."]
    return text, str(change), expl


def _probe_process(meta, rng):
    # the count just before the last step: an intermediate value, so 2+ steps
    if len(meta["steps"]) < 2:
        return None
    before_last = meta["steps"][-1]["before"]
    text = (f"{_problem_text(meta)} Describe the process that leads to the final count. "
            f"How many {meta['item']} are there just before the last step?")
    expl = _explain_steps(meta, upto=len(meta["steps"]) - 1) + [f"Just before the last step there are {before_last}."]
    return text, str(before_last), expl


def _probe_counterfactual(meta, rng):
    # another start, every step the same; never a program of the test split (nor the question's own)
    prog = _program_of(meta)
    deltas = [d for d in (1, 2, 3, 4, 5, -1, -2, -3) if meta["start"] + d > 0]
    rng.shuffle(deltas)
    for d in deltas:
        new_start = meta["start"] + d
        try:
            values = synthetic.run_program(new_start, prog)
        except ValueError:  # a division no longer divides evenly
            continue
        if min(values) <= 0 or synthetic.Program(meta["name"], meta["item"], new_start, tuple(prog)).in_test():
            continue
        text = (f"{_problem_text(meta)} Suppose {meta['name']} had started with {new_start} {meta['item']} "
                f"instead of {meta['start']}, with every step the same. How many {meta['item']} would "
                f"{meta['name']} have at the end?")
        expl = _explain_steps(meta, start=new_start) + [f"With the changed start the result is {values[-1]}."]
        return text, str(values[-1]), expl
    return None


def _probe_comparison(meta, rng):
    diff = meta["result"] - meta["start"]
    text = (f"{_problem_text(meta)} Compare the start and the end: what is the number of {meta['item']} at "
            f"the end minus the number at the start?")
    expl = _explain_steps(meta) + [f"{meta['result']} - {meta['start']} = {diff}."]
    return text, str(diff), expl


def _probe_hypothesis(meta, rng):
    # a threshold near the result, never the result itself
    threshold = max(0, meta["result"] + rng.choice([-5, -2, -1, 1, 2, 5]))
    if threshold == meta["result"]:
        threshold = meta["result"] + 1
    holds = meta["result"] > threshold
    text = (f"{_problem_text(meta)} Hypothesis: {meta['name']} ends with more than {threshold} {meta['item']}. "
            "Is the hypothesis true? Answer yes or no.")
    expl = _explain_steps(meta) + [f"{meta['result']} is {'more' if holds else 'not more'} than {threshold}."]
    return text, "yes" if holds else "no", expl


def _probe_decomposition(meta, rng):
    # one step as a sub-problem of its own: the last step applied to the starting count (2+ steps, so
    # it is not the original chain; none when that division does not come out even)
    if len(meta["steps"]) < 2:
        return None
    last = meta["steps"][-1]
    try:
        value = synthetic.apply_op(last["op"], meta["start"], last["operand"])
    except ValueError:
        return None
    if value <= 0:
        return None
    n = len(meta["steps"])
    text = (f"{_problem_text(meta)} Break the problem into its steps and take step {n} on its own: if it were "
            f"applied directly to the {meta['start']} {meta['item']} {meta['name']} starts with, how many "
            f"{meta['item']} would there be?")
    expl = [f"Step {n} on its own: {_step_sentence(meta, n - 1)}",
            f"{meta['start']} {synthetic.SYMBOL[last['op']]} {last['operand']} = {value}."]
    return text, str(value), expl


def _probe_explanatory_challenge(meta, rng):
    # a wrong claim about one step's change; the answer is the operand that step really uses
    k = rng.randrange(len(meta["steps"]))
    step = meta["steps"][k]
    wrong = step["operand"] + rng.choice([-2, -1, 1, 2])
    if wrong <= 0 or wrong == meta["result"]:
        wrong = next(w for w in (step["operand"] + 3, step["operand"] + 4) if w != meta["result"])
    verb = {"add": "adds", "sub": "takes away", "mul": "multiplies the count by", "div": "divides the count by"}[step["op"]]
    text = (f"{_problem_text(meta)} A student claims that step {k + 1} {verb} {wrong}. Is the claim right? "
            f"Justify the step and give the number step {k + 1} really uses.")
    expl = [f"Step {k + 1}: {_step_sentence(meta, k)}",
            f"{step['before']} {synthetic.SYMBOL[step['op']]} {step['operand']} = {step['after']}, so the claim of "
            f"{wrong} is wrong; the step uses {step['operand']}."]
    return text, str(step["operand"]), expl


def _probe_inversion(meta, rng):
    # the reverse problem: it states the original question's answer by construction (reveals_answer)
    prog = _as_program(meta)
    text = synthetic.reverse_text(prog)
    return text, str(meta["start"]), synthetic.reverse_rationale(prog).splitlines()[:-1]


def _probe_causal_verification(meta, rng):
    # whether an intermediate count follows from the steps before it (never a claim about the final count)
    steps = _intermediate_steps(meta)
    if not steps:
        return None
    k = rng.choice(steps)
    true_value = meta["steps"][k]["after"]
    claimed = true_value if rng.random() < 0.5 else true_value + rng.choice([-2, -1, 1, 2])
    if claimed < 0 or (claimed != true_value and claimed == meta["result"]):
        claimed = true_value
    follows = claimed == true_value
    text = (f"{_problem_text(meta)} Does it follow from these steps that {meta['name']} has {claimed} "
            f"{meta['item']} right after step {k + 1}? Answer yes or no.")
    expl = _explain_steps(meta, upto=k + 1) + [
        f"After step {k + 1} there are {true_value}, so the conclusion {'follows' if follows else 'does not follow'}."]
    return text, "yes" if follows else "no", expl


PROBE_MAKERS = {
    "why": _probe_why, "cause_effect": _probe_cause_effect, "process": _probe_process,
    "counterfactual": _probe_counterfactual, "comparison": _probe_comparison, "hypothesis": _probe_hypothesis,
    "decomposition": _probe_decomposition, "explanatory_challenge": _probe_explanatory_challenge,
    "inversion": _probe_inversion, "causal_verification": _probe_causal_verification,
}


SERVED_IDENTITY = {"served_locally": "kit engine, float32"}  # the cache identity of a teacher_serve server


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
                                       max_in_flight=max_in_flight, identity=SERVED_IDENTITY if served else None)
    elif kind == "transformers":
        chat = transformers_backend(model, dtype=dtype, batch_size=batch_size)
    elif kind == "vllm":
        chat = vllm_backend(model, dtype=dtype)
    else:
        raise TeacherConfigError(f"unknown teacher {kind!r}; use program, openai, transformers or vllm")
    if cache is not None:
        chat = CachedBackend(chat, cache)
    return LLMTeacher(chat, rules, max_new_tokens=max_new_tokens)
