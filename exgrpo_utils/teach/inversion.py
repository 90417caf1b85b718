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

Every teacher and student call goes through the persistent completion cache, so a rerun after an
interruption pays only for what is missing; the outputs are written atomically at the end.
"""
from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..common.files import atomic_write_json, atomic_write_text, iter_jsonl
from ..common.fingerprint import digest, file_digest
from ..common.paths import cache_dir, portable
from ..common.progress import progress
from ..data import answers
from ..data.datasets import DATASETS, load
from ..data.example import LETTERS, Example
from ..models.cache import CompletionCache
from ..models.chat import CachedBackend, transformers_backend
from ..models.generation import SamplingConfig
from ..models.registry import model_identity
from .rules import RuleSet, load_rules
from .settings import EISettings, TeacherSettings
from .teachers import endpoint, teacher_session

# Hugging Face datasets is imported inside load_probe_dataset, only for as_hf=True (heavy).


KEPT = "kept"


def consistency_keep(item: Example, recheck_completion: str) -> bool:
    """Eq. 1: keep the probe iff the teacher, given the probe and its own answer, still solves Q."""
    return answers.is_correct(item, recheck_completion)


def difficulty_keep(n_consistent: int, n_student_correct: int, *, min_correct: int = 0,
                    max_correct: int | None = None) -> tuple[bool, str | None]:
    """Eq. 2 on one question: (keep, reason for dropping).

    N' = 0 (no probe survived Eq. 1) and Λ = N' (the student already answers every probe: too easy)
    always drop. ``min_correct`` and ``max_correct`` only tighten: drop when Λ < ``min_correct`` or
    Λ > ``max_correct``; ``max_correct`` None or -1 means no explicit upper bound.

    >>> difficulty_keep(5, 4)
    (True, None)
    >>> difficulty_keep(2, 2, max_correct=3)[0]  # Λ = N' drops even under a looser explicit bound
    False
    """
    if n_consistent == 0:
        return False, "Eq. 2: no probe survived Eq. 1 (N' = 0)"
    if n_student_correct >= n_consistent:
        return False, f"Eq. 2: too easy (Λ = N' = {n_consistent})"
    if max_correct is not None and max_correct >= 0 and n_student_correct > max_correct:
        return False, f"Eq. 2: too easy (Λ = {n_student_correct} > {max_correct})"
    if n_student_correct < min_correct:
        return False, f"Eq. 2: too hard (Λ = {n_student_correct} < {min_correct})"
    return True, None


def reveals_answer(item: Example, probe: str) -> bool:
    """Whether ``probe`` states the gold answer of the original question ``item``: the answer occurs
    in the probe more often than in the question itself (a number equal to it; an option's letter in
    parentheses or its text, against the question without its option list; any other answer as a
    whole word). A yes/no answer cannot be located in
    a text, so such probes count as not revealing.

    >>> ex = Example("q", "arith", "Ravi has 20 books. Then he gets 4 more books. How many?", "24")
    >>> reveals_answer(ex, "Why does Ravi end up with 24 books?"), reveals_answer(ex, "What does step 1 add?")
    (True, False)
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

    return count(probe) > count(question)


def probe_example(item: Example, rule: str, probe: str, teacher_answer: str) -> Example:
    """A probe as a scorable item: its gold is the teacher's answer."""
    return Example(id=f"{item.id}/{rule}", dataset=f"{item.dataset}-probe", question=probe,
                   answer=answers.probe_gold(teacher_answer), meta={"answer_type": answers.infer_answer_type(teacher_answer),
                                                                    "rule": rule})


