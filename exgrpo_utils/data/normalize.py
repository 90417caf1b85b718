"""Pure answer helpers shared by the scorer (answers.py) and the row parsers (parsers.py).

They depend on nothing else in the package, so the scorer can use them without importing the loaders.
"""
from __future__ import annotations

from fractions import Fraction


def canonical_number(text: str) -> str:
    """A gold number in canonical form, separators removed. Raises ValueError for anything else.

    >>> [canonical_number(s) for s in ["1,080", "$18.00", "-3", "3/8", "0.50"]]
    ['1080', '18', '-3', '3/8', '0.5']
    >>> canonical_number("three")
    Traceback (most recent call last):
    ...
    ValueError: Invalid literal for Fraction: 'three'
    """
    s = str(text).strip().replace(",", "").replace("$", "").rstrip(".")
    if not s:
        raise ValueError("empty number")
    if "/" in s:
        num, den = s.split("/", 1)
        Fraction(int(num), int(den))  # validates
        return f"{int(num)}/{int(den)}"
    value = Fraction(s)  # accepts ints and decimals, rejects anything else
    if value.denominator == 1:
        return str(value.numerator)
    return s.rstrip("0") if "." in s else s


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, nested braces included.

    >>> last_boxed(r"so $\\boxed{\\frac{1}{\\sqrt{2}}}$ and")
    '\\\\frac{1}{\\\\sqrt{2}}'
    >>> last_boxed(r"\\boxed 5$."), last_boxed(r"\\boxed{unbalanced"), last_boxed("no box")
    ('5', None, None)
    """
    best = None
    for marker in ("\\boxed", "\\fbox"):
        pos = text.rfind(marker)
        if pos > (best[0] if best else -1):
            best = (pos, marker)
    if best is None:
        return None
    i = best[0] + len(best[1])
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text) or text[i] != "{":
        # "\boxed 5" form
        rest = text[i:].strip().split()
        return rest[0].rstrip("$.") if rest else None
    return _braced(text, i)


def _braced(text: str, i: int) -> str | None:
    """The text inside the balanced braces opening at ``text[i]`` ("{"), or None if they never close."""
    depth, start = 0, i + 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[start:j]
    return None  # unbalanced
