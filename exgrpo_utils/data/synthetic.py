"""Synthetic ``arith`` family: short multi-step integer word problems, generated offline with a seed.

``arith`` asks for the final quantity after a few operations; ``arith_rev`` gives the final quantity
and asks for the starting one: the same programs read backwards, mirroring GSM8K -> GSM8K-Reversal.
Every item keeps its program in ``Example.meta`` (start value, each step's operation, operand and
intermediate values) so a program teacher can compute exact answers to probes about it.

Why not reasoning-gym: its arithmetic generators produce bare expressions or GSM-style templates
without an invertible step program, so neither the reversed problems nor exact probe answers
(counterfactual, intermediate value, inversion) could be derived from their items. This generator is
about a hundred lines and has no dependencies.

Train and test are disjoint by construction: an item's split is decided by a hash of its program.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from .example import Example

NAMES = ["Mia", "Liam", "Ava", "Noah", "Zoe", "Omar", "Lena", "Ravi", "Sara", "Tom", "Ines", "Kenji"]
ITEMS = ["apples", "marbles", "stickers", "coins", "books", "shells", "cards", "pencils", "stamps", "beads"]
PRONOUN = {"Mia": "she", "Ava": "she", "Zoe": "she", "Lena": "she", "Sara": "she", "Ines": "she"}

# op -> (present-tense sentence, past-tense sentence); {p} pronoun, {n} operand, {i} item
TEMPLATES = {
    "add": ("Then {p} gets {n} more {i}.", "Then {p} got {n} more {i}."),
    "sub": ("Then {p} gives away {n} {i}.", "Then {p} gave away {n} {i}."),
    "mul": ("Then the number of {i} {p} has becomes {n} times as large.",
            "Then the number of {i} {p} had became {n} times as large."),
    "div": ("Then {p} splits the {i} into {n} equal groups and keeps one group.",
            "Then {p} split the {i} into {n} equal groups and kept one group."),
}
SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
INVERSE = {"add": "sub", "sub": "add", "mul": "div", "div": "mul"}

TEST_FRACTION = 10  # one program in TEST_FRACTION goes to test (by hash)
# Kit default difficulty, calibrated to the embedded student (SmolLM2-135M-Instruct, greedy, 96 new
# tokens, 200 test items): zero-shot 12.5% on arith and 4.0% on arith_rev; after SFT on the probes of
# 64 training questions (1 epoch) 36.0% and 5.0%. With 2-3 steps, starts <= 30 and values <= 200
# (the previous default) zero-shot was about 6% and 17 SFT steps did not lift it.
DEFAULTS = dict(n_train=2000, n_test=300, min_steps=1, max_steps=2, max_start=20, max_value=100, seed=0)


def apply_op(op: str, value: int, operand: int) -> int:
    if op == "add":
        return value + operand
    if op == "sub":
        return value - operand
    if op == "mul":
        return value * operand
    if op == "div":
        if value % operand:
            raise ValueError(f"{value} is not divisible by {operand}")
        return value // operand
    raise ValueError(f"unknown op {op!r}")


def run_program(start: int, steps: list[tuple[str, int]]) -> list[int]:
    """Intermediate values [start, after step 1, ..., result]."""
    values = [start]
    for op, operand in steps:
        values.append(apply_op(op, values[-1], operand))
    return values


@dataclass(frozen=True)
class Program:
    name: str
    item: str
    start: int
    steps: tuple[tuple[str, int], ...]

    @property
    def values(self) -> list[int]:
        return run_program(self.start, list(self.steps))

    def signature(self) -> str:
        return f"{self.start}|" + ";".join(f"{o}{n}" for o, n in self.steps)

    def in_test(self) -> bool:
        return int(hashlib.sha1(self.signature().encode()).hexdigest(), 16) % TEST_FRACTION == 0

    def meta(self, direction: str) -> dict:
        vals = self.values
        return {
            "direction": direction, "name": self.name, "item": self.item, "pronoun": pronoun(self.name),
            "start": self.start, "result": vals[-1],
            "steps": [{"op": o, "operand": n, "before": vals[k], "after": vals[k + 1]}
                      for k, (o, n) in enumerate(self.steps)],
        }


def pronoun(name: str) -> str:
    return PRONOUN.get(name, "he")


def random_program(rng: random.Random, min_steps: int, max_steps: int, max_start: int, max_value: int) -> Program:
    while True:
        value = start = rng.randint(2, max_start)
        steps: list[tuple[str, int]] = []
        for _ in range(rng.randint(min_steps, max_steps)):
            choices = ["add", "add", "sub", "sub", "mul"]
            divisors = [d for d in (2, 3, 4, 5) if value % d == 0 and value // d >= 2]
            if divisors:
                choices.append("div")
            op = rng.choice(choices)
            if op == "add":
                n = rng.randint(1, 20)
            elif op == "sub":
                if value <= 2:
                    op, n = "add", rng.randint(1, 20)
                else:
                    n = rng.randint(1, value - 1)
            elif op == "mul":
                n = rng.randint(2, 4)
            else:
                n = rng.choice(divisors)
            value = apply_op(op, value, n)
            steps.append((op, n))
        if value <= max_value:
            return Program(rng.choice(NAMES), rng.choice(ITEMS), start, tuple(steps))


def forward_text(p: Program) -> str:
    pr = pronoun(p.name)
    sentences = [f"{p.name} has {p.start} {p.item}."]
    sentences += [TEMPLATES[o][0].format(p=pr, n=n, i=p.item) for o, n in p.steps]
    sentences.append(f"How many {p.item} does {p.name} have now?")
    return " ".join(sentences)


def reverse_text(p: Program) -> str:
    pr = pronoun(p.name)
    sentences = [f"{p.name} had some {p.item}."]
    sentences += [TEMPLATES[o][1].format(p=pr, n=n, i=p.item) for o, n in p.steps]
    sentences.append(f"Now {pr} has {p.values[-1]} {p.item}. How many {p.item} did {p.name} have at the start?")
    return " ".join(sentences)


def step_lines(p: Program, upto: int | None = None) -> list[str]:
    """The worked steps of ``p`` in the one chain-of-thought style of the kit's arith teacher: each
    step's sentence, then its arithmetic ("Step 2: Then he gets 4 more books. 20 + 4 = 24.").

    >>> step_lines(Program("Ravi", "books", 20, (("add", 4),)))
    ['Ravi starts with 20 books.', 'Step 1: Then he gets 4 more books. 20 + 4 = 24.']
    """
    vals, pr = p.values, pronoun(p.name)
    lines = [f"{p.name} starts with {p.start} {p.item}."]
    for k, (o, n) in enumerate(p.steps[:upto]):
        sentence = TEMPLATES[o][0].format(p=pr, n=n, i=p.item)
        lines.append(f"Step {k + 1}: {sentence} {vals[k]} {SYMBOL[o]} {n} = {vals[k + 1]}.")
    return lines


def forward_rationale(p: Program) -> str:
    """The teacher's solution of the forward question: its steps in the style of ``step_lines`` (the
    style of every probe answer too, so that no method's targets mix two styles), then the answer."""
    return "\n".join(step_lines(p) + [f"The answer is {p.values[-1]}."])