def run_pipeline(items: Sequence[Example], teacher, rules: RuleSet, *, student=None, config: EISettings = EISettings(),
                 out_dir: str | Path | None = None) -> dict:
    """Run stage 1 on ``items``; return (and, with ``out_dir``, write) records, probe dataset and statistics.

    ``student``: a chat backend (normally a ``CachedBackend`` over the untrained student) for Eq. 2;
    None skips Eq. 2 (every question with N' > 0 is kept, and the statistics say so).
    """
    t0 = time.time()
    records = [{"id": ex.id, "dataset": ex.dataset, "item": ex.to_dict(), "teacher_cot": None,
                "teacher_correct": None, "probes": [], "n_consistent": 0, "n_student_correct": None,
                "kept": False, "drop_reason": None} for ex in items]

    # Stage 1a: teacher chain-of-thought.
    cots = teacher.solve(items)
    active = []
    for rec, ex, cot in zip(records, items, cots):
        rec["teacher_cot"] = cot
        rec["teacher_correct"] = answers.is_correct(ex, cot)
        if rec["teacher_correct"] or not config.require_teacher_correct:
            active.append((rec, ex))
        else:
            rec["drop_reason"] = "teacher CoT is wrong"

    # Stage 1b: one probe per rule.
    drafts = teacher.write_probes([ex for _, ex in active], [r["teacher_cot"] for r, _ in active], rules.rules)
    pending = []  # (record, item, probe entry, draft)
    for (rec, ex), item_drafts in zip(active, drafts):
        for d in item_drafts:
            entry = {"rule": d.rule, "probe": d.text, "reveals_answer": d.text is not None and reveals_answer(ex, d.text),
                     "teacher_response": None, "teacher_answer": None, "answer_type": None, "recheck": None,
                     "student_response": None, "student_correct": None}
            if d.text is None:
                entry["status"] = ("not applicable: " if "applicable" in (d.reason or "") or "template" in (d.reason or "")
                                   else "malformed: ") + (d.reason or "")
            else:
                pending.append((rec, ex, entry, d))
            rec["probes"].append(entry)

    # Stage 1c: the teacher answers each probe.
    responses = teacher.answer_probes([d for *_, d in pending])
    answered = []
    for (rec, ex, entry, d), resp in zip(pending, responses):
        entry["teacher_response"] = resp
        parsed = answers.extract(Example("p", "probe", d.text, "", meta={"answer_type": "text"}), resp, "strict")
        if not parsed:
            entry["status"] = "malformed: no parseable answer"
            continue
        entry["teacher_answer"] = d.gold if d.gold is not None else answers.probe_gold(parsed)
        entry["answer_type"] = answers.infer_answer_type(entry["teacher_answer"])
        answered.append((rec, ex, entry))

    # Eq. 1: consistency.
    rechecks = teacher.recheck([ex for _, ex, _ in answered], [e["probe"] for *_, e in answered],
                               [e["teacher_response"] for *_, e in answered])
    consistent = []
    for (rec, ex, entry), completion in zip(answered, rechecks):
        entry["recheck"] = completion
        if consistency_keep(ex, completion):
            entry["status"] = KEPT
            rec["n_consistent"] += 1
            consistent.append((rec, ex, entry))
        else:
            entry["status"] = "dropped: Eq. 1 (the probe derails the original question)"

    # Eq. 2: difficulty, judged by the untrained student.
    if student is not None and consistent:
        sampling = SamplingConfig(max_new_tokens=config.student_max_new_tokens, temperature=0.0)
        batch = [[{"role": "user", "content": rules.answer_prompt(e["probe"])}] for *_, e in consistent]
        bar = progress(total=len(batch), desc="student Eq.2")
        outs = (student.complete(batch, sampling, progress=bar) if hasattr(student, "cache")
                else student.complete(batch, sampling))
        bar.close()
        for (rec, ex, entry), out in zip(consistent, outs):
            entry["student_response"] = out.text
            entry["student_correct"] = answers.is_correct(
                probe_example(ex, entry["rule"], entry["probe"], entry["teacher_answer"]), out.text)
    for rec, _ in active:
        if student is None:
            rec["kept"] = rec["n_consistent"] > 0
            rec["drop_reason"] = None if rec["kept"] else "Eq. 2: no probe survived Eq. 1 (N' = 0)"
            continue
        rec["n_student_correct"] = sum(bool(p["student_correct"]) for p in rec["probes"] if p["status"] == KEPT)
        rec["kept"], rec["drop_reason"] = difficulty_keep(rec["n_consistent"], rec["n_student_correct"],
                                                          min_correct=config.min_correct, max_correct=config.max_correct)

    result = {"records": records, "dataset": probe_dataset(records), "stats_items": item_stats(records),
              "stats_rules": rule_stats(records, [r.id for r in rules.rules]),
              "seconds": round(time.time() - t0, 1), "config": asdict(config), "rules_version": rules.version,
              "teacher": getattr(teacher, "name", type(teacher).__name__), "eq2_applied": student is not None}
    if out_dir is not None:
        write_outputs(result, out_dir)
    return result


