"""Typed EI records (teach.records) and the steps of stage 1 (teach.inversion), each on its own."""
import json
from pathlib import Path

import pytest

from exgrpo_utils.data.datasets import Example
from exgrpo_utils.models.cache import ChatResult, CompletionCache
from exgrpo_utils.models.chat import CachedBackend
from exgrpo_utils.teach import inversion, rules
from exgrpo_utils.teach.records import (
    ItemRecord,
    ItemStatus,
    ProbeDraft,
    ProbeEntry,
    ProbeStatus,
    item_stats,
    load_records,
    rule_stats,
)

ROOT = Path(__file__).resolve().parents[1]
RULES = rules.load_rules().subset(["why", "comparison", "hypothesis"])
COMMITTED = sorted((ROOT / "results" / "runs").glob("*/ei/*/ei_records.jsonl"))


# ---------------------------------------------------------------------------------------------
# Statuses: every stored text parses to its enum and back

@pytest.mark.parametrize("text, status, detail", [
    ("kept", ProbeStatus.KEPT, None),
    ("not applicable: rule not applicable to this item", ProbeStatus.NOT_APPLICABLE, "rule not applicable to this item"),
    ("malformed: no parseable answer", ProbeStatus.MALFORMED, "no parseable answer"),
    ("malformed: ", ProbeStatus.MALFORMED, ""),  # a draft without text and without a reason
    ("dropped: Eq. 1 (the probe derails the original question)", ProbeStatus.DROPPED_EQ1,
     "the probe derails the original question"),
])
def test_probe_status_round_trips(text, status, detail):
    assert ProbeStatus.parse(text) == (status, detail)
    assert status.text(detail) == text


@pytest.mark.parametrize("text, status, detail", [
    (None, ItemStatus.KEPT, None),
    ("teacher CoT is wrong", ItemStatus.TEACHER_WRONG, None),
    ("Eq. 2: no probe survived Eq. 1 (N' = 0)", ItemStatus.NO_CONSISTENT_PROBE, None),
    ("Eq. 2: too easy (Λ = N' = 10)", ItemStatus.TOO_EASY, "Λ = N' = 10"),
    ("Eq. 2: too easy (Λ = 4 > 3)", ItemStatus.TOO_EASY, "Λ = 4 > 3"),
    ("Eq. 2: too hard (Λ = 0 < 1)", ItemStatus.TOO_HARD, "Λ = 0 < 1"),
])
def test_item_status_round_trips(text, status, detail):
    assert ItemStatus.parse(text) == (status, detail)
    assert status.drop_reason(detail) == text


@pytest.mark.parametrize("text", ["kept ", "dropped", "malformed", "dropped: Eq. 2 (x)", ""])
def test_unknown_statuses_fail_with_the_text(text):
    with pytest.raises(ValueError, match="unknown probe status"):
        ProbeStatus.parse(text)
    with pytest.raises(ValueError, match="unknown drop reason"):
        ItemStatus.parse(text or "something else")


def test_a_draft_without_text_says_whether_the_rule_did_not_fit_or_the_reply_was_malformed():
    assert ProbeDraft.not_applicable("hypothesis", "rule not applicable to this item").failure is ProbeStatus.NOT_APPLICABLE
    assert ProbeDraft("why", None, "probe restates the original question").failure is ProbeStatus.MALFORMED
    assert ProbeDraft("why", None).failure is ProbeStatus.MALFORMED
    assert ProbeDraft("why", "Why is it 5?").failure is None



# ---------------------------------------------------------------------------------------------
# Records on disk: the committed runs load, and write back byte for byte

@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: f"{p.parts[-4]}/{p.parts[-2]}")
def test_committed_records_round_trip_byte_for_byte(path):
    recs = load_records(path)
    assert "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in recs) == path.read_text()
    dicts = [r.to_dict() for r in recs]
    assert item_stats(recs).equals(item_stats(dicts))
    ids = sorted({p.rule for r in recs for p in r.probes})
    assert rule_stats(recs, ids).equals(rule_stats(dicts, ids))
    assert all(r.n_consistent == sum(p.kept for p in r.probes) for r in recs)


def test_inconsistent_records_fail_naming_the_line(tmp_path):
    rec = ItemRecord.from_example(Example("a", "gsm8k", "q", "1")).decide(ItemStatus.TEACHER_WRONG).to_dict()
    bad = tmp_path / "ei_records.jsonl"
    bad.write_text(json.dumps(rec) + "\n" + json.dumps({**rec, "kept": True}) + "\n")
    with pytest.raises(ValueError, match=r"ei_records.jsonl:2: .*kept=True"):
        load_records(bad)
    bad.write_text(json.dumps({**rec, "probes": [{"rule": "why", "probe": "p", "status": "kept"}]}) + "\n")
    with pytest.raises(ValueError, match="n_consistent=0 but 1 kept probes"):
        load_records(bad)


def test_a_pending_entry_is_neither_kept_nor_dropped():
    entry = ProbeEntry("why", "Why?")
    assert entry.status is None and not entry.kept and entry.to_dict()["status"] is None
    assert ProbeEntry.from_dict(entry.to_dict()) == entry


# ---------------------------------------------------------------------------------------------
# The steps, list in, list out, with a hand-made teacher

