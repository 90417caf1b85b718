"""The baselines' teacher checks (RevThink consistency, correctness filters) and Divide-or-Conquer, by hand."""

from exgrpo_utils.data import prompts, synthetic
from exgrpo_utils.data.example import Example
from exgrpo_utils.experiments import baselines as bl
from exgrpo_utils.experiments import methods, runs
from exgrpo_utils.infra.layout import RunLayout
from exgrpo_utils.models.cache import ChatResult
from exgrpo_utils.report import paper_layout, paper_tables
from exgrpo_utils.teach import baseline_checks as checks
from exgrpo_utils.teach import baseline_data as bd

TOM = Example("ok", "gsm8k", "Tom has 2 apples and gets 3 more. How many apples does Tom have now?", "5")
ANN = Example("bad", "gsm8k", "Ann has 4 pears and gives away 1. How many pears does Ann have now?", "3")


def _program_item() -> Example:
    p = synthetic.Program("Tom", "apples", 5, (("add", 3), ("mul", 2)))  # 5 + 3 = 8, 8 * 2 = 16
    return Example("arith-train-x", "arith", synthetic.forward_text(p), "16", rationale=synthetic.forward_rationale(p),
                   meta=p.meta("forward"))


class ScriptedTeacher:
    """Right and consistent on every call about Tom; wrong or inconsistent on every call about Ann."""

    kind, model = "scripted", "t"

    def __init__(self):
        self.requests: list[str] = []

    def reply(self, text: str, sampled: bool) -> str:
        tom = "Tom" in text
        if text.startswith("Rephrase"):
            return ("Question: Tom owns 2 apples and receives 3 more. How many apples does he own?" if tom
                    else "Question: Ann owns 4 pears and hands 1 away. How many pears are left?")
        if text.startswith("Here is a question and its answer. Write one new question"):
            return ("Question: Lia has 6 cards and gets 4 more. How many cards does Lia have?" if tom
                    else "Question: Bo has 9 shells and gives away 2. How many shells does Bo have?")
        if text.startswith("Here is a question and its answer. Write the backward question"):
            return ("Backward question: Tom has some apples and gets 3 more. Now he has 5 apples. How many apples did he "
                    "have at first?\nAnswer: 2" if tom else
                    "Backward question: Ann has some pears and gives away 1. Now she has 3 pears. How many pears did she "
                    "have at first?\nAnswer: 4")
        if text.startswith("Break the following question"):
            return ("1. How many apples does Tom start with?\n2. How many apples does Tom have after getting 3 more?" if tom
                    else "1. How many pears does Ann start with?\n2. How many pears are left after giving 1 away?")
        if "\n\nSub-questions:\n" in text:
            return ("1. Tom starts with 2 apples.\n2. 2 + 3 = 5.\nThe answer is 5." if tom
                    else "1. Ann starts with 4 pears.\n2. 4 - 1 = 2.\nThe answer is 2.")  # wrong: 3
        # CoTs, asked with the evaluation prompt
        cots = {"Tom owns": "2 + 3 = 5. The answer is 5.", "Ann owns": "4 - 1 = 2. The answer is 2.",  # Ann's is wrong
                "Lia has": "6 + 4 = 10. The answer is 10.",
                "Bo has": "The answer is 6." if sampled else "9 - 2 = 7. The answer is 7.",  # the two solutions disagree
                "Tom has some": "5 - 3 = 2. The answer is 2.", "Ann has some": "3 + 1 = 5. The answer is 5.",  # asked for 4
                "Tom has 2": "3 + 2 = 5. The answer is 5.", "Ann has 4": "4 - 1 = 5. The answer is 5."}
        return next(reply for start, reply in cots.items() if text.startswith(start))

    def complete(self, batch, sampling, on_result=None):
        self.requests += [msgs[-1]["content"] for msgs in batch]
        return [ChatResult(self.reply(msgs[-1]["content"], sampling.temperature > 0)) for msgs in batch]


