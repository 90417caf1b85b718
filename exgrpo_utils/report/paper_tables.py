"""The paper's Tables 1-4 and the data of Figures 3-5, from ``results/`` alone (notebook 06).

Input: the long table of ``experiments.runs.collect`` (one row per task, method, seed, evaluation and
dataset) and the paper's reported numbers (``report.paper_layout.paper_results``). The columns follow the
paper's protocol: each training task's column is its own model on its test set, each OOD column the
model of the task it is paired with (BoolQ <- StrategyQA, ...), and the held-in (OOD) average is the
mean over those per-task cells; where the run scored one model on the 12-dataset suite
(``exp_suite_keys``) that is a separate column, named as such. Our cells read ``mean [low, high]``:
with several seeds the mean over seeds and a 95% Student-t interval over seeds, widened where needed
to one model's item-level interval at the seeds' mean count right, each item counted once (seeds that
agree exactly get no zero-width interval, and no narrower one than a single seed); with one seed the accuracy and its 95% Wilson interval over the test items (for an
average, the interval of a mean of independent accuracies).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..data.datasets import DATASETS, HELD_IN, OOD, task_eval_sets
from ..evaluate.ei_test import ei_source, ei_test_ids, ei_test_name
from ..evaluate.evaluation import item_records
from ..evaluate.stats import mcnemar_exact, mean_interval, seed_interval, seed_level_comparison, wilson_interval
from ..experiments.methods import GROUPS, METHODS
from ..experiments.records import collect, data_notes
from ..infra.files import atomic_write_text, read_train_log
from ..infra.layout import TRAIN_LOG, RunLayout, method_of
from .leaks import COLUMN as LEAK_COLUMN
from .leaks import fmt_leaks, leak_rates
from .paper_layout import to_markdown

PAPER_STUDENTS = ("Qwen2.5-7B-Instruct", "Gemma-7B-it")

# Our method key -> the paper's method name, per table.
PAPER_NAMES = {
    "table1": {"zero-shot": "zero-shot", "revthink": "RevThink", "opd": "On-Policy Distillation", "exgrpo": "ExGRPO"},
    "table2": {"revthink": "RevThink", "exgrpo": "ExGRPO"},
    "table3": {"sft": "SFT (3 ep)", "cold-grpo": "RL cold start (R_base)", "cold-grpo-aux": "RL cold start + aux SFT",
               "sft-grpo": "SFT + RL (R_base)", "sft-grpo-aux": "SFT + RL (R_base) + aux SFT",
               "exgrpo": "SFT + ExGRPO + aux SFT"},
    "table4": {"rephrase": "SFT Rephrase Question", "sft-rule-counterfactual": "SFT single rule (counterfactual)",
               "sft-rule-causal_verification": "SFT single rule (causal)",
               "sft-rule-explanatory_challenge": "SFT single rule (explanatory challenge)", "sft": "SFT all rules"},
}
TABLE_ROWS = {
    "table1": ("zero-shot", "skd", "dss", "rephrase", "question-aug", "answer-aug", "revthink", "divide-conquer", "opd", "sft",
               "sft-grpo", "exgrpo"),
    "table2": ("zero-shot", "skd", "dss", "rephrase", "question-aug", "answer-aug", "revthink", "divide-conquer", "opd", "sft",
               "sft-grpo", "exgrpo"),
    "table3": GROUPS["table3"],
    "table4": GROUPS["table4"],
}
PAPER_SPLIT = {"table1": "held-in-avg8", "table2": "ood-avg4", "table3": "held-in-avg8", "table4": "held-in-avg8"}


@dataclass(frozen=True)
class Column:
    """One column of ours: the mean over ``datasets`` of one evaluation (``task``: the per-task
    protocol, ``suite``: one model on the 12-dataset suite)."""
    title: str
    datasets: tuple[str, ...]
    source: str = "task"
    task: str = ""  # only the models trained on this task ("": the task each dataset belongs to)


def load_records(layouts: Sequence[RunLayout]):
    """``experiments.runs.collect`` over several runs; a (task, method, seed) in a later run replaces
    the same one in an earlier run (per-task records of different tasks never replace each other)."""

    frames = [collect(lay) for lay in layouts if lay.records_dir.is_dir()]
    if not frames:
        raise FileNotFoundError(f"no experiment records under {', '.join(str(lay.root) for lay in layouts)}: "
                                "run notebook 05 first")
    df = pd.concat(frames, ignore_index=True)
    # whole records: every row of a (task, method, seed) comes from the last run that has it
    order = {lay.name: i for i, lay in enumerate(layouts)}
    df["_order"] = df["run"].map(order)
    last = df.groupby(["train_dataset", "key", "seed"])["_order"].transform("max")
    out = df[df["_order"] == last].drop(columns="_order").reset_index(drop=True)
    out.attrs["sft_epochs"] = sft_epochs(layouts)
    out.attrs["leak_rates"] = leak_rates(layouts, out)  # Table 3's probe policies
    return out


def sft_epochs(layouts: Sequence[RunLayout]) -> list[float]:
    """The epochs the runs' SFT warm-ups (method ``sft``, every task and seed) trained, from their summaries."""
    found = set()
    for lay in layouts:
        for path in lay.train_root.glob("*/sft_summary.json") if lay.train_root.is_dir() else ():
            if method_of(path.parent.name)[0] == "sft":
                found.add(float(json.loads(path.read_text()).get("settings", {}).get("epochs", "nan")))
    return sorted(found)


