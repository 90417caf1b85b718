import pytest

from exgrpo_utils.data import answers
from exgrpo_utils.data.example import Example
from exgrpo_utils.data.parsers import format_options

YN = Example("s1", "strategyqa", "Is the sky blue?", "yes")
MC5 = Example("c1", "csqa", format_options("Where?", ["bank", "library", "store", "mall", "new york"]), "B",
              choices=("bank", "library", "store", "mall", "new york"))
NLI = Example("a1", "anli", "...", "C", choices=("entailment", "neutral", "contradiction"))
ESNLI = Example("e1", "esnli", "...", "B", choices=("entailment", "neutral", "contradiction"))
ARC = Example("r1", "arc_challenge", "...", "D", choices=("w", "x", "y", "Record the details."))
OBQA = Example("o1", "openbookqa", "...", "A", choices=("quit eating lunch out", "b", "c", "d"))
DATE = Example("d1", "date_understanding", "...", "E", choices=("05/09/2021", "03/11/2021", "06/12/2021",
                                                               "02/23/2021", "05/01/2021", "04/29/2021"))
GSM = Example("g1", "gsm8k", "...", "1080")
REV = Example("v1", "gsm8k_rev", "...", "3/8")
MATH = Example("m1", "math", "...", r"\frac{1}{2}")
MATH_TUPLE = Example("m2", "math", "...", "(-6, 10)")
TAB_NUM = Example("t1", "tabmwp", "...", "84")
TAB_MC = Example("t2", "tabmwp", "...", "nonlinear", choices=("linear", "nonlinear"))
BOOLQ = Example("b1", "boolq", "...", "no")

# (example, completion, correct under flexible, correct under strict)
CASES = [
    (YN, "The sky scatters blue light. The answer is yes.", True, True),
    (YN, "The answer is No.", False, False),
    (YN, "YES, because of Rayleigh scattering.", True, False),
    (YN, "There is no doubt. So yes.", True, False),
    (BOOLQ, "No. The passage says otherwise.", True, False),
    (BOOLQ, "The answer is: **no**", True, True),
    (BOOLQ, r"\boxed{Yes}", False, False),
    (MC5, "The answer is (B).", True, True),
    (MC5, "the answer is B", True, True),
    (MC5, "B", True, False),
    (MC5, "B) library", True, False),
    (MC5, "People borrow books at a library.", True, False),
    (MC5, "The answer is (A).", False, False),
    (MC5, "It could be (A) or maybe (B)... I pick (B)", True, False),
    (MC5, "no option fits", False, False),
    (NLI, "They clash, so it is a contradiction.", True, False),
    (NLI, "The answer is (B)", False, False),
    (ESNLI, "Neither follows: neutral.", True, False),
    (ESNLI, "The hypothesis follows: entailment.", False, False),
    (ARC, "Answer: D", True, True),
    (ARC, "The answer is (E)", False, False),  # E is not an option of a 4-choice item
    (OBQA, "They should quit eating lunch out.", True, False),
    (OBQA, "The answer is (C).", False, False),
    (DATE, "Today is 05/01/2021. The answer is (E).", True, True),
    (DATE, "Yesterday was April 30 so today is 05/01/2021", True, False),
    (DATE, "So the date is 04/29/2021.", False, False),
    (GSM, "So she pays 1,080 dollars. The answer is 1,080.", True, True),
    (GSM, "#### 1080", True, True),
    (GSM, r"The total is $\boxed{1080}$", True, True),
    (GSM, "The answer is $1,080.00", True, True),
    (GSM, "40 * 27 = 1080", True, False),
    (GSM, "The answer is 1081.", False, False),
    (GSM, "I am not sure.", False, False),
    (REV, "The answer is 0.375", True, True),
    (REV, "So x = 3/8", True, False),
    (REV, "The answer is 3/4", False, False),
    (Example("n1", "gsm8k", "...", "-3"), "The temperature falls to -3.", True, False),
    (MATH, r"Thus $x = \boxed{\dfrac12}$.", True, True),
    (MATH, r"\boxed{0.5}", True, True),
    (MATH, r"\boxed{\frac{2}{4}}", True, True),
    (MATH, r"The answer is $\frac{1}{3}$.", False, False),
    (MATH, r"so the answer is $\frac{1}{2}$.", True, False),
    (MATH_TUPLE, r"The point is $\boxed{(-6,10)}$", True, True),
    (MATH_TUPLE, r"\boxed{(6, -10)}", False, False),
    (TAB_NUM, r"The mean is \boxed{84}.", True, True),
    (TAB_NUM, "672 / 8 = 84", True, False),
    (TAB_NUM, r"\boxed{85}", False, False),
    (TAB_MC, r"\boxed{nonlinear}", True, True),
    (TAB_MC, r"\boxed{\text{nonlinear}}", True, True),
    (TAB_MC, r"\boxed{B}", True, True),
    (TAB_MC, "The rate changes, so the function is nonlinear.", True, False),
    (TAB_MC, r"\boxed{linear}", False, False),
    (TAB_MC, "(B) nonlinear\n\nThe rate changes from 1 to 12.", True, False),
    (TAB_MC, "(A) linear, since 10 and 12 differ by 2", False, False),
    (TAB_MC, "The answer is (B).", True, False),
]


