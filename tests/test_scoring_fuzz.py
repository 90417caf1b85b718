"""Hostile completions cannot hang or crash the scorer (it also computes the RL rewards)."""
import random
import time

import pytest

from exgrpo_utils.data import answers
from exgrpo_utils.data.example import Example
from exgrpo_utils.data.parsers import format_options

PER_CALL_SECONDS = 1.0
EXAMPLES = {
    "number": Example("g", "gsm8k", "...", "1080"),
    "yesno": Example("s", "strategyqa", "...", "yes"),
    "letter": Example("c", "csqa", format_options("Where?", ["bank", "library", "store", "mall", "park"]), "B",
                      choices=("bank", "library", "store", "mall", "park")),
    "latex": Example("m", "math", "...", r"\frac{1}{2}"),
    "latex-choices": Example("t", "tabmwp", "...", "nonlinear", choices=("linear", "nonlinear")),
    "text": Example("p", "arith-probe", "...", "the second step", meta={"answer_type": "text"}),
}
PIECES = [" ", "\t", "\n", ".", ",", ":", "*", "$", "(", ")", "{", "}", "\\boxed{", "\\frac{", "####", "The answer is",
          "answer:", "1", "9", "0", "-", "/", "e", "1e309", "1e3000000", "yes", "no", "(B)", "B", "\x00", "\x1b", "\u200b",
          "\\text{", "^", "_", "%", "=", "nonlinear", "library", "\\\\", "'", '"']


def hostile(rng: random.Random, n: int = 1000) -> list[str]:
    out = []
    for i in range(n):
        kind = i % 5
        if kind == 0:  # one long run of one piece, with an answer marker in front
            out.append(rng.choice(["The answer is", "\\boxed{", "####", ""]) + rng.choice(PIECES) * rng.randint(200, 4000)
                       + rng.choice(PIECES))
        elif kind == 1:  # nested braces and LaTeX
            depth = rng.randint(50, 2000)
            out.append("\\boxed{" * depth + rng.choice(["1", "x", "\\frac{1}{2}", ""]) + "}" * rng.randint(0, depth))
        elif kind == 2:  # huge numbers and exponents
            out.append("The answer is " + rng.choice(["1" * rng.randint(100, 20000), f"1e{rng.randint(300, 10**7)}",
                                                    "9" * 500 + "/" + "3" * 500, "-" * 1000 + "5", "0." + "3" * 5000]))
        elif kind == 3:  # random mixtures
            out.append("".join(rng.choice(PIECES) for _ in range(rng.randint(100, 3000))))
        else:  # a long completion with an answer at the end
            out.append(" ".join(rng.choice(PIECES) for _ in range(5000)) + " The answer is 1080.")
    return out


@pytest.mark.parametrize("kind", list(EXAMPLES))
def test_hostile_completions_are_scored_quickly_and_never_raise(kind):
    example = EXAMPLES[kind]
    answers.is_correct(example, r"The answer is \boxed{\frac{1}{2}}")  # warm up: math-verify imports sympy once
    slowest = 0.0
    for text in hostile(random.Random(f"fuzz:{kind}")):
        t0 = time.perf_counter()
        answers.extract_both(example, text)
        answers.is_correct(example, text)
        answers.is_correct(example, text, mode="strict")
        slowest = max(slowest, time.perf_counter() - t0)
    assert slowest < PER_CALL_SECONDS, f"{kind}: slowest completion took {slowest:.2f} s"


@pytest.mark.parametrize("kind", ["number", "latex", "text", "yesno"])
@pytest.mark.parametrize("text", ["The answer is" + " " * 1000 + "?", "answer:" + " \t" * 5000 + "x",
                                  "The answer is x" + " " * 20000 + "y", "The answer is " + "a " * 10000])
def test_whitespace_runs_do_not_backtrack(kind, text):
    t0 = time.perf_counter()
    assert not answers.is_correct(EXAMPLES[kind], text)
    assert time.perf_counter() - t0 < 0.1


@pytest.mark.parametrize("text", [r"\boxed{1e309}", r"\boxed{1e3000000}", "The answer is 1e400", r"\boxed{-1e309}"])
def test_huge_exponents_are_no_answer(text):
    t0 = time.perf_counter()
    assert answers.parse_number(text.replace("\\boxed{", "").rstrip("}").replace("The answer is ", "")) is None
    assert not answers.is_correct(EXAMPLES["number"], text)
    assert time.perf_counter() - t0 < 0.05


def test_bounds_keep_real_answers():
    assert answers.is_correct(EXAMPLES["number"], "So 1,080 in all. The answer is 1,080.")
    assert answers.numbers_equal("1e3", "1000") and answers.numbers_equal("0.3333333", "1/3")
    assert not answers.numbers_equal("0.33", "1/3")
    assert answers.is_correct(EXAMPLES["latex"], r"so \boxed{\dfrac{1}{2}}")
