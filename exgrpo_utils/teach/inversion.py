"""Stage 1 of the method (method.md section 2): Explanatory Inversion and its two filters.

    teacher CoT on each item   -> keep items the teacher gets right (kit default, RevThink practice)
    one probe per rule          -> Q_i = f_i(Q, A, R_T)
    teacher answers each probe  -> (R_i, A_i); no parseable answer = malformed, dropped with a reason
    Eq. 1 consistency filter    -> keep Q_i if, with (Q_i, R_i, A_i) as context, the teacher still
                                   answers Q correctly
    Eq. 2 difficulty filter     -> the untrained student answers the N' kept probes; Λ = # correct;
                                   drop Q when N' = 0 or Λ = N' (too easy), and when Λ is outside
                                   the optional bounds [min_correct, max_correct]

Eq. 2's transcriptions are ambiguous about a threshold τ_hard (drop when Λ >= τ_hard, or keep only
when Λ >= τ_hard). The kit exposes both bounds as settings that only tighten the rule the paper
states plainly (drop the too-easy questions, Λ = N'); by default neither is set. Settings:
``settings.EISettings`` (and ``TeacherSettings`` for the teacher).

``run_pipeline`` runs these as steps, list in, list out (``solve_step``, ``draft_step``,
``answer_step``, ``consistency_step``, ``student_step``, ``difficulty_step``), over typed records
(``records.ItemRecord``, ``records.ProbeEntry``) whose fates are enums (``records.ItemStatus``,
``records.ProbeStatus``); the JSON written is unchanged. Every teacher and student call goes through
the persistent completion cache, so a rerun after an interruption pays only for what is missing; the
outputs are written atomically at the end.
"""
from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..data import answers
from ..data.datasets import DATASETS, load
from ..data.example import LETTERS, Example
from ..infra.files import atomic_write_json, atomic_write_text, iter_jsonl
from ..infra.fingerprint import digest, file_digest
from ..infra.paths import cache_dir, portable
from ..infra.progress import progress
from ..models.cache import CompletionCache
from ..models.chat import CachedBackend, transformers_backend
from ..models.generation import SamplingConfig
from ..models.registry import model_identity
from .records import (
    EQ1_DETAIL,
    NO_ANSWER,
    ItemRecord,
    ItemStatus,
    ProbeDraft,
    ProbeEntry,
    ProbeStatus,
    item_stats,
    probe_dataset,
    rule_stats,
)
from .rules import RuleSet, load_rules
from .settings import EISettings, TeacherSettings
from .teachers import endpoint, teacher_session

# Hugging Face datasets is imported inside load_probe_dataset, only for as_hf=True (heavy).


@dataclass
class PendingProbe:
    """A written probe on its way through stage 1c and Eq. 1: its item's record, its entry there, and
    the teacher's draft (the program teacher answers from the draft's worked steps)."""

    record: ItemRecord
    entry: ProbeEntry
    draft: ProbeDraft


def consistency_keep(item: Example, recheck_completion: str) -> bool:
    """Eq. 1: keep the probe iff the teacher, given the probe and its own answer, still solves Q."""
    return answers.is_correct(item, recheck_completion)


def difficulty_fate(n_consistent: int, n_student_correct: int, *, min_correct: int = 0,
                    max_correct: int | None = None) -> tuple[ItemStatus, str | None]:
    """Eq. 2 on one question: (fate, detail for a drop).

    N' = 0 (no probe survived Eq. 1) and Λ = N' (the student already answers every probe: too easy)
    always drop. ``min_correct`` and ``max_correct`` only tighten: drop when Λ < ``min_correct`` or
    Λ > ``max_correct``; ``max_correct`` None or -1 means no explicit upper bound.

    >>> difficulty_fate(5, 4), difficulty_fate(5, 1, min_correct=2)
    ((<ItemStatus.KEPT: 'kept'>, None), (<ItemStatus.TOO_HARD: 'Eq. 2: too hard'>, 'Λ = 1 < 2'))
    """
    if n_consistent == 0:
        return ItemStatus.NO_CONSISTENT_PROBE, None
    if n_student_correct >= n_consistent:
        return ItemStatus.TOO_EASY, f"Λ = N' = {n_consistent}"
    if max_correct is not None and max_correct >= 0 and n_student_correct > max_correct:
        return ItemStatus.TOO_EASY, f"Λ = {n_student_correct} > {max_correct}"
    if n_student_correct < min_correct:
        return ItemStatus.TOO_HARD, f"Λ = {n_student_correct} < {min_correct}"
    return ItemStatus.KEPT, None