def _llm_records(tmp_path):
    chat = ScriptedTeacher()
    recs = bd.build_baseline_data([TOM, ANN], ["2 + 3 = 5. The answer is 5.", "4 - 1 = 3. The answer is 3."],
                                  bd.LLMAugmenter(chat), tmp_path / "bl.jsonl")
    return chat, recs


# ---------------------------------------------------------------------------------------------
# RevThink

def test_revthink_backward_question_row_is_trained_from_the_question_only(tmp_path):
    assert "{answer}" not in bl.BACKWARD_TASK
    ex = _program_item()
    recs = bd.build_baseline_data([ex], [ex.rationale], bd.ProgramAugmenter(), tmp_path / "bl.jsonl")
    rows = bl.baseline_rows(recs, "revthink")
    assert [r["source"] for r in rows] == ["original", "backward_question", "backward_reasoning"]
    question_row = rows[1]
    assert question_row["prompt"] == [{"role": "user", "content": bl.BACKWARD_TASK.format(question=ex.question)}]
    assert "16" not in question_row["prompt"][0]["content"]  # the answer is not given (16 is not in the question)
    assert question_row["completion"][0]["content"] == (
        "Tom had some apples. Then he got 3 more apples. Then the number of apples he had became 2 times as large. "
        "Now he has 16 apples. How many apples did Tom have at the start?")
    assert rows[2]["prompt"][0]["content"].startswith(question_row["completion"][0]["content"])
    assert rows[2]["completion"][0]["content"] == ("Undo the steps from the end, starting at 16.\n16 / 2 = 8.\n8 - 3 = 5.\n"
                                                   "The answer is 5.")
    assert recs[0]["backward"]["answer"] == "5" and recs[0]["dropped"] == {}


def test_backward_consistency_keeps_a_consistent_and_drops_an_inconsistent_teacher_output():
    q = "Tom has some apples and gets 3 more. Now he has 5 apples. How many apples did he have at first?"
    consistent = {"question": q, "answer": "2", "cot": "5 - 3 = 2. The answer is 2."}
    assert checks.backward_consistency(TOM, consistent) is None
    assert checks.backward_consistency(TOM, {**consistent, "cot": "5 + 3 = 8. The answer is 8."}) == checks.BACKWARD_MISMATCH
    assert checks.backward_consistency(TOM, {**consistent, "answer": None}) == checks.NO_VALUE
    assert checks.backward_consistency(TOM, {**consistent, "question": TOM.question}) == checks.RESTATED
    no_answer = "Tom has some apples and gets 3 more. How many apples did he have at first?"  # 5 is not stated
    assert checks.backward_consistency(TOM, {**consistent, "question": no_answer}) == checks.ANSWER_NOT_STATED
    # consistent with itself, but 4 is not a fact the original question gives
    assert checks.backward_consistency(TOM, {**consistent, "answer": "4", "cot": "The answer is 4."}) == checks.VALUE_NOT_GIVEN
    assert checks.backward_consistency(TOM, None) == checks.EMPTY


def test_parse_backward_reads_the_question_and_the_asked_for_value():
    reply = "Backward question: Now he has 5. How many at first?\nAnswer: 2."
    assert bd.parse_backward(reply) == ("Now he has 5. How many at first?", "2")
    assert bd.parse_backward("Backward question: How many at first?") == ("How many at first?", None)
    assert bd.parse_backward("How many at first?") == (None, None)


def test_revthink_through_a_fake_teacher_keeps_only_consistent_backward_questions(tmp_path):
    _, (tom, ann) = _llm_records(tmp_path)
    assert tom["backward"]["answer"] == "2" and tom["backward"]["answer_type"] == "number"
    assert ann["backward"] is None and ann["dropped"]["backward"] == checks.BACKWARD_MISMATCH  # teacher said 5, asked for 4
    rows = bl.baseline_rows([tom, ann], "revthink")
    assert [(r["question_id"], r["source"]) for r in rows] == [("ok", "original"), ("ok", "backward_question"),
                                                              ("ok", "backward_reasoning"), ("bad", "original")]
    assert rows[1]["prompt"][0]["content"] == bl.BACKWARD_TASK.format(question=TOM.question)