class Teacher:
    """Right on 'Tom' items; writes a 'why' probe, an unanswerable 'comparison' one, none for 'hypothesis';
    its Eq. 1 recheck derails on probes that mention 'derail'."""

    def solve(self, items):
        return ["The answer is 5." if "Tom" in ex.question else "The answer is 6." for ex in items]

    def write_probes(self, items, cots, rule_list):
        made = {"why": ProbeDraft("why", "Why is the total 5?"), "comparison": ProbeDraft("comparison", "Compare them."),
                "hypothesis": ProbeDraft.not_applicable("hypothesis", "rule not applicable to this item")}
        return [[made[r.id] for r in rule_list] for _ in items]

    def answer_probes(self, drafts):
        return ["They differ." if d.rule == "comparison" else "2 + 3 = 5. The answer is 5." for d in drafts]

    def recheck(self, items, probes, responses):
        return ["The answer is 4." if "derail" in p else "The answer is 5." for p in probes]


def _records(*names):
    return [ItemRecord.from_example(Example(n, "gsm8k", f"{n} has 2 apples and gets 3 more. How many?", "5"))
            for n in names]


def test_solve_step_drops_wrong_teacher_cots_unless_told_not_to():
    recs = _records("Tom", "Ann")
    assert inversion.solve_step(recs, Teacher()) == recs[:1]
    assert recs[0].status is None and recs[1].status is ItemStatus.TEACHER_WRONG and not recs[1].kept
    both = _records("Tom", "Ann")
    assert inversion.solve_step(both, Teacher(), require_correct=False) == both and both[1].teacher_correct is False


def test_draft_step_returns_the_written_probes_and_marks_the_rest():
    recs = _records("Tom")
    pending = inversion.draft_step(recs, Teacher(), RULES)
    assert [p.entry.rule for p in pending] == ["why", "comparison"]
    assert [p.status for p in recs[0].probes] == [None, None, ProbeStatus.NOT_APPLICABLE]
    assert recs[0].probes[2].to_dict()["status"] == "not applicable: rule not applicable to this item"


def test_answer_and_consistency_steps():
    recs = _records("Tom")
    answered = inversion.answer_step(inversion.draft_step(recs, Teacher(), RULES), Teacher())
    assert [p.entry.rule for p in answered] == ["why"] and answered[0].entry.teacher_answer == "5"
    assert recs[0].probes[1].status is ProbeStatus.MALFORMED and recs[0].probes[1].detail == "no parseable answer"
    kept = inversion.consistency_step(answered, Teacher())
    assert kept == answered and recs[0].n_consistent == 1 and recs[0].probes[0].kept
    answered[0].entry.probe = "derail me"
    assert inversion.consistency_step(answered, Teacher()) == []
    assert recs[0].probes[0].status is ProbeStatus.DROPPED_EQ1 and recs[0].n_consistent == 0


class Student:
    def __init__(self, right, takes_progress=False):
        self.right, self.takes_progress, self.bars = right, takes_progress, []

    def complete(self, batch, sampling, **kwargs):
        assert set(kwargs) <= ({"progress"} if self.takes_progress else set())
        self.bars.append(kwargs.get("progress"))
        return [ChatResult("The answer is 5." if self.right else "The answer is 7.") for _ in batch]


@pytest.mark.parametrize("progress_bar", [False, True])
def test_student_step_scores_each_kept_probe(progress_bar):
    recs = _records("Tom")
    kept = inversion.consistency_step(inversion.answer_step(inversion.draft_step(recs, Teacher(), RULES), Teacher()),
                                      Teacher())
    student = Student(right=True, takes_progress=progress_bar)
    assert inversion.student_step(kept, student, RULES, max_new_tokens=8, progress_bar=progress_bar) == kept
    assert kept[0].entry.student_correct is True and kept[0].entry.student_response == "The answer is 5."
    assert (student.bars[0] is not None) is progress_bar
    assert inversion.student_step([], Student(right=True), RULES, max_new_tokens=8) == []


def _judged(n_consistent, n_right):
    rec = _records("Tom")[0]
    rec.probes = [ProbeEntry("r", "p", status=ProbeStatus.KEPT, student_correct=i < n_right) for i in range(n_consistent)]
    return rec


def test_difficulty_step_decides_every_record():
    recs = [_judged(3, 1), _judged(3, 3), _judged(0, 0), _judged(3, 0)]
    kept = inversion.difficulty_step(recs, judged=True, min_correct=1)
    assert kept == [recs[0]] and [r.n_student_correct for r in recs] == [1, 3, 0, 0]
    assert [r.status for r in recs] == [ItemStatus.KEPT, ItemStatus.TOO_EASY, ItemStatus.NO_CONSISTENT_PROBE,
                                        ItemStatus.TOO_HARD]
    assert recs[1].drop_reason == "Eq. 2: too easy (Λ = N' = 3)"
    unjudged = [_judged(3, 3), _judged(0, 0)]
    assert inversion.difficulty_step(unjudged, judged=False) == unjudged[:1]
    assert unjudged[0].n_student_correct is None and unjudged[1].status is ItemStatus.NO_CONSISTENT_PROBE


class StudentBackend(Student):
    """A plain chat backend: results through ``on_result``, as ``CachedBackend`` expects."""

    kind, model = "scripted", "s"

    def complete(self, batch, sampling, on_result=None):
        out = super().complete(batch, sampling)
        for j, res in enumerate(out):
            on_result(j, res)
        return out


def test_student_progress_goes_through_a_cached_backend(tmp_path):
    """run_ei's student: a CachedBackend, whose complete() reports to the bar ``student_progress`` asks for."""
    student = CachedBackend(StudentBackend(right=False), CompletionCache(tmp_path / "c.sqlite"))
    items = [r.example for r in _records("Tom", "Ann")]
    res = inversion.run_pipeline(items, Teacher(), RULES, student=student, student_progress=True)
    tom, ann = (ItemRecord.from_dict(r) for r in res["records"])
    assert tom.kept and tom.n_student_correct == 0 and tom.probes[0].student_response == "The answer is 7."
    assert ann.status is ItemStatus.TEACHER_WRONG and res["dataset"] == [tom.training_view()]