def difficulty_keep(n_consistent: int, n_student_correct: int, *, min_correct: int = 0,
                    max_correct: int | None = None) -> tuple[bool, str | None]:
    """Eq. 2 on one question: (keep, the stored reason for dropping); see ``difficulty_fate``.

    >>> difficulty_keep(5, 4)
    (True, None)
    >>> difficulty_keep(2, 2, max_correct=3)  # Λ = N' drops even under a looser explicit bound
    (False, "Eq. 2: too easy (Λ = N' = 2)")
    """
    status, detail = difficulty_fate(n_consistent, n_student_correct, min_correct=min_correct, max_correct=max_correct)
    return status is ItemStatus.KEPT, status.drop_reason(detail)


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def reveals_answer(item: Example, probe: str) -> bool:
    """Whether ``probe`` states the gold answer of the original question ``item`` (a number equal to
    it; an option's letter in parentheses or its text, against the question without its option list;
    any other answer as a whole word): the answer occurs in the probe more often than in the question
    itself, or a statement of the probe that is not one of the question's sentences gives it (a
    sentence ending in "." or "!": so "Now she has 14 cards." reveals 14 even when the question also
    holds a 14; a sentence ending in "?" asks and is not counted). A yes/no answer cannot be located
    in a text, so such probes count as not revealing. The teacher's own ``states_answer`` decides too.

    >>> ex = Example("q", "arith", "Ravi has 20 books. Then he gets 4 more books. How many?", "24")
    >>> reveals_answer(ex, "Why does Ravi end up with 24 books?"), reveals_answer(ex, "What does step 1 add?")
    (True, False)
    >>> zoe = Example("q", "arith", "Zoe has 14 cards. Then she gets 14 more cards. Then she splits the cards into "
    ...               "2 equal groups and keeps one group. How many cards does Zoe have now?", "14")
    >>> reveals_answer(zoe, "Zoe had some cards. Then she got 14 more cards. Then she split the cards into 2 equal "
    ...                     "groups and kept one group. Now she has 14 cards. How many cards did Zoe have at the start?")
    True
    >>> reveals_answer(zoe, "Zoe has 14 cards. Then she gets 14 more cards. Why does the count change at step 1?")
    False
    """
    kind = answers.answer_type(item)
    gold = item.answer.strip()
    if kind == "yesno" or not gold:
        return False
    question = item.question
    if kind == "letter" and item.choices:  # the option list names every answer: compare against the stem
        for letter, choice in zip(LETTERS, item.choices):
            question = re.sub(r"\(" + letter + r"\)\s*" + re.escape(choice.strip()), " ", question)

    def count(text: str) -> int:
        if answers.parse_number(gold) is not None and kind in ("number", "latex"):
            return sum(answers.numbers_equal(m, gold) for m in answers.number_spans(text))
        needles = [re.escape(gold)]
        if kind == "letter" and item.choices:
            needles = [r"\(" + re.escape(gold) + r"\)"]
            choice = item.choices[LETTERS.index(gold)] if gold in LETTERS[: len(item.choices)] else ""
            if choice.strip():
                needles.append(re.escape(choice.strip()))
        return sum(len(re.findall(r"(?<!\w)" + n + r"(?!\w)", text, flags=re.IGNORECASE)) for n in needles)

    if count(probe) > count(question):
        return True
    own = {" ".join(s.lower().split()) for s in _sentences(question)}
    return any(count(s) > 0 for s in _sentences(probe) if not s.endswith("?") and " ".join(s.lower().split()) not in own)


def probe_example(item: Example, rule: str, probe: str, teacher_answer: str) -> Example:
    """A probe as a scorable item: its gold is the teacher's answer."""
    return Example(id=f"{item.id}/{rule}", dataset=f"{item.dataset}-probe", question=probe,
                   answer=answers.probe_gold(teacher_answer), meta={"answer_type": answers.infer_answer_type(teacher_answer),
                                                                    "rule": rule})


# ---------------------------------------------------------------------------------------------
# Stage 1 as steps, list in, list out; each fills in its part of the records and hands on what goes on.