# ---------------------------------------------------------------------------------------------
# Correctness filters on LLM-teacher data

def test_new_question_check():
    new = {"question": "Lia has 6 cards and gets 4 more. How many cards does Lia have?", "cot": "6 + 4 = 10. The answer is 10."}
    assert checks.new_question_check(TOM, {**new, "answer": "10"}) == ("10", None)  # exact answer (program teacher)
    assert checks.new_question_check(TOM, {**new, "answer": "11"}) == (None, checks.WRONG)
    assert checks.new_question_check(TOM, {**new, "cot2": "4 + 6 = 10, so 10."}) == ("10", None)  # two solutions agree
    assert checks.new_question_check(TOM, {**new, "cot2": "The answer is 9."}) == (None, checks.DISAGREE)
    assert checks.new_question_check(TOM, {**new, "cot": "It is 10.", "cot2": "10"}) == (None, checks.NO_FORMAT_ANSWER)
    assert checks.new_question_check(TOM, {**new, "question": TOM.question, "cot2": new["cot"]}) == (None, checks.RESTATED)

    # a multiple-choice item with six options: a new question answered (F) is in format (letters up to F)
    date = Example("d1", "date_understanding", "Which date? (A) a (B) b (C) c (D) d (E) e (F) f", "F",
                   choices=("a", "b", "c", "d", "e", "f"))
    mc = {"question": "Which day? (A) 1 (B) 2 (C) 3 (D) 4 (E) 5 (F) 6", "cot": "So it is 6. The answer is (F).",
          "cot2": "The answer is (F)."}
    assert checks.new_question_check(date, mc) == ("F", None)


def test_wrong_teacher_cots_are_dropped_and_counted(tmp_path):
    chat, (tom, ann) = _llm_records(tmp_path)
    assert tom["dropped"] == {}
    assert tom["rephrased"]["cot"] == "2 + 3 = 5. The answer is 5." and tom["alt_cot"] == "3 + 2 = 5. The answer is 5."
    assert tom["new_question"]["answer"] == "10"
    assert ann["dropped"] == {"rephrased": checks.WRONG, "new_question": checks.DISAGREE, "alt_cot": checks.WRONG,
                              "backward": checks.BACKWARD_MISMATCH, "decomposition": checks.WRONG}
    assert all(ann[f] is None for f in bl.AUGMENTATION.values())
    assert [r["source"] for r in bl.baseline_rows([tom, ann], "answer_aug")] == ["original", "alt_cot", "original"]
    stats = bl.data_stats([tom, ann]).set_index("baseline")
    assert (stats.loc["question_aug", "kept"], stats.loc["question_aug", "dropped"]) == (1, 1)
    assert stats.loc["question_aug", "drop_reasons"] == f"{checks.DISAGREE}: 1"
    assert stats.loc["rephrase", "rows"] == 3 and stats.loc["answer_aug", "drop_reasons"] == f"{checks.WRONG}: 1"
    assert stats.loc["skd", "dropped"] == 0 and stats.loc["skd", "augmentation"] == ""
    assert len(chat.requests) == 2 * 10  # 4 teacher prompts + 6 solutions per item


def test_llm_augmenter_skips_calls_without_input(tmp_path):
    class Silent(ScriptedTeacher):
        def reply(self, text, sampled):
            return "" if text.startswith(("Rephrase", "Break the following")) else super().reply(text, sampled)

    chat = Silent()
    rec = bd.build_baseline_data([TOM], ["The answer is 5."], bd.LLMAugmenter(chat), tmp_path / "bl.jsonl")[0]
    assert rec["dropped"] == {"rephrased": checks.EMPTY, "decomposition": checks.EMPTY}
    assert len(chat.requests) == 10 - 2  # no CoT for the missing rephrasing, no solve for the missing decomposition


# ---------------------------------------------------------------------------------------------
# Divide-or-Conquer