def _notes(name: str, key: str, df) -> list[str]:
    """What a reader must know to compare a row with the paper's (beside the skip reasons)."""
    epochs, notes = df.attrs.get("sft_epochs") or [], data_notes(df, key)  # a baseline on SKD's rows, by task
    if name == "table3" and key == "sft" and epochs and epochs != [3.0]:
        return [f"the paper's row trains 3 epochs; ours {', '.join(f'{e:g}' for e in epochs)}"] + notes
    return notes


def tasks_of(df) -> list[str]:
    """The training tasks of the records, in the paper's order of datasets (``data.DATASETS``)."""
    order = list(DATASETS)
    return sorted(set(df.loc[df["status"] == "ok", "train_dataset"]), key=lambda t: (order.index(t) if t in order else len(order), t))


def ood_of(df) -> list[str]:
    """The OOD sets paired with the records' tasks (each scored with its paired task's model)."""
    return [o for t in tasks_of(df) for o in task_eval_sets(t)[1:]]


# OOD sets whose form the EI-trained methods have seen in training: arith_rev's template is the text
# of the inversion probe and of RevThink's backward question (a reversal test for the others only)
NEAR_EI = {"arith_rev": "near-distribution for EI and RevThink"}


def _split(sets: Sequence[str], what: str, per_dataset: bool) -> list[Column]:
    cols = [Column(f"{d} ({what}{'; ' + NEAR_EI[d] if d in NEAR_EI else ''})", (d,)) for d in sets] \
        if per_dataset or len(sets) == 1 else []
    if len(sets) > 1:
        cols.append(Column(f"{what} avg over {len(sets)} (per-task models)", tuple(sets)))
    return cols


def table_columns(name: str, df) -> list[Column]:
    """Our columns of one table for these records: Table 1 every training task and their average,
    Table 2 every paired OOD set and their average, Tables 3-4 both; Tables 1-2 add the 12-dataset
    suite's average of each model the run scored on it."""
    held, ood = tasks_of(df), ood_of(df)
    if name in ("table1", "table2"):
        sets, what, avg, suite_sets = ((held, "held-in", "held-in avg8", HELD_IN) if name == "table1"
                                       else (ood, "OOD", "OOD avg4", OOD))
        cols = _split(sets, what, True)
        suite = df[(df["eval"] == "suite") & (df["status"] == "ok")]
        for task, rows in suite.groupby("train_dataset", sort=False):  # one model per column, never mixed
            if set(suite_sets) <= set(rows["dataset"]):
                cols.append(Column(f"suite, one {task} model: {avg}", tuple(suite_sets), "suite", task))
        return cols
    return _split(held, "held-in", True) + _split(ood, "OOD", True)


def _interval(parts, ks, ns):
    """Wilson for one dataset, else the interval of a mean of independent accuracies (in %)."""
    lo, hi = wilson_interval(ks[0], ns[0]) if len(parts) == 1 else mean_interval(ks, ns)
    return 100 * lo, 100 * hi