def solve_step(records: Sequence[ItemRecord], teacher, *, require_correct: bool = True) -> list[ItemRecord]:
    """Stage 1a: the teacher's CoT on each item. Returns the records that go on to the probes: all, or
    with ``require_correct`` those whose CoT is right (the others are dropped, ``TEACHER_WRONG``)."""
    cots = teacher.solve([r.example for r in records])
    active = []
    for rec, cot in zip(records, cots):
        rec.teacher_cot, rec.teacher_correct = cot, answers.is_correct(rec.example, cot)
        if rec.teacher_correct or not require_correct:
            active.append(rec)
        else:
            rec.decide(ItemStatus.TEACHER_WRONG)
    return active


def draft_step(records: Sequence[ItemRecord], teacher, rules: RuleSet) -> list[PendingProbe]:
    """Stage 1b: one probe per rule for each record, Q_i = f_i(Q, A, R_T), appended to ``record.probes``.
    Returns the probes the teacher wrote; a draft without text is ``NOT_APPLICABLE`` or ``MALFORMED``
    (``ProbeDraft.failure``), with the teacher's reason."""
    drafts = teacher.write_probes([r.example for r in records], [r.teacher_cot for r in records], rules.rules)
    pending = []
    for rec, item_drafts in zip(records, drafts):
        for d in item_drafts:
            reveals = d.text is not None and (d.states_answer or reveals_answer(rec.example, d.text))
            entry = ProbeEntry(d.rule, d.text, reveals_answer=reveals)
            rec.probes.append(entry)
            if d.text is None:
                entry.mark(d.failure, d.reason)
            else:
                pending.append(PendingProbe(rec, entry, d))
    return pending


def answer_step(pending: Sequence[PendingProbe], teacher) -> list[PendingProbe]:
    """Stage 1c: the teacher answers each probe, (R_i, A_i). Returns the probes with a parseable answer
    (the others are ``MALFORMED``); A_i is the teacher's exact answer when its draft carries one."""
    responses = teacher.answer_probes([p.draft for p in pending])
    answered = []
    for p, resp in zip(pending, responses):
        p.entry.teacher_response = resp
        parsed = answers.extract(Example("p", "probe", p.draft.text, "", meta={"answer_type": "text"}), resp, "strict")
        if not parsed:
            p.entry.mark(ProbeStatus.MALFORMED, NO_ANSWER)
            continue
        p.entry.teacher_answer = p.draft.gold if p.draft.gold is not None else answers.probe_gold(parsed)
        p.entry.answer_type = answers.infer_answer_type(p.entry.teacher_answer)
        answered.append(p)
    return answered


def consistency_step(answered: Sequence[PendingProbe], teacher) -> list[PendingProbe]:
    """Eq. 1 on each answered probe: ``KEPT`` when the teacher, with (Q_i, R_i, A_i) as context, still
    answers Q correctly (``consistency_keep``), else ``DROPPED_EQ1``. Returns the kept probes."""
    rechecks = teacher.recheck([p.record.example for p in answered], [p.entry.probe for p in answered],
                               [p.entry.teacher_response for p in answered])
    kept = []
    for p, completion in zip(answered, rechecks):
        p.entry.recheck = completion
        if consistency_keep(p.record.example, completion):
            kept.append(p)
            p.entry.mark(ProbeStatus.KEPT)
        else:
            p.entry.mark(ProbeStatus.DROPPED_EQ1, EQ1_DETAIL)
    return kept


def student_step(consistent: Sequence[PendingProbe], student, rules: RuleSet, *, max_new_tokens: int,
                 progress_bar: bool = False) -> list[PendingProbe]:
    """Eq. 2's Λ, per probe: the untrained student answers each probe Eq. 1 kept (greedy), scored
    against the teacher's answer (``student_response``, ``student_correct``). Returns the probes.

    ``progress_bar``: show one; only for a student whose ``complete`` takes ``progress=`` (a
    ``models.chat.CachedBackend``; the plain backends take ``on_result=``)."""
    if not consistent:
        return []
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    batch = [[{"role": "user", "content": rules.answer_prompt(p.entry.probe)}] for p in consistent]
    if progress_bar:
        bar = progress(total=len(batch), desc="student Eq.2")
        outs = student.complete(batch, sampling, progress=bar)
        bar.close()
    else:
        outs = student.complete(batch, sampling)
    for p, out in zip(consistent, outs):
        p.entry.student_response = out.text
        p.entry.student_correct = answers.is_correct(
            probe_example(p.record.example, p.entry.rule, p.entry.probe, p.entry.teacher_answer), out.text)
    return list(consistent)