@pytest.mark.parametrize("example,completion,flexible,strict", CASES,
                         ids=[f"{c[0].dataset}-{i}" for i, c in enumerate(CASES)])
def test_scoring_hand_written_completions(example, completion, flexible, strict):
    assert answers.is_correct(example, completion) is flexible
    assert answers.is_correct(example, completion, mode="strict") is strict


def test_every_dataset_has_a_right_and_a_wrong_case():
    from exgrpo_utils.data.registry import PAPER_DATASETS

    for name in PAPER_DATASETS:
        outcomes = {c[2] for c in CASES if c[0].dataset == name}
        assert outcomes == {True, False}, name


@pytest.mark.parametrize("a,b,equal", [
    ("3/8", "0.375", True), ("1,000", "1000", True), ("$18.00", "18", True), ("-3", "-3.0", True),
    ("45%", "45", True), (r"\frac{3}{8}", "0.375", True), ("0.3333333", "1/3", True), ("0.33", "1/3", False), ("2", "3", False),
    ("abc", "1", False), ("1/0", "1", False),
])
def test_numbers_equal(a, b, equal):
    assert answers.numbers_equal(a, b) is equal


def test_extract_returns_strings_and_never_evaluates():
    evil = Example("x", "gsm8k", "...", "4")
    text = "The answer is __import__('os').system('echo pwned')"
    assert answers.extract(evil, text, "strict") is None
    assert answers.extract(evil, "2+2 = 4", "flexible") == "4"
    assert answers.extract(MATH, r"\boxed{\frac{1}{2}}") == r"\frac{1}{2}"


def test_modes_are_checked():
    with pytest.raises(ValueError, match="mode"):
        answers.extract(YN, "yes", mode="lenient")


def test_meta_answer_type_for_probe_items():
    probe = Example("p", "arith-probe", "How many?", "7", meta={"answer_type": "number"})
    assert answers.is_correct(probe, "The answer is 7.")
    with pytest.raises(KeyError, match="answer_type"):
        answers.is_correct(Example("q", "unknown", "?", "1"), "1")


# ---------------------------------------------------------------------------------------------
# Free probe answers: their type and gold (Eq. 2's Lambda and grpo-mode probe rewards use them)

@pytest.mark.parametrize("answer, kind, gold", [
    ("42", "number", "42"), ("Yes", "yesno", "Yes"), ("no.", "yesno", "no."),
    ("B", "letter", "B"), ("(C)", "letter", "C"), ("(B) the moon", "letter", "B"), ("D) evaporation", "letter", "D"),
    ("A.", "letter", "A"), ("\\text{(E)}", "letter", "E"),
    ("A. It doubles", "letter", "A"), ("C: the moon", "letter", "C"), ("(b) the moon", "letter", "B"),
    ("A cat", "text", "A cat"), ("Because the ice melts", "text", "Because the ice melts"), ("Z", "text", "Z"),
])
def test_free_probe_answers_get_their_type_and_gold(answer, kind, gold):
    from exgrpo_utils.data.answers import infer_answer_type, probe_gold

    assert infer_answer_type(answer) == kind and probe_gold(answer) == gold


def test_a_letter_probe_answer_is_matched_as_a_letter_not_a_string():
    """Before: the teacher's "(B) the moon" was the gold string, and a student answering "The answer is (B)." scored 0."""
    from exgrpo_utils.teach.inversion import probe_example

    item = Example("q1", "arc_challenge", "Which body orbits the Earth? (A) the sun (B) the moon", "B", choices=("the sun", "the moon"))
    probe = probe_example(item, "why", "Which option names the Earth's satellite?", "(B) the moon")
    assert probe.answer == "B" and probe.meta["answer_type"] == "letter"
    assert answers.is_correct(probe, "The moon orbits the Earth. The answer is (B).")
    assert answers.is_correct(probe, "B")
    assert not answers.is_correct(probe, "The answer is (A).")
    first = probe_example(item, "why", "Which option is the sun?", "(A) the sun")
    assert not answers.is_correct(first, "A satellite is what orbits. It is the moon.")  # the article is not option A
    assert answers.is_correct(first, "A. The sun.") and answers.is_correct(first, "(A)")
    far = probe_example(item, "why", "Which?", "G")  # a letter past E still extracts
    assert answers.is_correct(far, "The answer is G.") and not answers.is_correct(far, "The answer is F.")


def test_the_scorer_does_not_import_the_loaders():
    """answers.py reads the answer type from the registry and its helpers from normalize.py; importing
    it never loads data/datasets.py (the loaders may import the scorer's helpers, not the other way)."""
    import ast
    import subprocess
    import sys

    tree = ast.parse(open(answers.__file__).read())
    imported = {(node.level, node.module) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    names = {a.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)) for a in node.names}
    assert (1, "datasets") not in imported and "datasets" not in names
    assert not any((mod or "").endswith("data.datasets") for _, mod in imported)
    code = ("import sys; import exgrpo_utils.data.answers; "
            "assert 'exgrpo_utils.data.datasets' not in sys.modules, 'answers imported the loaders'")
    subprocess.run([sys.executable, "-c", code], check=True)