def cell_stats(df, key: str, datasets: str | Sequence[str], source: str = "task", task: str = "") -> dict:
    """Mean, interval and seeds of one method on one dataset or the mean over several (NaN when it has
    no result); a seed counts when it has every one of ``datasets``. ``task``: only the models trained
    on it (the suite's columns); otherwise each per-task dataset comes from the model of the task it
    belongs to (its own, or the one it is paired with)."""
    parts = (datasets,) if isinstance(datasets, str) else tuple(datasets)
    ok = df[(df["key"] == key) & (df["status"] == "ok") & (df["eval"] == source) & (df["dataset"].isin(parts))]
    if task:
        ok = ok[ok["train_dataset"] == task]
    elif source == "task":
        ok = ok[pd.Series([d in task_eval_sets(t) for t, d in zip(ok["train_dataset"], ok["dataset"])], index=ok.index,
                          dtype=bool)]
    by_seed = [g for _, g in ok.groupby("seed") if sorted(g["dataset"]) == sorted(parts)]
    if not by_seed:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "seeds": 0}
    means = [float(g["accuracy"].mean()) for g in by_seed]
    rows = pd.concat(by_seed)
    counted = not (rows["correct"].isna().any() or (rows["n"] <= 0).any())
    items = None
    if counted:  # per dataset, the seeds' mean count right out of one seed's items: each item counted once
        per = rows.groupby("dataset")[["correct", "n"]].sum().loc[list(parts)] / len(by_seed)
        items = _interval(parts, [float(k) for k in per["correct"]], [float(n) for n in per["n"]])
    if len(by_seed) == 1:
        low, high = items if items else (float("nan"), float("nan"))
        return {"mean": means[0], "low": low, "high": high, "seeds": 1}
    m, lo, hi = seed_interval(means)
    if items is not None:  # never narrower than one model's item-level interval (seeds that agree exactly)
        lo, hi = min(lo, items[0]), max(hi, items[1])
    return {"mean": m, "low": max(0.0, lo), "high": min(100.0, hi), "seeds": len(by_seed)}  # accuracies are in [0, 100]


def fmt(stats: dict) -> str:
    if stats["seeds"] == 0 or math.isnan(stats["mean"]):
        return "–"
    if math.isnan(stats["low"]):
        return f"{stats['mean']:.1f}"
    seeds = f" (n={stats['seeds']})" if stats["seeds"] > 1 else ""
    return f"{stats['mean']:.1f} [{max(0.0, stats['low']):.1f}, {min(100.0, stats['high']):.1f}]{seeds}"


def paper_value(paper, table: str, student: str, method: str | None, split: str) -> float:
    if method is None:
        return float("nan")
    hit = paper[(paper["table"] == table) & (paper["student"] == student) & (paper["method"] == method) & (paper["split"] == split)]
    return float(hit["value"].iloc[0]) if len(hit) else float("nan")


def build_table(name: str, df, paper):
    """One paper table: a row per method, our cells (formatted) and the paper's numbers beside them."""

    rows = []
    columns = table_columns(name, df)
    for key in TABLE_ROWS[name]:
        m = METHODS[key]
        row = {"method": m.label}
        status = df[df["key"] == key]["status"]
        for col in columns:
            row[f"ours: {col.title}"] = fmt(cell_stats(df, key, col.datasets, col.source, col.task))
        if name == "table3":
            row[f"ours: {LEAK_COLUMN}"] = fmt_leaks(df.attrs.get("leak_rates", {}).get(key))
        skipped = df[(df["key"] == key) & (df["status"] == "skipped")]
        partly = (status == "ok").any()  # then say which task's run was skipped
        reasons = dict.fromkeys(f"{t}: {r}" if partly else r for t, r in zip(skipped["train_dataset"], skipped["reason"]))
        row["note"] = "not run in these results" if status.empty else "; ".join(list(reasons) + _notes(name, key, df))
        for student in PAPER_STUDENTS:
            v = paper_value(paper, name, student, PAPER_NAMES[name].get(key), PAPER_SPLIT[name])
            row[f"paper: {student} ({PAPER_SPLIT[name]})"] = "–" if math.isnan(v) else f"{v:.2f}"
        rows.append(row)
    return pd.DataFrame(rows)


def write_tables(df, paper, out_dir: str | Path) -> dict[str, Path]:
    """Tables 1-4 as CSV and Markdown into ``out_dir``."""

    out_dir = Path(out_dir)
    paths = {}
    for name in ("table1", "table2", "table3", "table4"):
        table = build_table(name, df, paper)
        atomic_write_text(out_dir / f"{name}.csv", table.to_csv(index=False))
        atomic_write_text(out_dir / f"{name}.md", to_markdown(table))
        paths[name] = out_dir / f"{name}.md"
    return paths


# The paired comparisons the README reports: (method, baseline), each on every task's test sets.
PAIRED = (("exgrpo", "sft-grpo"), ("exgrpo", "exgrpo-nobonus"), ("exgrpo", "sft"), ("sft", "zero-shot"), ("sft", "skd"),
          ("exgrpo-revealing", "exgrpo"), ("exgrpo", "exgrpo-norevealing"))