def difficulty_step(records: Sequence[ItemRecord], *, judged: bool, min_correct: int = 0,
                    max_correct: int | None = None) -> list[ItemRecord]:
    """Eq. 2 on each record that reached the probes (``difficulty_fate``); returns the kept records.
    Without a student (``judged`` False) every record with N' > 0 is kept and Λ stays None."""
    for rec in records:
        if not judged:
            rec.decide(ItemStatus.KEPT if rec.n_consistent > 0 else ItemStatus.NO_CONSISTENT_PROBE)
            continue
        rec.n_student_correct = sum(bool(p.student_correct) for p in rec.kept_probes())
        rec.decide(*difficulty_fate(rec.n_consistent, rec.n_student_correct, min_correct=min_correct,
                                    max_correct=max_correct))
    return [r for r in records if r.kept]


def run_pipeline(items: Sequence[Example], teacher, rules: RuleSet, *, student=None, config: EISettings = EISettings(),
                 out_dir: str | Path | None = None, student_progress: bool = False) -> dict:
    """Run stage 1 on ``items``; return (and, with ``out_dir``, write) records, probe dataset and statistics.

    ``student``: a chat backend (normally a ``CachedBackend`` over the untrained student) for Eq. 2;
    None skips Eq. 2 (every question with N' > 0 is kept, and the statistics say so).
    ``student_progress``: show a progress bar for the student (see ``student_step``).
    ``records`` and ``dataset`` in the result are the JSON dicts written to disk; ``ItemRecord.from_dict``
    gives the typed record of one.
    """
    t0 = time.time()
    records = [ItemRecord.from_example(ex) for ex in items]
    active = solve_step(records, teacher, require_correct=config.require_teacher_correct)
    consistent = consistency_step(answer_step(draft_step(active, teacher, rules), teacher), teacher)
    if student is not None:
        student_step(consistent, student, rules, max_new_tokens=config.student_max_new_tokens,
                     progress_bar=student_progress)
    difficulty_step(active, judged=student is not None, min_correct=config.min_correct, max_correct=config.max_correct)

    result = {"records": [r.to_dict() for r in records], "dataset": probe_dataset(records),
              "stats_items": item_stats(records), "stats_rules": rule_stats(records, [r.id for r in rules.rules]),
              "seconds": round(time.time() - t0, 1), "config": asdict(config), "rules_version": rules.version,
              "teacher": getattr(teacher, "name", type(teacher).__name__), "eq2_applied": student is not None}
    if out_dir is not None:
        write_outputs(result, out_dir)
    return result


def write_outputs(result: dict, out_dir: str | Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    paths = {"records": out_dir / "ei_records.jsonl", "dataset": out_dir / "probe_dataset.jsonl",
             "stats_items": out_dir / "stats_items.csv", "stats_rules": out_dir / "stats_rules.csv",
             "summary": out_dir / "ei_summary.json"}
    atomic_write_text(paths["records"], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result["records"]))
    atomic_write_text(paths["dataset"], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result["dataset"]))
    atomic_write_text(paths["stats_items"], result["stats_items"].to_csv(index=False))
    atomic_write_text(paths["stats_rules"], result["stats_rules"].to_csv(index=False))
    atomic_write_json(paths["summary"], {
        "teacher": result["teacher"], "rules_version": result["rules_version"], "config": result["config"],
        "eq2_applied": result["eq2_applied"], "seconds": result["seconds"],
        "items": result["stats_items"].to_dict(orient="records")})
    return paths


def load_probe_dataset(path: str | Path, *, as_hf: bool = False):
    """Read ``probe_dataset.jsonl``: a list of question records, or (``as_hf``) a flat ``datasets.Dataset``
    with one row per (question, probe)."""

    path = Path(path)
    records = []
    for lineno, rec in iter_jsonl(path):
        for key in ("id", "item", "teacher_cot", "probes"):
            if key not in rec:
                raise ValueError(f"{path}:{lineno}: missing field {key!r}")
        records.append(rec)
    if not as_hf:
        return records
    import datasets

    rows = [{"id": r["id"], "dataset": r["dataset"], "question": r["item"]["question"], "answer": r["item"]["answer"],
             "teacher_cot": r["teacher_cot"], **p} for r in records for p in r["probes"]]
    return datasets.Dataset.from_list(rows)


