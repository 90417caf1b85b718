"""Did a reproduction reproduce? Item-by-item comparison of two result roots (the committed
reference and a new run of the same preset).

For every evaluation both runs hold (``eval_task/<run id>/<dataset>.jsonl``, ``eval_arith/`` in runs
written before that name, and ``eval/<method>/<dataset>.jsonl``), it pairs the items by id and reports both accuracies, how many
items got the same extracted answer, and an exact McNemar test on the items only one run got right.
A cell's verdict is ``identical`` (every answer the same), ``within noise`` (answers differ but
p >= ``alpha``: no evidence the two runs' accuracies differ), ``differs`` (p < ``alpha``) or
``not comparable`` (no common item, or the same item ids were asked other questions or prompts). The
report names both runs' CPU and generation dtype, since the numbers are identical only on the same
kind of machine with the same settings (README, "Reproducing the numbers").

    python -m exgrpo_utils.report.compare --reference results --reproduction reproduction --run cpu
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..evaluate.evaluation import item_records
from ..evaluate.stats import mcnemar_exact
from ..infra.files import atomic_write_text
from ..infra.layout import TASK_EVAL, RunLayout

ALPHA = 0.05
VERDICTS = ("identical", "within noise", "differs", "not comparable")


@dataclass(frozen=True)
class Cell:
    evaluation: str  # "eval_task" (the task's own sets; eval_arith/ in older runs) or "eval" (the suite)
    model: str  # run id or method label
    dataset: str
    n: int  # items in both runs (compared)
    n_reference: int
    n_reproduction: int
    acc_reference: float
    acc_reproduction: float
    same_answer: int
    only_reference_right: int
    only_reproduction_right: int
    p_value: float
    verdict: str


def _items(path: Path) -> dict[str, tuple[str | None, bool, str]]:
    return {i: (r.get("extracted_flexible"), bool(r.get("correct_flexible")), r.get("prompt", ""))
            for i, r in item_records(path).items()}


def eval_files(layout: RunLayout) -> dict[tuple[str, str, str], Path]:
    out = {}
    for kind, root in ((TASK_EVAL, layout.task_eval_root), ("eval", layout.suite_root)):
        for path in sorted(root.glob("*/*.jsonl")):  # keyed by kind: eval_arith/ and eval_task/ compare
            out[(kind, path.parent.name, path.stem)] = path
    return out


def compare_cell(key: tuple[str, str, str], ref: Path, rep: Path, alpha: float = ALPHA) -> Cell:
    a, b = _items(ref), _items(rep)
    ids = sorted(a.keys() & b.keys())
    n = len(ids)
    acc_a, acc_b = sum(a[i][1] for i in ids) / max(n, 1), sum(b[i][1] for i in ids) / max(n, 1)
    same = sum(a[i][0] == b[i][0] for i in ids)
    if not ids or any(a[i][2] != b[i][2] for i in ids):  # no common item, or the same ids asked other prompts
        return Cell(*key, n, len(a), len(b), acc_a, acc_b, same, 0, 0, float("nan"), "not comparable")
    only_a = sum(a[i][1] and not b[i][1] for i in ids)
    only_b = sum(b[i][1] and not a[i][1] for i in ids)
    p = mcnemar_exact(only_a, only_b)
    verdict = "identical" if same == n else ("within noise" if p >= alpha else "differs")
    return Cell(*key, n, len(a), len(b), acc_a, acc_b, same, only_a, only_b, p, verdict)


def machine(layout: RunLayout) -> dict:
    """CPU model, threads and automatic dtype recorded by notebook 00, plus the generation dtypes used."""
    env = {}
    setup = layout.root / "00_setup.json"
    if setup.exists():
        env = json.loads(setup.read_text()).get("environment", {})
    dtypes = sorted({json.loads(p.read_text()).get("dtype", "?") for p in layout.root.glob("eval*/*/config.json")})
    return {"cpu": env.get("cpu_model", "not recorded"), "threads": env.get("cpu_threads"),
            "device": env.get("device"), "generation_dtype": ", ".join(dtypes) or "?"}


def compare(reference: RunLayout, reproduction: RunLayout, alpha: float = ALPHA) -> dict:
    ref, rep = eval_files(reference), eval_files(reproduction)
    cells = [compare_cell(k, ref[k], rep[k], alpha) for k in sorted(ref.keys() & rep.keys())]
    return {"reference": {"root": str(reference.root), **machine(reference)},
            "reproduction": {"root": str(reproduction.root), **machine(reproduction)},
            "alpha": alpha, "cells": [asdict(c) for c in cells],
            "only_reference": ["/".join(k) for k in sorted(ref.keys() - rep.keys())],
            "only_reproduction": ["/".join(k) for k in sorted(rep.keys() - ref.keys())],
            "counts": {v: sum(c.verdict == v for c in cells) for v in VERDICTS}}


def to_markdown(result: dict) -> str:
    ref, rep, counts = result["reference"], result["reproduction"], result["counts"]
    lines = ["# Reproduction vs committed reference", "",
             f"- reference: {ref['root']} (CPU {ref['cpu']}, {ref['threads']} threads; generation dtype {ref['generation_dtype']})",
             f"- reproduction: {rep['root']} (CPU {rep['cpu']}, {rep['threads']} threads; generation dtype {rep['generation_dtype']})",
             f"- {len(result['cells'])} evaluations in both: {counts['identical']} identical item by item, "
             f"{counts['within noise']} differ within noise (exact McNemar p >= {result['alpha']}), "
             f"{counts['differs']} differ (p < {result['alpha']})"
             + (f"; {counts['not comparable']} not comparable (no common item, or the same item ids hold other "
                "questions or prompts: the data or the prompt changed)" if counts["not comparable"] else "")]
    partial = [c for c in result["cells"] if c["n"] < max(c["n_reference"], c["n_reproduction"])]
    if partial:
        lines.append(f"- {len(partial)} evaluations compared on part of their items only (the runs hold different "
                     "numbers of items, e.g. other limits or an unfinished run): the n column says how many")
    if result["only_reference"] or result["only_reproduction"]:
        lines.append(f"- only in the reference: {len(result['only_reference'])}; only in the reproduction: "
                     f"{len(result['only_reproduction'])} (e.g. the full set's extra seeds and ablations of `make reproduce-full`, or not run yet)")
    lines += ["", "| evaluation | model | dataset | n | reference % | reproduction % | same answer | "
              "only ref right | only repro right | McNemar p | verdict |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in result["cells"]:
        lines.append(f"| {c['evaluation']} | {c['model']} | {c['dataset']} | {c['n']} | {100 * c['acc_reference']:.1f} | "
                     f"{100 * c['acc_reproduction']:.1f} | {c['same_answer']}/{c['n']} | {c['only_reference_right']} | "
                     f"{c['only_reproduction_right']} | {c['p_value']:.3g} | {c['verdict']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", default="results", help="the committed results root")
    ap.add_argument("--reproduction", default="reproduction", help="the new run's results root")
    ap.add_argument("--run", default="cpu", help="run name inside both roots")
    ap.add_argument("--alpha", type=float, default=ALPHA)
    args = ap.parse_args(argv)
    reference, reproduction = RunLayout.of(args.run, args.reference), RunLayout.of(args.run, args.reproduction)
    for layout, what in ((reference, "reference"), (reproduction, "reproduction")):
        if not layout.root.is_dir():
            print(f"compare: the {what} run {layout.root} does not exist")
            return 2
    result = compare(reference, reproduction, args.alpha)
    text = to_markdown(result)
    atomic_write_text(reproduction.root / "comparison.md", text)
    atomic_write_text(reproduction.root / "comparison.json", json.dumps(result, indent=1) + "\n")
    print(text)
    print(f"written: {reproduction.root / 'comparison.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
