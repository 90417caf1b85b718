"""The EI-Test of the paper's Figure 1: a test set made of Explanatory-Inversion probes of test questions.

The paper motivates the method with it: a distilled student loses much more than its teacher when the
test questions are replaced by EI probes of them. The kit builds it the way training probes are made
(``teach.inversion.run_pipeline``: the teacher's chain of thought, one probe per rule, the teacher's
answer to each probe, Eq. 1's consistency check) from a task's *test* questions, without Eq. 2 (that
filter is about what the untrained student finds hard, a training choice). Each probe Eq. 1 kept is
one item, its gold the teacher's answer (exact on ``arith``, where the program teacher computes it),
its rule and source question in ``meta``. Nothing here is ever used for training.

    examples = build_ei_test(items, teacher, rules, out_dir=run / "ei_test" / "arith")  # cached, fingerprinted
    records = evaluate_examples(generator, examples, out_dir / "arith-ei.jsonl", sampling=...)
    ei_test_scores(records, examples)  # overall and per rule (Wilson intervals: probes as independent)
    report.figure1.ei_test_table(df)  # Figure 1 from the records: test set beside EI-Test, the deficit

The items are asked with the evaluation prompt of their answer type (``data.prompts.messages_for``),
as the original test questions are, so the two accuracies differ by the questions only.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from ..data import answers
from ..data.datasets import load
from ..data.example import Example
from ..infra.files import atomic_write_text, iter_jsonl
from ..infra.fingerprint import check_stamp, digest, move_aside
from ..infra.layout import RunLayout
from ..infra.paths import cache_dir
from ..models.cache import CompletionCache
from ..teach.inversion import run_pipeline
from ..teach.records import ItemRecord
from ..teach.rules import RuleSet, load_rules
from ..teach.settings import EISettings, TeacherSettings
from ..teach.teachers import endpoint, served_identity, teacher_session
from .stats import wilson_interval

EI_TEST_VERSION = 1  # part of the set's fingerprint: bump when the way items are made changes
EI_TEST_FILE = "ei_test.jsonl"


def ei_test_examples(records: Iterable[dict]) -> list[Example]:
    """The EI-Test items of stage-1 records (``ItemRecord`` dicts): every probe Eq. 1 kept, in order."""
    out = []
    for d in records:
        rec = ItemRecord.from_dict(d)
        for p in rec.kept_probes():
            out.append(Example(
                id=f"{rec.example.id}/{p.rule}", dataset=ei_test_name(rec.example.dataset), question=p.probe,
                answer=answers.probe_gold(p.teacher_answer),
                meta={"answer_type": p.answer_type or answers.infer_answer_type(p.teacher_answer), "rule": p.rule,
                      "source_id": rec.example.id, "reveals_answer": p.reveals_answer}))
    return out


def build_ei_test(items: Sequence[Example], teacher, rules: RuleSet, *, out_dir: str | Path,
                  teacher_identity: dict, require_teacher_correct: bool = True, fresh: bool = False,
                  log=print) -> list[Example]:
    """The EI-Test of ``items`` (a task's test questions), written to ``out_dir/ei_test.jsonl`` with the
    stage-1 records beside it and a fingerprint of what made it (the items, the rules, the teacher,
    this module's version); a set already there with the same fingerprint is read back, one made from
    other inputs is refused (``fresh`` moves it aside). ``teacher_identity``: the teacher as recorded
    (kind, model, endpoint); its answers come through the completion cache."""
    out_dir = Path(out_dir)
    inputs = {"stage": "ei-test", "version": EI_TEST_VERSION, "items": digest([asdict(ex) for ex in items]),
              "rules": digest(rules.content), "teacher": teacher_identity,
              "require_teacher_correct": require_teacher_correct}
    check_stamp(out_dir, inputs, what="EI-Test", fresh=fresh, log=log)
    path = out_dir / EI_TEST_FILE
    if path.exists():
        return [Example.from_dict(d) for _, d in iter_jsonl(path)]
    config = EISettings(require_teacher_correct=require_teacher_correct)
    result = run_pipeline(items, teacher, rules, student=None, config=config)  # no Eq. 2: a test set
    examples = ei_test_examples(result["records"])
    atomic_write_text(out_dir / "ei_test_records.jsonl",
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result["records"]))
    atomic_write_text(path, "".join(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n" for ex in examples))
    return examples


def build_ei_tests(layout: RunLayout, settings: EISettings, teacher: TeacherSettings, *, data_dir: str | None = None,
                   sample_seed: int | None = 0, fresh: bool = False, log=print) -> dict[str, list[Example]]:
    """Notebook 01: the EI-Test of each of ``settings.datasets`` from ``settings.test_items`` of its
    test questions (the seeded subsample the evaluations use), with the rules and the teacher of the
    training probes, into ``layout.ei_test_dir(dataset)``; {} when ``test_items`` is 0."""
    if settings.test_items <= 0:  # none asked for: a set left by an earlier call must not be scored
        for name in settings.datasets:
            if layout.ei_test_dir(name).exists():
                log(f"[ei_test_items 0] moved the EI-Test of an earlier call aside: {move_aside(layout.ei_test_dir(name))}")
        return {}
    rule_set = load_rules(settings.rules_file or None).subset(list(settings.rules))
    identity = {"kind": teacher.teacher, "model": teacher.teacher_model, "base_url": endpoint(teacher),
                "max_new_tokens": teacher.teacher_max_new_tokens,
                **({"served": served_identity(teacher.teacher_model)} if teacher.teacher_serve else {})}
    out = {}
    with teacher_session(teacher, rule_set, cache=CompletionCache(cache_dir() / "completions.sqlite")) as t:
        identity["teacher_version"] = getattr(t, "version", None)  # the program teacher's outputs
        for name in settings.datasets:
            items = load(name, "test", data_dir=data_dir, limit=settings.test_items, sample_seed=sample_seed)
            out[name] = build_ei_test(items, t, rule_set, out_dir=layout.ei_test_dir(name), teacher_identity=identity,
                                      require_teacher_correct=settings.require_teacher_correct, fresh=fresh, log=log)
            log(f"EI-Test of {name}: {len(out[name])} probes of {len(items)} test questions")
    return out


def ei_test_name(dataset: str) -> str:
    """The EI-Test's name in evaluation folders and records: ``arith-ei`` for ``arith``."""
    return f"{dataset}-ei"


def ei_source(item_id: str) -> str:
    """The test question an EI-Test item (``<question id>/<rule>``) was made from: its probes are
    resampled together by the intervals (``evaluate.stats``: ``clusters``)."""
    return item_id.rsplit("/", 1)[0]


def ei_test_ids(layouts: Sequence[RunLayout], dataset: str) -> set[str]:
    """The item ids of ``dataset``'s current EI-Test in any of ``layouts`` (the runs a report reads):
    evaluation files can hold records of an earlier build, which must not be counted."""
    return {ex.id for layout in layouts for ex in load_ei_test(layout, dataset)}


def load_ei_test(layout: RunLayout, dataset: str) -> list[Example]:
    """The EI-Test notebook 01 built for ``dataset`` in this run ([] when it built none)."""
    path = layout.ei_test_dir(dataset) / EI_TEST_FILE
    return [Example.from_dict(d) for _, d in iter_jsonl(path)] if path.exists() else []


def ei_test_scores(records: Sequence[dict], examples: Sequence[Example]):
    """Accuracy on the EI-Test overall and per rule (``records``: evaluation records, scored
    ``correct_flexible``; ``examples``: the set, for each item's rule), with 95% Wilson intervals,
    which take the probes as independent (a question's probes can err together; Figure 1's
    intervals resample questions, ``report.figure1``)."""
    rule_of = {ex.id: ex.meta["rule"] for ex in examples}
    rows = []
    scored = [(rule_of[r["id"]], bool(r.get("correct_flexible"))) for r in records if r["id"] in rule_of]
    for rule in ["all"] + sorted({rule for rule, _ in scored}):
        hits = [ok for r, ok in scored if rule in ("all", r)]
        low, high = wilson_interval(sum(hits), len(hits))
        rows.append({"rule": rule, "n": len(hits), "correct": sum(hits), "accuracy": 100 * sum(hits) / len(hits),
                     "low": 100 * low, "high": 100 * high})
    return pd.DataFrame(rows, columns=["rule", "n", "correct", "accuracy", "low", "high"])
