"""Answer extraction and scoring: one implementation for evaluation and for RL rewards (Eq. 4).

Two extraction modes are reported side by side, as lm-evaluation-harness does:

* ``strict``: only the format the prompt asks for ("The answer is X", ``#### X``, ``\\boxed{X}``);
* ``flexible``: strict first, then the forms models really write: a bare option letter, ``(B)``,
  the option's text, a leading or last yes/no, the last number, the last ``$...$`` expression.

Model text is only ever matched with regular expressions and parsed as numbers or LaTeX (MATH uses
the ``math-verify`` library); it is never evaluated. Hostile text cannot stall or crash scoring (it
also computes RL rewards): the patterns use possessive quantifiers where whitespace runs meet, so
they run in linear time; only the last ``MAX_SCORED_CHARS`` characters of a completion are read;
numbers are parsed only up to ``MAX_NUMBER_CHARS`` characters and ``MAX_EXPONENT``; math-verify runs
with a one-second time limit on answers of at most ``MAX_LATEX_CHARS`` characters.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from .example import LETTERS, Example
from .normalize import last_boxed
from .registry import DATASETS

# math_verify is imported inside the functions that use it (heavy, or needed only on some paths).

MODES = ("strict", "flexible")
MAX_SCORED_CHARS = 20_000  # kit default: a completion's answer is near its end (1024 tokens are ~5,000 characters)
MAX_NUMBER_CHARS = 64  # longer "numbers" are not answers
MAX_EXPONENT = 64  # 1e309 and 1e3000000 are not answers either (and would overflow or take seconds)
MAX_LATEX_CHARS = 500  # longer LaTeX is compared as text only, never handed to sympy
MATH_VERIFY_SECONDS = 1

# possessive (*+, ++) where whitespace runs meet: no backtracking over long runs of spaces
_ANSWER_IS = r"(?i:(?:the\s++)?(?:final\s++)?answer\s*+(?:is|:)[\s:*]*+)"
_NUMBER = r"-?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+"
_NUMBER_RE = re.compile(_NUMBER)


def answer_type(example: Example) -> str:
    """"yesno" | "letter" | "number" | "latex" | "text" (from the dataset, or ``meta['answer_type']``)."""
    if example.meta and example.meta.get("answer_type"):
        return example.meta["answer_type"]
    if example.dataset in DATASETS:
        return DATASETS[example.dataset].answer_type
    raise KeyError(f"{example.id}: unknown dataset {example.dataset!r} and no meta['answer_type']")


# ---------------------------------------------------------------------------------------------
# Numbers

def parse_number(text: str | None) -> Fraction | None:
    """"1,080" / "$18.00" / "-3" / "0.375" / "3/8" / "45%" -> Fraction; anything else -> None."""
    if text is None:
        return None
    s = str(text).strip().strip("*").strip()
    if len(s) > MAX_NUMBER_CHARS:
        return None
    s = re.sub(r"^\\?\$|\\?\$$", "", s).strip()  # currency sign or LaTeX math delimiters
    s = s.replace(",", "").replace(" ", "").rstrip(".%")
    frac = re.fullmatch(r"\\d?frac\{(-?\d+)\}\{(\d+)\}", s)
    if frac:
        s = f"{frac.group(1)}/{frac.group(2)}"
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    try:
        if m:
            return Fraction(int(m.group(1)), int(m.group(2))) if int(m.group(2)) else None
        exponent = re.search(r"[eE]([+-]?\d+)$", s)
        if exponent and abs(int(exponent.group(1))) > MAX_EXPONENT:
            return None
        return Fraction(s)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


def numbers_equal(a: str | None, b: str | None, rel_tol: float = 1e-6) -> bool:
    x, y = parse_number(a), parse_number(b)
    if x is None or y is None:
        return False
    if x == y:
        return True
    return abs(x - y) <= Fraction(rel_tol) * max(Fraction(1), abs(y))  # exact: no float overflow


def number_spans(text: str) -> list[str]:
    """Every number written in ``text``, in order (as ``_last_number`` would read each)."""
    return [m.replace("$", "").replace(" ", "") for m in _NUMBER_RE.findall(text)]


def _last_number(text: str) -> str | None:
    found = number_spans(text)
    return found[-1] if found else None


# ---------------------------------------------------------------------------------------------
# Extraction per answer type. Each returns (strict, flexible).

_ANSWER_IS_RE = re.compile(_ANSWER_IS)
_SENTENCE_END = re.compile(r"\.\s")


def _answer_is_tail(text: str) -> str | None:
    """What follows the last "The answer is" that is followed by something, up to the end of its
    sentence (". ") or line, a final "." dropped. Linear in the text: the value is cut with
    searches, not with a lazy group followed by optional whitespace (quadratic on long runs)."""
    for m in reversed(list(_ANSWER_IS_RE.finditer(text))):
        end = text.find("\n", m.end())
        line = text[m.end(): len(text) if end < 0 else end]
        stop = _SENTENCE_END.search(line)
        value = (line[: stop.start()] if stop else line.rstrip()).rstrip(".").strip() if line.strip() else ""
        if value:
            return value
    return None


def _after_answer_is(text: str, value_pattern: str, flags=re.IGNORECASE) -> str | None:
    matches = re.findall(_ANSWER_IS + r"(" + value_pattern + r")", text, flags)
    return matches[-1] if matches else None


def _extract_yesno(text: str) -> tuple[str | None, str | None]:
    strict = _after_answer_is(text, r"yes|no")
    strict = strict.lower() if strict else None
    flexible = strict
    if flexible is None:
        boxed = last_boxed(text)
        if boxed is not None and _norm_text(boxed) in ("yes", "no"):
            flexible = _norm_text(boxed)
    if flexible is None:
        lead = re.match(r"\W*(yes|no)\b", text, re.IGNORECASE)
        words = re.findall(r"\b(yes|no)\b", text, re.IGNORECASE)
        flexible = (lead.group(1) if lead else words[-1] if words else None)
        flexible = flexible.lower() if flexible else None
    return strict, flexible


def _extract_letter(text: str, n_options: int, options: tuple[str, ...] | None) -> tuple[str | None, str | None]:
    valid = LETTERS[: max(n_options, 1)]
    letter = rf"\(?([{valid}])\)?(?![A-Za-z0-9])"
    m = re.findall(_ANSWER_IS + letter, text)
    strict = m[-1] if m else None
    flexible = strict
    if flexible is None:
        boxed = last_boxed(text)
        if boxed:
            b = re.fullmatch(rf"\s*(?:\\text\{{)?\(?([{valid}])\)?\}}?\s*", boxed)
            flexible = b.group(1) if b else None
    if flexible is None:
        if options:
            bare = re.fullmatch(rf"\W*\(?([{valid}])\)?[.:)]?(?:\s.*)?", text.strip(), re.DOTALL)
        else:  # a probe's letter answer, no option list: "A" alone or "(A)", "A)", "A.", "A:" before text, never "A cat"
            bare = (re.fullmatch(rf"\W*\(?([{valid}])\)?[.:)]?\W*", text.strip())
                    or re.fullmatch(rf"\W*(?:\(([{valid}])\)|([{valid}])[.:)])\s.*", text.strip(), re.DOTALL))
        paren = re.findall(rf"\(([{valid}])\)", text)
        if paren:
            flexible = paren[-1]
        elif bare:
            flexible = next(g for g in bare.groups() if g)
    if flexible is None and options:
        flexible = _option_by_text(text, options)
    return strict, flexible


def _option_by_text(text: str, options: tuple[str, ...]) -> str | None:
    """The letter of the option whose text occurs last in ``text`` (longest text wins a tie)."""
    low = text.lower()
    best = None  # (position, length, letter)
    for i, opt in enumerate(options):
        o = opt.lower().strip().rstrip(".")
        if not o:
            continue
        pos = [m.start() for m in re.finditer(r"(?<![a-z0-9])" + re.escape(o) + r"(?![a-z0-9])", low)]
        if pos:
            cand = (pos[-1] + len(o), len(o), LETTERS[i])
            if best is None or cand[:2] > best[:2]:
                best = cand
    return best[2] if best else None


def _extract_number(text: str) -> tuple[str | None, str | None]:
    strict = _after_answer_is(text, _NUMBER)
    if strict is None:
        hashes = re.findall(r"####\s*(" + _NUMBER + ")", text)
        strict = hashes[-1] if hashes else None
    if strict is None:
        boxed = last_boxed(text)
        strict = boxed if boxed is not None and parse_number(boxed) is not None else None
    strict = strict.replace("$", "").replace(" ", "") if strict else None
    flexible = strict if strict is not None else _last_number(text)
    return strict, flexible


def _extract_latex(text: str) -> tuple[str | None, str | None]:
    strict = last_boxed(text)
    strict = strict.strip() if strict is not None else None
    flexible = strict
    if flexible is None:
        tail = _answer_is_tail(text)
        if tail:
            flexible = tail.strip("$").strip() or None
    if flexible is None:
        maths = re.findall(r"\$([^$]+)\$", text)
        flexible = maths[-1].strip() if maths else _last_number(text)
    return strict, flexible


@dataclass(frozen=True)
class Extraction:
    strict: str | None
    flexible: str | None

    def get(self, mode: str) -> str | None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        return getattr(self, mode)


def extract_both(example: Example, completion: str) -> Extraction:
    kind = answer_type(example)
    text = (completion or "")[-MAX_SCORED_CHARS:]
    if kind == "yesno":
        s, f = _extract_yesno(text)
    elif kind == "letter":  # no option list (a probe's letter answer): letters up to its gold and meta n_options, at least A-E
        gold = example.answer.strip()
        n = len(example.choices) if example.choices else max(5, LETTERS.find(gold) + 1 if gold else 0,
                                                               int((example.meta or {}).get("n_options") or 0))
        s, f = _extract_letter(text, n, example.choices)
    elif kind == "number":
        s, f = _extract_number(text)
    elif kind == "latex" and example.choices:  # TabMWP multiple choice: answers are option texts
        boxed = last_boxed(text)
        s = _letter_to_choice(boxed, example.choices) if boxed is not None else None
        f = s
        if f is None:  # "the answer is (B)", "(B)", a bare letter, or the option's text
            letter = _extract_letter(text, len(example.choices), example.choices)[1]
            f = example.choices[LETTERS.index(letter)] if letter else None
    elif kind == "latex":
        s, f = _extract_latex(text)
    elif kind == "text":
        s, f = _extract_text(text)
    else:
        raise ValueError(f"unknown answer type {kind!r}")
    return Extraction(s, f)


def _extract_text(text: str) -> tuple[str | None, str | None]:
    """Free short answers (probe answers): after "The answer is", else the last non-empty line."""
    tail = _answer_is_tail(text)
    strict = tail.strip("*").strip() or None if tail else None
    if strict is None:
        lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
        return None, (lines[-1] if lines else None)
    return strict, strict


_OPTION_ANSWER = re.compile(rf"\(([{LETTERS}{LETTERS.lower()}])\)(?:\s.*)?|([{LETTERS}])(?:[.:)](?:\s.*)?)?", re.DOTALL)


def option_letter(answer: str) -> str | None:
    """The option letter a free answer names: a bare letter ("B"), or "(B)" (also "(b)"), "B)", "B."
    or "B:", optionally followed by the option's text ("(B) the moon", "B. the moon"). None for
    anything else; "A cat" is text, not option A."""
    m = _OPTION_ANSWER.fullmatch(re.sub(r"\\text\{([^{}]*)\}", r"\1", answer or "").strip().strip("*").strip())
    return (m.group(1) or m.group(2)).upper() if m else None


def infer_answer_type(answer: str) -> str:
    """The answer type of a free answer (a teacher's answer to a probe): number, yesno, letter (an
    option letter, :func:`option_letter`; its gold is the letter alone, :func:`probe_gold`) or text."""
    if parse_number(answer) is not None:
        return "number"
    if _norm_text(answer) in ("yes", "no"):
        return "yesno"
    if option_letter(answer) is not None:
        return "letter"
    return "text"


def probe_gold(answer: str) -> str:
    """The gold a probe's free answer is scored against: the option letter for a letter answer
    ("(B) the moon" -> "B"), the answer itself otherwise."""
    return option_letter(answer) if infer_answer_type(answer) == "letter" else answer


def _letter_to_choice(value: str | None, choices: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    v = re.sub(r"\\text\{([^{}]*)\}", r"\1", value).strip().strip("()").strip()
    if len(v) == 1 and v in LETTERS[: len(choices)]:
        return choices[LETTERS.index(v)]
    return re.sub(r"\\text\{([^{}]*)\}", r"\1", value).strip()


def extract(example: Example, completion: str, mode: str = "flexible") -> str | None:
    """The answer ``completion`` gives to ``example`` (None when none is found)."""
    return extract_both(example, completion).get(mode)


# ---------------------------------------------------------------------------------------------
# Matching an extracted answer against the gold one

def _norm_text(s: str) -> str:
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    return re.sub(r"\s+", " ", s.strip().strip("$").strip().rstrip(".").lower())


_HUGE_NUMBER = re.compile(r"\d{%d,}|[eE][+-]?\d{3,}|\^\s*\{?\s*[+-]?\d{3,}" % MAX_NUMBER_CHARS)


def _latex_equal(gold: str, pred: str) -> bool:
    if len(pred) > MAX_LATEX_CHARS:  # never handed to sympy (and no short gold equals it)
        return False
    if _norm_text(gold) == _norm_text(pred):
        return True
    if parse_number(gold) is not None and parse_number(pred) is not None:
        return numbers_equal(pred, gold)
    if _HUGE_NUMBER.search(pred):  # 1e6638569, 2^{100000}: sympy would spend its whole time limit on them
        return False
    from math_verify import parse, verify  # imported lazily: it pulls in sympy

    try:
        g = parse(f"${gold}$", parsing_timeout=MATH_VERIFY_SECONDS)
        p = parse(f"${pred}$", parsing_timeout=MATH_VERIFY_SECONDS)
        return bool(g) and bool(p) and bool(verify(g, p, timeout_seconds=MATH_VERIFY_SECONDS))
    except Exception:  # math-verify parse/verify failures mean "not shown equal"
        return False


def matches(example: Example, extracted: str | None) -> bool:
    """Whether an extracted answer equals the gold answer of ``example``."""
    if extracted is None:
        return False
    kind = answer_type(example)
    if kind in ("yesno", "letter"):
        return extracted.strip().lower() == example.answer.lower() if kind == "yesno" else extracted == example.answer
    if kind == "text":
        return _norm_text(extracted).strip("\"'") == _norm_text(example.answer).strip("\"'")
    if kind == "number":
        return numbers_equal(extracted, example.answer)
    if example.choices:
        return _norm_text(extracted) == _norm_text(example.answer)
    return _latex_equal(example.answer, extracted)


def is_correct(example: Example, completion: str, mode: str = "flexible") -> bool:
    """R_base of Eq. 4 (1 if the final answer is correct): True when ``completion`` answers ``example``.

    >>> from exgrpo_utils.data.example import Example
    >>> ex = Example(id="x", dataset="gsm8k", question="...", answer="1080")
    >>> is_correct(ex, "So the total is 1,080. The answer is 1,080.")
    True
    """
    return matches(example, extract(example, completion, mode))
