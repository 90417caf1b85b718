"""Evaluation prompts: the question plus one answer-format instruction per answer type (kit default).

The paper evaluates with a single pass on the original question; it gives no prompt wording, so the
instructions below are kit defaults. Each asks for the form the ``strict`` extractor reads.
"""
from __future__ import annotations

from .answers import answer_type
from .example import Example

INSTRUCTIONS = {
    "yesno": 'Think step by step, then finish with "The answer is yes" or "The answer is no".',
    "letter": 'Think step by step, then finish with "The answer is (X)", where X is the letter of the correct choice.',
    "number": 'Think step by step, then finish with "The answer is N", where N is a number.',
    "latex": "Think step by step, then put your final answer within \\boxed{}.",
    "text": 'Think step by step, then finish with "The answer is ...".',  # generated questions of unknown type
}
PROMPT_VERSION = "eval-v1"  # bump when the wording changes: it is part of every evaluation's identity


def messages_for(example: Example, system: str | None = None) -> list[dict]:
    """Chat messages that ask ``example``'s question with its answer-format instruction."""
    msgs = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": f"{example.question}\n\n{INSTRUCTIONS[answer_type(example)]}"})
    return msgs