def reverse_rationale(p: Program) -> str:
    vals = p.values
    lines = [f"Undo the steps from the end, starting at {vals[-1]}."]
    for k in range(len(p.steps) - 1, -1, -1):
        o, n = p.steps[k]
        lines.append(f"{vals[k + 1]} {SYMBOL[INVERSE[o]]} {n} = {vals[k]}.")
    lines.append(f"The answer is {p.start}.")
    return "\n".join(lines)


def programs(split: str, n: int, *, seed: int, min_steps: int, max_steps: int, max_start: int,
             max_value: int) -> list[Program]:
    """The first ``n`` distinct programs of ``split`` for this seed and difficulty."""
    if not 1 <= min_steps <= max_steps:
        raise ValueError(f"need 1 <= min_steps <= max_steps, got {min_steps}, {max_steps}")
    rng = random.Random(f"arith:{seed}:{min_steps}:{max_steps}:{max_start}:{max_value}")
    want_test = split == "test"
    seen: set[str] = set()
    out: list[Program] = []
    for _ in range(200 * n + 10_000):
        if len(out) >= n:
            break
        p = random_program(rng, min_steps, max_steps, max_start, max_value)
        sig = p.signature()
        if p.in_test() == want_test and sig not in seen:
            seen.add(sig)
            out.append(p)
    if len(out) < n:
        raise ValueError(f"only {len(out)} distinct {split} programs exist for these settings; asked for {n}")
    return out


def load(name: str, split: str, *, n_train: int = DEFAULTS["n_train"], n_test: int = DEFAULTS["n_test"],
         min_steps: int = DEFAULTS["min_steps"], max_steps: int = DEFAULTS["max_steps"],
         max_start: int = DEFAULTS["max_start"], max_value: int = DEFAULTS["max_value"],
         seed: int = DEFAULTS["seed"]) -> list[Example]:
    """Generate ``arith`` (train/test) or ``arith_rev`` (test: the reversed ``arith`` test programs).

    Defaults (kit defaults, ``DEFAULTS``): 2000 train and 300 test items, 1-2 steps, start <= 20, values <= 100.
    """
    n = n_train if split == "train" else n_test
    progs = programs(split, n, seed=seed, min_steps=min_steps, max_steps=max_steps,
                     max_start=max_start, max_value=max_value)
    if name == "arith":
        return [Example(id=f"arith-{split}-{k}", dataset="arith", question=forward_text(p),
                        answer=str(p.values[-1]), rationale=forward_rationale(p), meta=p.meta("forward"))
                for k, p in enumerate(progs)]
    if name == "arith_rev":
        return [Example(id=f"arith_rev-{split}-{k}", dataset="arith_rev", question=reverse_text(p),
                        answer=str(p.start), rationale=reverse_rationale(p), meta=p.meta("reverse"))
                for k, p in enumerate(progs)]
    raise KeyError(f"unknown synthetic dataset {name!r}")
