"""The program teacher of the synthetic ``arith`` family (method.md section 2, offline CPU runs).

Every answer is computed exactly from the item's step program, so it needs no model. It is the
default teacher of the offline CPU reproduction because no strong LLM can run here. It answers the
same four batched calls as the LLM teacher (``teach.teachers``): ``solve``, ``write_probes`` (one
template per rule, ``PROBE_MAKERS``; a rule that does not fit the item gives a NOT_APPLICABLE
draft), ``answer_probes`` and ``recheck``. It cannot be derailed by a probe, so Eq. 1 keeps all its
well-formed probes; the rule statistics say so rather than hide it.
"""
from __future__ import annotations

import random
from typing import Sequence

from ..data import synthetic
from ..data.example import Example
from .records import ProbeDraft
from .rules import Rule


def _step_sentence(meta: dict, k: int) -> str:
    step = meta["steps"][k]
    return synthetic.TEMPLATES[step["op"]][0].format(p=meta["pronoun"], n=step["operand"], i=meta["item"])


def _explain_steps(meta: dict, upto: int | None = None, start: int | None = None) -> list[str]:
    """The worked steps (``synthetic.step_lines``, the style of the teacher's solutions), from
    ``start`` instead of the item's own start when given."""
    program = _as_program(meta)
    if start is not None:
        program = synthetic.Program(program.name, program.item, start, program.steps)
    return synthetic.step_lines(program, upto)


# Rules whose probe gives the original question's answer as a premise: the inversion probe starts
# from the final count ("Now she has 14 cards"). The text test (inversion.reveals_answer) misses it
# when that count is also one of the question's numbers.
STATES_ANSWER = frozenset({"inversion"})


def _step_line(meta: dict, k: int) -> str:
    """Step k's line of the worked solution (``synthetic.step_lines``)."""
    return synthetic.step_lines(_as_program(meta), k + 1)[-1]


def _program_of(meta: dict) -> list[tuple[str, int]]:
    return [(s["op"], s["operand"]) for s in meta["steps"]]


class ProgramTeacher:
    """Exact teacher for ``arith`` items (``Example.meta`` holds the step program)."""

    name = "program"
    version = 2  # part of what its outputs are keyed by (the EI-Test's fingerprint): bump when they change

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
                    drafts.append(ProbeDraft.not_applicable(rule.id, "rule has no program template"))
                    continue
                made = maker(meta, self._rng(ex, rule.id))
                if made is None:
                    drafts.append(ProbeDraft.not_applicable(rule.id, "rule not applicable to this item"))
                else:
                    text, gold, explanation = made
                    drafts.append(ProbeDraft(rule.id, text, None, gold, tuple(explanation),
                                             states_answer=rule.id in STATES_ANSWER))
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
    expl = [_step_line(meta, k), f"It takes the count from {step['before']} to {step['after']}, so the operation is {word}."]
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
    expl = [f"Step {n} on its own: {_step_sentence(meta, n - 1)} {meta['start']} {synthetic.SYMBOL[last['op']]} "
            f"{last['operand']} = {value}."]
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
    expl = [_step_line(meta, k), f"So the claim of {wrong} is wrong; the step uses {step['operand']}."]
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