def run_ei(*, dataset: str, out_dir: str | Path, settings: EISettings = EISettings(),
           teacher: TeacherSettings = TeacherSettings(), student: str = "", dtype: str = "auto", cache_path: str = "",
           data_dir: str | None = None, sample_seed: int | None = None) -> dict:
    """Notebook 01 for one dataset: load items, build teacher and student, run stage 1, write outputs.

    ``student = ""`` skips Eq. 2 (every question with N' > 0 is kept, and the statistics say so)."""
    rule_set = load_rules(settings.rules_file or None).subset(list(settings.rules))
    cache = CompletionCache(cache_path or cache_dir() / "completions.sqlite")
    spec = DATASETS[dataset]
    split = settings.split
    if split not in spec.splits:  # TabMWP and ANLI have no train split here: probe their dev split
        split = "dev" if "dev" in spec.splits else split
    items = load(dataset, split, data_dir=data_dir, limit=settings.n_items, sample_seed=sample_seed)
    student_chat = None
    if student:
        student_chat = CachedBackend(transformers_backend(student, dtype=dtype, batch_size=settings.student_batch_size),
                                     cache)
    with teacher_session(teacher, rule_set, cache=cache) as t:  # teacher_serve: its loopback server meanwhile
        result = run_pipeline(items, t, rule_set, student=student_chat, config=settings, out_dir=out_dir,
                              student_progress=student_chat is not None)  # a CachedBackend: it reports progress
    # Provenance: stage 1 always rebuilds its outputs (the completion cache makes that cheap), and
    # this records what they were made from; the trainings fingerprint the probe records themselves.
    atomic_write_json(Path(out_dir) / "fingerprint.json", {
        "stage": "ei", "dataset": dataset, "split": split, "items": digest([asdict(ex) for ex in items]),
        "rules": digest(rule_set.content), "settings": json.loads(json.dumps(asdict(settings), default=str)),
        "teacher": {"kind": teacher.teacher, "model": teacher.teacher_model, "base_url": endpoint(teacher)},
        "student": model_identity(student) if student else None, "student_dtype": dtype,
        "probe_dataset": file_digest(Path(out_dir) / "probe_dataset.jsonl")})
    usage = getattr(getattr(t, "chat", None), "usage", None)
    result["teacher_usage"] = usage.as_dict() if usage is not None else None
    result["cache"] = {"path": portable(cache.path), "hits": cache.hits, "misses": cache.misses}
    return result


def run_ei_suite(*, out_dir: str | Path, settings: EISettings = EISettings(), **kwargs) -> dict:
    """``run_ei`` for each of ``settings.datasets`` into ``out_dir/<dataset>``; adds combined statistics."""

    results = {name: run_ei(dataset=name, out_dir=Path(out_dir) / name, settings=settings, **kwargs)
               for name in settings.datasets}
    combined = {"per_dataset": results,
                "stats_items": pd.concat([r["stats_items"] for r in results.values()], ignore_index=True),
                "stats_rules": pd.concat([r["stats_rules"] for r in results.values()], ignore_index=True),
                "seconds": round(sum(r["seconds"] for r in results.values()), 1)}
    atomic_write_text(Path(out_dir) / "stats_items.csv", combined["stats_items"].to_csv(index=False))
    atomic_write_text(Path(out_dir) / "stats_rules.csv", combined["stats_rules"].to_csv(index=False))
    return combined


def examples_per_rule(result: dict, n: int = 1):
    """A few kept probes of each rule, for display."""

    rows, seen = [], Counter()
    for rec in result["dataset"]:
        for p in rec["probes"]:
            if seen[p["rule"]] < n:
                seen[p["rule"]] += 1
                rows.append({"rule": p["rule"], "probe": p["probe"], "teacher answer": p["teacher_answer"]})
    return pd.DataFrame(rows, columns=["rule", "probe", "teacher answer"]).sort_values("rule", kind="stable")