def item_scores(layouts: Sequence[RunLayout], df, key: str, task: str, dataset: str) -> dict[int, dict[str, tuple[int, str]]]:
    """Per seed, each test item's (score, prompt) (score 1 right, 0 wrong) of method ``key`` trained on
    ``task`` on ``dataset``, read from the evaluation records of the run whose record ``df`` kept."""
    by_name = {lay.name: lay for lay in layouts}
    rows = df[(df["key"] == key) & (df["train_dataset"] == task) & (df["eval"] == "task") & (df["dataset"] == dataset)
              & (df["status"] == "ok")]
    out: dict[int, dict[str, tuple[int, str]]] = {}
    for r in rows.itertuples():
        path = by_name[r.run].task_eval_dir(r.run_id) / f"{dataset}.jsonl"
        if path.exists():
            out[int(r.seed)] = {i: (int(bool(x.get("correct_flexible"))), x.get("prompt", ""))
                                for i, x in item_records(path).items()}
    return out


def paired_comparisons(layouts: Sequence[RunLayout], pairs=PAIRED, datasets: Sequence[str] | None = None,
                       alpha: float = 0.05):
    """Method against baseline, item by item, on every task's test set and paired OOD sets (``datasets``:
    only these), both trained on the same task, over the seeds both ran and the items both scored with
    the same prompt: the accuracy difference with its 95% interval and p-value from
    ``evaluate.stats.seed_level_comparison`` (two seeds or more: over seeds and items; one seed: over
    items only, one model against one, and said so in ``interval covers``; zero-shot, untrained,
    stands beside every seed of the other method), each seed's difference, and the exact McNemar test on
    the first common seed's items (not on an EI-Test, whose probes are resampled by question). The
    verdict needs the interval to exclude zero and p < ``alpha`` (one seed: McNemar's p too)."""
    df = load_records(layouts)
    rows = []
    for task in tasks_of(df):
        ei = [ei_test_name(task)] if (df["dataset"] == ei_test_name(task)).any() else []  # Figure 1's EI-Test too
        sets = [d for d in task_eval_sets(task) + ei if datasets is None or d in datasets]
        for a, b in pairs:
            for ds in sets:
                rows.append(_compare(layouts, df, a, b, task, ds, alpha))
    return pd.DataFrame(rows)


def _untrained_for_every_seed(scores: dict, key: str, other: dict) -> dict:
    """An untrained method (zero-shot: one greedy evaluation, no training seed) stands beside each seed
    of the trained method it is compared with, so the comparison covers that method's seeds."""
    if METHODS[key].kind == "zero-shot" and len(scores) == 1:
        only = next(iter(scores.values()))
        return {s: only for s in other}
    return scores


def _compare(layouts, df, a: str, b: str, task: str, ds: str, alpha: float) -> dict:
    sa, sb = item_scores(layouts, df, a, task, ds), item_scores(layouts, df, b, task, ds)
    sa, sb = _untrained_for_every_seed(sa, a, sb), _untrained_for_every_seed(sb, b, sa)
    seeds = sorted(sa.keys() & sb.keys())
    row = {"method": METHODS[a].label, "baseline": METHODS[b].label, "train_dataset": task, "dataset": ds,
           "seeds": len(seeds)}
    items = sorted(set.intersection(*(set(sa[s]) & set(sb[s]) for s in seeds))) if seeds else []
    clustered = ds == ei_test_name(task)  # the EI-Test: about ten probes per test question, resampled together
    if clustered:  # the run's current EI-Test only (a file can hold an earlier build's records)
        items = sorted(set(items) & ei_test_ids(layouts, task))
    if not items:  # a skipped record says why (a probe-policy row that is the run's own ExGRPO training, OPD)
        why = df[df["key"].isin([a, b]) & (df["train_dataset"] == task) & (df["status"] == "skipped")]
        why = "; ".join(dict.fromkeys(f"{METHODS[k].label}: {r}" for k, r in zip(why["key"], why["reason"])))
        return {**row, "items": 0, "verdict": why or "not run in these results"}
    if any(sa[s][i][1] != sb[s][i][1] for s in seeds for i in items):
        return {**row, "items": 0, "verdict": "not comparable: the items were asked with other prompts"}
    first = [[sb[s][i][0] for s in seeds] for i in items]
    second = [[sa[s][i][0] for s in seeds] for i in items]
    cmp = seed_level_comparison(first, second, clusters=[ei_source(i) for i in items] if clustered else None)
    only_a = sum(x[0] and not y[0] for x, y in zip(second, first))
    only_b = sum(y[0] and not x[0] for x, y in zip(second, first))
    n = len(items) * len(seeds)
    p_mcnemar = math.nan if clustered else mcnemar_exact(only_a, only_b)  # McNemar takes pairs as independent
    shown = cmp["p"] < alpha and (len(seeds) > 1 or clustered or p_mcnemar < alpha)
    better, worse = shown and cmp["low"] > 0, shown and cmp["high"] < 0
    verdict = "method better" if better else ("baseline better" if worse else "no difference shown")
    return {**row, "items": len(items), "method %": 100 * sum(map(sum, second)) / n,
            "baseline %": 100 * sum(map(sum, first)) / n, "difference": 100 * cmp["diff"],
            "low": 100 * cmp["low"], "high": 100 * cmp["high"], "p": cmp["p"], "interval covers": cmp["covers"],
            "per-seed differences": " ".join(f"{100 * d:+.1f}" for d in cmp["per_seed"]),
            "only method right": only_a, "only baseline right": only_b, "McNemar seed": seeds[0],
            "McNemar p": p_mcnemar, "verdict": cmp["covers"] if math.isnan(cmp["p"]) else verdict}


