import re

import pytest

from exgrpo_utils.data import datasets as data
from exgrpo_utils.data import synthetic
from exgrpo_utils.data.datasets import Example
from exgrpo_utils.models.cache import ChatResult
from exgrpo_utils.teach import inversion as probes
from exgrpo_utils.teach import program_teacher, rules, teachers
from exgrpo_utils.teach.records import ItemRecord, ItemStatus, ProbeStatus

RULES = rules.load_rules()


def test_the_ten_rules_load_with_their_sources():
    assert [r.number for r in RULES.rules] == list(range(1, 11))
    assert [r.source for r in RULES.rules] == ["paper"] * 6 + ["kit default"] * 4
    assert {r.id for r in RULES.rules} == set(program_teacher.PROBE_MAKERS)
    prompt = RULES.probe_prompt(RULES.by_id("counterfactual"), question="Q?", answer="3", reasoning="R")
    assert "Rule: Counterfactual." in prompt and "Original question:\nQ?" in prompt and "Probe:" in prompt


def test_bad_rules_files_name_the_field(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("preamble: p\nrules:\n  - id: a\n    name: A\n    description: d\ntemplates: {}\n")
    with pytest.raises(ValueError, match=r"r.yaml: rules\[0\]: missing field 'example'"):
        rules.load_rules(bad)
    bad.write_text("preamble: p\nrules: []\ntemplates: {probe: x, answer: y}\n")
    with pytest.raises(ValueError, match="templates.answer_instruction is missing"):
        rules.load_rules(bad)


# ---------------------------------------------------------------------------------------------
# Equations 1 and 2 on hand-made cases

def test_eq1_consistency_keeps_only_probes_that_leave_the_answer_right():
    item = Example("g", "gsm8k", "q", "18")
    assert probes.consistency_keep(item, "Given that, the answer is 18.")
    assert not probes.consistency_keep(item, "Given that, the answer is 17.")
    assert not probes.consistency_keep(item, "I cannot tell.")


@pytest.mark.parametrize("n, lam, lo, hi, keep", [
    (0, 0, 0, None, False),  # N' = 0
    (5, 5, 0, None, False),  # too easy: Λ = N'
    (5, 4, 0, None, True),
    (5, 0, 0, None, True),
    (1, 0, 0, None, True),
    (1, 1, 0, None, False),
    (5, 3, 0, 2, False),  # explicit upper bound (τ_hard read as "drop when Λ > τ")
    (5, 1, 2, None, False),  # explicit lower bound (τ_hard read as "keep only when Λ >= τ")
    (5, 2, 2, None, True),
])
def test_eq2_difficulty_filter(n, lam, lo, hi, keep):
    assert probes.difficulty_keep(n, lam, min_correct=lo, max_correct=hi)[0] is keep


# ---------------------------------------------------------------------------------------------
# Program teacher: every answer recomputed independently from the probe text and the program

def _recompute(meta: dict, rule: str, text: str) -> str:
    prog = [(s["op"], s["operand"]) for s in meta["steps"]]
    values = synthetic.run_program(meta["start"], prog)
    step = lambda: int(re.search(r"step (\d+)", text).group(1))
    if rule == "why":  # the operation of the named step
        return {"add": "add", "sub": "subtract", "mul": "multiply", "div": "divide"}[prog[step() - 1][0]]
    if rule == "cause_effect":  # the signed change of the named step
        k = step()
        return str(values[k] - values[k - 1])
    if rule == "explanatory_challenge":  # the operand the named step really uses
        return str(prog[step() - 1][1])
    if rule == "process":
        return str(values[-2])
    if rule == "counterfactual":
        new_start = int(re.search(r"had started with (\d+)", text).group(1))
        return str(synthetic.run_program(new_start, prog)[-1])
    if rule == "comparison":
        return str(values[-1] - values[0])
    if rule == "hypothesis":
        threshold = int(re.search(r"more than (\d+)", text).group(1))
        return "yes" if values[-1] > threshold else "no"
    if rule == "decomposition":  # the named (last) step applied to the start on its own
        op, n = prog[step() - 1]
        assert step() == len(prog)
        return str(synthetic.apply_op(op, values[0], n))
    if rule == "inversion":  # undo the steps from the stated result
        value = int(re.search(r"Now \w+ has (\d+)", text).group(1))
        for op, n in reversed(prog):
            value = synthetic.apply_op(synthetic.INVERSE[op], value, n)
        return str(value)
    if rule == "causal_verification":
        claimed = int(re.search(r"has (\d+) \w+ right after step", text).group(1))
        return "yes" if claimed == values[step()] else "no"
    raise AssertionError(rule)


def test_program_teacher_answers_verified_by_recomputation():
    items = data.load("arith", "train", synthetic_options={"n_train": 400, "max_steps": 4})
    teacher = teachers.ProgramTeacher()
    drafts = teacher.write_probes(items, teacher.solve(items), RULES.rules)
    checked = 0
    for ex, item_drafts in zip(items, drafts):
        for d in item_drafts:
            if d.text is None:
                # a perturbed start (or the last step on its own) can fail to divide; process,
                # decomposition and causal verification need an intermediate step
                assert d.rule in ("counterfactual", "process", "decomposition", "causal_verification") and d.reason
                assert d.failure is ProbeStatus.NOT_APPLICABLE
                continue
            assert d.gold == _recompute(ex.meta, d.rule, d.text), (d.rule, d.text)
            checked += 1
        responses = teacher.answer_probes([d for d in item_drafts if d.text])
        assert all(r.endswith(f"The answer is {d.gold}.") for r, d in zip(responses, [d for d in item_drafts if d.text]))
    assert checked >= 0.85 * 400 * 10
    yes_no = [d.gold for ds in drafts for d in ds if d.rule in ("hypothesis", "causal_verification")]
    assert 0.25 < yes_no.count("yes") / len(yes_no) < 0.75  # both answers occur


def test_program_teacher_rules_ask_distinct_things_and_none_the_final_count():
    """Rules that ask for a count ask for an intermediate one (never the last step's), each rule a
    different quantity; only inversion states the original answer by construction."""
    items = data.load("arith", "train", synthetic_options={"n_train": 300})
    teacher = teachers.ProgramTeacher()
    drafts = teacher.write_probes(items, teacher.solve(items), RULES.rules)
    revealing = {r: 0 for r in RULES.ids}
    for ex, item_drafts in zip(items, drafts):
        n_steps = len(ex.meta["steps"])
        by_rule = {d.rule: d for d in item_drafts if d.text}
        assert by_rule["why"].gold in ("add", "subtract", "multiply", "divide")
        if "causal_verification" in by_rule:
            assert int(re.search(r"right after step (\d+)", by_rule["causal_verification"].text).group(1)) < n_steps
        for rule in ("process", "decomposition", "causal_verification"):  # about an intermediate step
            assert (rule in by_rule) <= (n_steps >= 2)
        for d in item_drafts:
            if d.text:
                revealing[d.rule] += probes.reveals_answer(ex, d.text)
    assert revealing["inversion"] >= 0.9 * len(items)
    assert all(n <= 0.1 * len(items) for r, n in revealing.items() if r != "inversion"), revealing  # coincidences only


def test_no_program_probe_is_built_on_a_test_program():
    items = data.load("arith", "train", synthetic_options={"n_train": 2000})
    test_sigs = {synthetic.Program(e.meta["name"], e.meta["item"], e.meta["start"],
                                   tuple((s["op"], s["operand"]) for s in e.meta["steps"])).signature()
                 for e in data.load("arith", "test", synthetic_options={"n_test": 300})}
    teacher = teachers.ProgramTeacher()
    built = 0
    for ex, (d,) in zip(items, teacher.write_probes(items, teacher.solve(items), [RULES.by_id("counterfactual")])):
        if d.text:
            new_start = int(re.search(r"had started with (\d+)", d.text).group(1))
            steps = tuple((s["op"], s["operand"]) for s in ex.meta["steps"])
            assert synthetic.Program("x", "y", new_start, steps).signature() not in test_sigs
            built += 1
    assert built > 1900


@pytest.mark.parametrize("question, answer, choices, probe, reveals", [
    ("Ravi has 20 books. He gets 4 more. How many now?", "24", (), "Why does Ravi end up with 24 books?", True),
    ("Ravi has 20 books. He gets 4 more. How many now?", "24", (), "What does step 1 add to the 20 books?", False),
    ("Ravi has 20 books. He gets 4 more. How many now?", "24", (), "Would he have 24.0 books?", True),  # same number
    ("Ravi has 24 books. He gives away 0. How many now?", "24", (), "Ravi has 24 books. Why does he keep them?", False),  # Q's own sentence
    ("Ravi has 24 books. He gives away 0. How many now?", "24", (), "He has 24 books. Why?", True),  # stated anew (conservative)
    ("Zoe has 14 cards. She gets 14 more. She keeps half. How many now?", "14", (),
     "Zoe had some cards. She got 14 more. She kept half. Now she has 14 cards. How many at the start?", True),
    ("Ravi has 20 books. He gets 4 more. How many now?", "24", (), "Is 124 or 240 more than 2?", False),
    ("Where do you keep a book?\n(A) shelf\n(B) oven", "A", ("shelf", "oven"), "Why is a shelf a place for books?", True),
    ("Where do you keep a book?\n(A) shelf\n(B) oven", "A", ("shelf", "oven"), "Why is (A) right?", True),
    ("Where do you keep a book?\n(A) shelf\n(B) oven", "A", ("shelf", "oven"), "Where do people read?", False),
    ("Is the sky blue?", "yes", (), "Yes or no: why is the sky blue?", False),  # a yes/no answer cannot be located
])
def test_reveals_answer_on_hand_made_cases(question, answer, choices, probe, reveals):
    dataset = "csqa" if choices else ("strategyqa" if answer == "yes" else "gsm8k")
    assert probes.reveals_answer(Example("q", dataset, question, answer, choices=choices), probe) is reveals


def test_program_teacher_refuses_items_without_a_program():
    with pytest.raises(ValueError, match="step program"):
        teachers.ProgramTeacher().solve([Example("g", "gsm8k", "q", "1")])


# ---------------------------------------------------------------------------------------------
# The pipeline with an LLM teacher over a scripted chat backend

class ScriptedChat:
    """Teacher: right CoT except for item 'bad'; probe replies by rule; answers; Eq. 1 rechecks."""

    kind, model = "scripted", "t"

    def __init__(self):
        self.calls = 0

    def complete(self, batch, sampling, on_result=None):
        out = []
        for msgs in batch:
            self.calls += 1
            text = msgs[-1]["content"]
            if "Rule: Why question" in text:
                reply = "Probe: Why is the total 5?"
            elif "Rule: Counterfactual" in text:
                reply = "Probe: " + re.search(r"Original question:\n(.*?)\n\nCorrect", text, re.S).group(1)  # restated
            elif "Rule: Comparison" in text:
                reply = "Probe: Compare the two numbers."
            elif "Rule:" in text:
                reply = ""
            elif text.startswith("Why is the total 5?"):
                reply = "Because 2 + 3 = 5. The answer is 5."
            elif text.startswith("Compare the two numbers."):
                reply = "They differ."  # no parseable answer
            elif len(msgs) > 1:  # Eq. 1 recheck: the original question after the probe
                reply = "The answer is 5." if "derail" not in msgs[0]["content"] else "The answer is 4."
            else:  # CoT
                reply = "2 + 3 = 5. The answer is 5." if "Tom" in text else "The answer is 6."
            out.append(ChatResult(reply))
        return out


class ScriptedStudent:
    kind, model = "scripted", "s"

    def __init__(self, right: bool):
        self.right = right

    def complete(self, batch, sampling, on_result=None):
        return [ChatResult("The answer is 5." if self.right else "The answer is 7.") for _ in batch]


def _items():
    return [Example("ok", "gsm8k", "Tom has 2 apples and gets 3 more. How many?", "5"),
            Example("bad", "gsm8k", "Ann has 2 pears and gets 3 more. How many?", "5")]


def test_pipeline_counts_every_drop_with_a_reason_and_the_statistics_add_up(tmp_path):
    rule_set = RULES.subset(["why", "counterfactual", "comparison", "hypothesis"])
    teacher = teachers.LLMTeacher(ScriptedChat(), rule_set)
    res = probes.run_pipeline(_items(), teacher, rule_set, student=ScriptedStudent(right=False), out_dir=tmp_path)
    ok, bad = res["records"]
    assert bad["drop_reason"] == "teacher CoT is wrong" and bad["probes"] == []
    status = {p["rule"]: p["status"] for p in ok["probes"]}
    assert status == {"why": "kept", "counterfactual": "malformed: probe restates the original question",
                      "comparison": "malformed: no parseable answer", "hypothesis": "malformed: empty probe"}
    assert ok["kept"] and ok["n_consistent"] == 1 and ok["n_student_correct"] == 0
    items = res["stats_items"].iloc[0]
    assert (items.items_in, items.teacher_correct, items.probes_attempted, items.probes_generated,
            items.probes_answered, items.probes_kept_eq1, items.items_kept_eq2) == (2, 1, 4, 2, 1, 1, 1)
    rs = res["stats_rules"]
    assert (rs.attempted == rs.not_applicable + rs.malformed + rs.failed_eq1 + rs.kept_eq1).all()
    assert res["dataset"][0]["probes"][0]["teacher_answer"] == "5"
    loaded = probes.load_probe_dataset(tmp_path / "probe_dataset.jsonl")
    assert loaded == res["dataset"]
    hf = probes.load_probe_dataset(tmp_path / "probe_dataset.jsonl", as_hf=True)
    assert hf.num_rows == 1 and hf[0]["rule"] == "why" and hf[0]["answer"] == "5"


def test_pipeline_eq2_drops_questions_the_student_already_masters(tmp_path):
    rule_set = RULES.subset(["why"])
    teacher = teachers.LLMTeacher(ScriptedChat(), rule_set)
    res = probes.run_pipeline(_items()[:1], teacher, rule_set, student=ScriptedStudent(right=True))
    rec = res["records"][0]
    assert not rec["kept"] and res["dataset"] == []
    assert ItemRecord.from_dict(rec).status is ItemStatus.TOO_EASY


def test_pipeline_eq1_drops_derailing_probes():
    rule_set = RULES.subset(["why"])
    derailing = rules.RuleSet(rule_set.version, rule_set.preamble, rule_set.rules,
                              dict(rule_set.templates, answer="derail {probe}\n{answer_instruction}"), rule_set.path)

    class Chat(ScriptedChat):
        def complete(self, batch, sampling, on_result=None):
            fixed = [[{**m, "content": m["content"].removeprefix("derail ")} if i == 0 and len(msgs) == 1 else m
                      for i, m in enumerate(msgs)] for msgs in batch]
            return super().complete(fixed, sampling)

    res = probes.run_pipeline(_items()[:1], teachers.LLMTeacher(Chat(), derailing), derailing, student=None)
    rec = ItemRecord.from_dict(res["records"][0])
    assert rec.probes[0].status is ProbeStatus.DROPPED_EQ1
    assert rec.status is ItemStatus.NO_CONSISTENT_PROBE


def test_program_pipeline_on_arith_end_to_end(tmp_path):
    items = data.load("arith", "train", limit=20)
    res = probes.run_pipeline(items, teachers.ProgramTeacher(), RULES, student=ScriptedStudent(right=False),
                              out_dir=tmp_path)
    stats = res["stats_items"].iloc[0]
    assert stats.items_in == stats.teacher_correct == stats.items_kept_eq2 == 20
    assert stats.probes_kept_eq1 == stats.probes_generated >= 150  # the exact teacher keeps every probe it writes
    for name in ("ei_records.jsonl", "probe_dataset.jsonl", "stats_items.csv", "stats_rules.csv", "ei_summary.json"):
        assert (tmp_path / name).exists()


def test_the_teachers_solution_and_its_probe_answers_share_one_step_style():
    """The original question's solution is written as the probe answers are ("Step k: <sentence>
    a + b = c."), so no trained model picks up from the probes a style the questions never show."""
    step = re.compile(r"Step \d+: [A-Z][^.]*\. -?\d+ [-+*/] \d+ = -?\d+\.")
    items = data.load("arith", "train", limit=20)
    teacher = teachers.ProgramTeacher()
    for ex, cot in zip(items, teacher.solve(items)):
        lines = cot.splitlines()
        assert [bool(step.fullmatch(line)) for line in lines[1:-1]] == [True] * len(ex.meta["steps"])
        assert lines[-1] == f"The answer is {ex.answer}."
        drafts = [d for d in teacher.write_probes([ex], [cot], RULES.rules)[0] if d.text]
        probe_steps = [line for a in teacher.answer_probes(drafts) for line in a.splitlines() if re.match(r"Step \d+:", line)]
        assert probe_steps and all(step.fullmatch(line) for line in probe_steps)


def test_an_answer_that_is_also_one_of_the_questions_numbers_is_still_caught():
    """arith-train-47: the answer 14 is also the question's start; the inversion probe states it anew
    ("Now she has 14 cards") and holds 14 as often as the question does, so counting alone misses it:
    the text test finds the new statement, and the program teacher's own flag says so as well."""
    items = [ex for ex in data.load("arith", "train", limit=400) if ex.answer in {str(ex.meta["start"])} |
             {str(s["operand"]) for s in ex.meta["steps"]}]
    assert items  # answers that are also numbers of their question exist in the training set
    rule_set = rules.load_rules()
    result = probes.run_pipeline(items[:5], teachers.ProgramTeacher(), rule_set)
    for rec in result["records"]:
        inversion = next(p for p in rec["probes"] if p["rule"] == "inversion")
        if inversion["probe"]:
            assert inversion["reveals_answer"], inversion["probe"]
            assert probes.reveals_answer(Example.from_dict(rec["item"]), inversion["probe"]), inversion["probe"]