def test_divide_conquer_on_a_small_program_is_exact(tmp_path):
    ex = _program_item()
    dec = bd.ProgramAugmenter().decompose(ex)
    assert dec["subquestions"] == ["How many apples does Tom have after getting 3 more?",
                                   "How many apples does Tom have after the number becomes 2 times as large?"]
    assert dec["answers"] == ["8", "16"]
    assert dec["solution"] == "1. 5 + 3 = 8.\n2. 8 * 2 = 16.\nThe answer is 16."
    recs = bd.build_baseline_data([ex], [ex.rationale], bd.ProgramAugmenter(), tmp_path / "bl.jsonl")
    rows = bl.baseline_rows(recs, "divide_conquer")
    assert len(rows) == 1 and rows[0]["source"] == "decomposition"
    assert rows[0]["prompt"] == prompts.messages_for(ex)  # the evaluation prompt: the student decomposes at test time
    assert rows[0]["completion"][0]["content"] == (
        "Sub-questions:\n1. How many apples does Tom have after getting 3 more?\n"
        "2. How many apples does Tom have after the number becomes 2 times as large?\n\n"
        "Answers:\n1. 5 + 3 = 8.\n2. 8 * 2 = 16.\nThe answer is 16.")


def test_divide_conquer_through_a_fake_chat(tmp_path):
    chat, (tom, ann) = _llm_records(tmp_path)
    assert tom["decomposition"] == {"subquestions": ["How many apples does Tom start with?",
                                                     "How many apples does Tom have after getting 3 more?"],
                                    "solution": "1. Tom starts with 2 apples.\n2. 2 + 3 = 5.\nThe answer is 5.",
                                    "answers": ["Tom starts with 2 apples.", "2 + 3 = 5."]}
    solve = next(r for r in chat.requests if "\n\nSub-questions:\n" in r and "Tom" in r)
    assert solve == bd.solve_prompt(TOM, tom["decomposition"]["subquestions"])
    assert ann["decomposition"] is None and ann["dropped"]["decomposition"] == checks.WRONG  # final answer 2, gold 3
    rows = bl.baseline_rows([tom, ann], "divide_conquer")
    assert [r["source"] for r in rows] == ["decomposition", "original"]  # the dropped item falls back to its CoT
    assert rows[0]["completion"][0]["content"] == bl.decomposition_target(tom["decomposition"])
    assert rows[1]["completion"][0]["content"] == "4 - 1 = 3. The answer is 3."
    assert [r["source"] for r in bl.baseline_rows([tom, ann], "divide_conquer", fallback_original=False)] == ["decomposition"]


def test_decomposition_check_needs_every_sub_question_answered():
    dec = {"subquestions": ["a?", "b?"], "solution": "1. 2 apples.\nThe answer is 5."}
    assert checks.decomposition_check(TOM, dec) == checks.UNANSWERED
    assert checks.decomposition_check(TOM, {**dec, "solution": "1. 2 apples.\n2. 2 + 3 = 5.\nThe answer is 5."}) is None
    assert bd.parse_subquestions("Sure:\n1. a?\n2) b?\n4. d?") == ["a?", "b?"]
    assert bd.parse_subquestions("no list") is None


def test_divide_conquer_is_a_registered_baseline():
    assert "divide_conquer" in bl.BASELINES and bl.LABELS["divide_conquer"] == "Divide-or-Conquer"
    m = methods.METHODS["divide-conquer"]
    assert (m.label, m.kind, m.data) == ("Divide-or-Conquer", "sft", "divide_conquer")
    assert "divide-conquer" in methods.GROUPS["baselines"] and "divide-conquer" in paper_tables.TABLE_ROWS["table2"]
    df = runs.collect(RunLayout.of("empty", "/nonexistent"))  # no records: every column, no row
    t2 = paper_tables.build_table("table2", df, paper_layout.paper_results()).set_index("method")
    row = t2.loc["Divide-or-Conquer"]
    assert row["note"] == "not run in these results"
    assert row["paper: Qwen2.5-7B-Instruct (ood-avg4)"] == row["paper: Gemma-7B-it (ood-avg4)"] == "–"  # no reported number