def _fmt_p(p: float) -> str:
    """A p-value for the table; a bootstrap p of 0 means below the resolution of the resamples."""
    return "n/a" if math.isnan(p) else ("< 0.001" if p == 0 else f"{p:.3g}")


def comparisons_markdown(table) -> str:
    lines = ["| method | baseline | dataset | seeds | items | method % | baseline % | difference [95%] | interval covers | "
             "per-seed differences | p | McNemar p (first seed) | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        if not r.get("items"):
            lines.append(f"| {r['method']} | {r['baseline']} | {r['dataset']} | {r['seeds']} | 0 | – | – | – | – | – | – | – | "
                         f"{r['verdict']} |")
            continue
        lines.append(f"| {r['method']} | {r['baseline']} | {r['dataset']} | {r['seeds']} | {r['items']} | "
                     f"{r['method %']:.1f} | {r['baseline %']:.1f} | {r['difference']:+.1f} " + ("[n/a]" if math.isnan(r["low"]) else
                     f"[{r['low']:+.1f}, {r['high']:+.1f}]") + " | "
                     f"{r['interval covers']} | {r['per-seed differences']} | {_fmt_p(r['p'])} | {_fmt_p(r['McNemar p'])} | "
                     f"{r['verdict']} |")
    return "\n".join(lines) + "\n"


def write_comparisons(table, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "comparisons.csv", table.to_csv(index=False))
    atomic_write_text(out_dir / "comparisons.md", comparisons_markdown(table))
    return out_dir / "comparisons.md"


def headline(df) -> Column | None:
    """Figures 4-5's y axis: the one training task's column, or the average over the tasks (None: no task)."""
    held = _split(tasks_of(df), "held-in", False)
    return held[-1] if held else None


def token_points(df, column: Column | None = None):
    """Figure 5's data: per method, mean training tokens (per task model, over seeds and tasks) and its
    accuracy (on ``headline``)."""

    column = column or headline(df)
    rows = []
    if column is None:
        return pd.DataFrame(rows)
    ok = df[(df["status"] == "ok") & (df["eval"] == column.source) & (df["dataset"].isin(column.datasets))]
    for key, grp in ok.groupby("key", sort=False):
        s = cell_stats(df, key, column.datasets, column.source)
        if s["seeds"]:
            rows.append({"key": key, "label": METHODS[key].label, "kind": METHODS[key].kind,
                         "train_tokens": float(grp.drop_duplicates(["train_dataset", "seed"])["train_tokens"].mean()), **s})
    return pd.DataFrame(rows)


def reward_curves(layouts: Sequence[RunLayout], keys=("exgrpo",)):
    """Figure 3's data: per-step R_base, r_dsu and the bonus's fired and effective shares of the
    ExGRPO runs (every seed) of ``layouts`` (``bonus_effective`` NaN where it was not logged)."""

    frames = []
    for lay in layouts:
        for path in sorted(lay.train_root.glob(f"*/{TRAIN_LOG}")):
            rid = path.parent.name
            if method_of(rid)[0] not in keys:
                continue
            log = read_train_log(path)
            if "exgrpo/r_base" not in log.columns:
                continue
            log = log[log["exgrpo/r_base"].notna()]
            frames.append(pd.DataFrame({"run_id": rid, "step": log["step"], "r_base": log["exgrpo/r_base"],
                                        "r_dsu": log.get("exgrpo/r_dsu"), "bonus_fired": log.get("exgrpo/bonus_fired"),
                                        "bonus_effective": log.get("exgrpo/bonus_effective")}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["run_id", "step", "r_base", "r_dsu", "bonus_fired", "bonus_effective"])