def probe_dataset(records: Sequence[dict]) -> list[dict]:
    """The kept questions with their kept probes: what SFT and ExGRPO train on."""
    out = []
    for rec in records:
        if not rec["kept"]:
            continue
        probes = [{k: p[k] for k in ("rule", "probe", "reveals_answer", "teacher_response", "teacher_answer", "answer_type")}
                  for p in rec["probes"] if p["status"] == KEPT]
        out.append({"id": rec["id"], "dataset": rec["dataset"], "item": rec["item"], "teacher_cot": rec["teacher_cot"],
                    "probes": probes})
    return out


def item_stats(records: Sequence[dict]):
    """Per dataset: items in, teacher-correct, probes generated, kept by Eq. 1, items kept by Eq. 2."""

    rows = []
    for name in sorted({r["dataset"] for r in records}):
        recs = [r for r in records if r["dataset"] == name]
        probes = [p for r in recs for p in r["probes"]]
        reasons = Counter(r["drop_reason"] for r in recs if not r["kept"])
        rows.append({"dataset": name, "items_in": len(recs), "teacher_correct": sum(bool(r["teacher_correct"]) for r in recs),
                     "probes_attempted": len(probes), "probes_generated": sum(p["probe"] is not None for p in probes),
                     "probes_answered": sum(p["teacher_answer"] is not None for p in probes),
                     "probes_kept_eq1": sum(p["status"] == KEPT for p in probes),
                     "items_with_kept_probes": sum(r["n_consistent"] > 0 for r in recs),
                     "items_kept_eq2": sum(r["kept"] for r in recs),
                     "probes_in_kept_items": sum(p["status"] == KEPT for r in recs if r["kept"] for p in r["probes"]),
                     **{f"dropped: {k}": v for k, v in sorted(reasons.items())}})
    return pd.DataFrame(rows)


def rule_stats(records: Sequence[dict], rule_ids: Sequence[str]):
    """Per dataset and rule: generated, stating the original answer, malformed (by reason), kept by
    Eq. 1, student-correct, in kept items."""

    rows = []
    for name in sorted({r["dataset"] for r in records}):
        recs = [r for r in records if r["dataset"] == name]
        for rule in rule_ids:
            ps = [(r, p) for r in recs for p in r["probes"] if p["rule"] == rule]
            status = Counter(p["status"] for _, p in ps)
            kept = [p for _, p in ps if p["status"] == KEPT]
            rows.append({"dataset": name, "rule": rule, "attempted": len(ps),
                         "generated": sum(p["probe"] is not None for _, p in ps),
                         "reveals_answer": sum(bool(p.get("reveals_answer")) for _, p in ps),
                         "not_applicable": sum(n for s, n in status.items() if s.startswith("not applicable")),
                         "malformed": sum(n for s, n in status.items() if s.startswith("malformed")),
                         "failed_eq1": sum(n for s, n in status.items() if s.startswith("dropped: Eq. 1")),
                         "kept_eq1": len(kept),
                         "student_correct": sum(bool(p["student_correct"]) for p in kept),
                         "in_kept_items": sum(p["status"] == KEPT for r, p in ps if r["kept"])})
    return pd.DataFrame(rows)


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
        result = run_pipeline(items, t, rule_set, student=student_chat, config=settings, out_dir=out_dir)
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
