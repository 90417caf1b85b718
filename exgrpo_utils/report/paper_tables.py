"""The paper's Tables 1-4 and the data of Figures 3-5, from ``results/`` alone (notebook 06).

Input: the long table of ``experiments.runs.collect`` (one row per method, seed and dataset) and the
paper's reported numbers (``report.reporting.paper_results``). Our cells read ``mean [low, high]``: with
several seeds the mean over seeds and a 95% Student-t interval over seeds, widened where needed to
the item-level interval of all seeds' items pooled (seeds that agree exactly get no zero-width
interval); with one seed the accuracy and its 95% Wilson interval over the test items. The paper
reports averages over its 8 held-in (4 OOD) datasets for 7B students; our columns are the
synthetic held-in ``arith``, its reverse ``arith_rev`` (OOD) and the averages over the 12
datasets' CPU subsamples (seed 0 only), for the CPU student.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..common.files import atomic_write_text, read_train_log
from ..common.layout import TRAIN_LOG, RunLayout, run_id
from ..data.datasets import HELD_IN, OOD
from ..evaluate.evaluation import item_records
from ..evaluate.stats import mcnemar_exact, mean_interval, paired_bootstrap, seed_interval, wilson_interval
from ..experiments.methods import GROUPS, METHODS
from ..experiments.runs import collect
from .reporting import to_markdown

PAPER_STUDENTS = ("Qwen2.5-7B-Instruct", "Gemma-7B-it")
AVERAGES = {"held-in-avg8": HELD_IN, "ood-avg4": OOD}

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
TABLE_COLUMNS = {  # our columns per table: dataset name in the records -> column title
    "table1": {"arith": "arith (held-in)", "held-in-avg8": "12-dataset subsample: held-in avg8"},
    "table2": {"arith_rev": "arith_rev (OOD)", "ood-avg4": "12-dataset subsample: OOD avg4"},
    "table3": {"arith": "arith (held-in)", "arith_rev": "arith_rev (OOD)"},
    "table4": {"arith": "arith (held-in)", "arith_rev": "arith_rev (OOD)"},
}
PAPER_SPLIT = {"table1": "held-in-avg8", "table2": "ood-avg4", "table3": "held-in-avg8", "table4": "held-in-avg8"}


def load_records(layouts: Sequence[RunLayout]):
    """``experiments.runs.collect`` over several runs; a run_id in a later run replaces an earlier one."""

    frames = [collect(lay) for lay in layouts if lay.records_dir.is_dir()]
    if not frames:
        raise FileNotFoundError(f"no experiment records under {', '.join(str(lay.root) for lay in layouts)}: "
                                "run notebook 05 first")
    df = pd.concat(frames, ignore_index=True)
    return df.drop_duplicates(["run_id", "dataset"], keep="last").reset_index(drop=True)


def cell_stats(df, key: str, dataset: str) -> dict:
    """Mean, interval and seeds of one method on one dataset (NaN when it has no result)."""
    rows = df[(df["key"] == key) & (df["dataset"] == dataset) & (df["status"] == "ok")]
    if rows.empty:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "seeds": 0}
    if len(rows) == 1 and dataset in AVERAGES:  # one seed: the interval of a mean of independent accuracies
        parts = df[(df["run_id"] == rows.iloc[0]["run_id"]) & (df["dataset"].isin(AVERAGES[dataset]))]
        if len(parts) == len(AVERAGES[dataset]):
            lo, hi = mean_interval([int(c) for c in parts["correct"]], [int(n) for n in parts["n"]])
            return {"mean": float(rows.iloc[0]["accuracy"]), "low": 100 * lo, "high": 100 * hi, "seeds": 1}
    if len(rows) == 1:
        r = rows.iloc[0]
        if r["correct"] is not None and not (isinstance(r["correct"], float) and math.isnan(r["correct"])) and r["n"]:
            lo, hi = wilson_interval(int(r["correct"]), int(r["n"]))
            return {"mean": float(r["accuracy"]), "low": 100 * lo, "high": 100 * hi, "seeds": 1}
        return {"mean": float(r["accuracy"]), "low": float("nan"), "high": float("nan"), "seeds": 1}
    m, lo, hi = seed_interval(rows["accuracy"].tolist())
    pooled = _pooled_interval(df, rows, dataset)
    if pooled is not None:  # never narrower than the item-level uncertainty (seeds that agree exactly)
        lo, hi = min(lo, pooled[0]), max(hi, pooled[1])
    return {"mean": m, "low": max(0.0, lo), "high": min(100.0, hi), "seeds": len(rows)}  # accuracies are in [0, 100]


def _pooled_interval(df, rows, dataset: str):
    """The item-level 95% interval (in %) of several seeds' results pooled, or None without counts.

    One dataset: Wilson over all seeds' items together. An average: ``mean_interval`` over the
    pooled counts of its datasets. ``cell_stats`` reports the union of this and the t-interval over
    seeds, so that seeds which agree exactly (say 0% three times) still get an honest width.
    """
    parts = [dataset] if dataset not in AVERAGES else list(AVERAGES[dataset])
    ks, ns = [], []
    for name in parts:
        hit = df[df["run_id"].isin(rows["run_id"]) & (df["dataset"] == name) & (df["status"] == "ok")]
        if len(hit) != len(rows) or hit["correct"].isna().any() or hit["n"].isna().any():
            return None
        ks.append(int(hit["correct"].sum()))
        ns.append(int(hit["n"].sum()))
    if dataset in AVERAGES:
        lo, hi = mean_interval(ks, ns)
    else:
        lo, hi = wilson_interval(ks[0], ns[0])
    return 100 * lo, 100 * hi


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
    for key in TABLE_ROWS[name]:
        m = METHODS[key]
        row = {"method": m.label}
        status = df[df["key"] == key]["status"]
        for ds, title in TABLE_COLUMNS[name].items():
            row[f"ours: {title}"] = fmt(cell_stats(df, key, ds))
        if len(status) and (status == "skipped").all():
            row["note"] = df[df["key"] == key]["reason"].iloc[0]
        elif status.empty:
            row["note"] = "not run in these results"
        else:
            row["note"] = ""
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


# The paired comparisons the README reports: (method, baseline), each on the held-in and the reversed set.
PAIRED = (("exgrpo", "sft-grpo"), ("exgrpo", "sft"), ("sft", "zero-shot"), ("sft", "skd"))
PAIRED_DATASETS = ("arith", "arith_rev")
MAX_SEEDS = 10


def item_scores(layouts: Sequence[RunLayout], key: str, dataset: str) -> dict[int, dict[str, tuple[int, str]]]:
    """Per seed, each test item's (score, prompt) (score 1 right, 0 wrong) of method ``key`` on
    ``dataset``, read from the evaluation records (a later layout's run replaces an earlier one's)."""
    out: dict[int, dict[str, tuple[int, str]]] = {}
    for seed in range(MAX_SEEDS):
        for lay in layouts:
            path = lay.task_eval_dir(run_id(key, seed)) / f"{dataset}.jsonl"
            if path.exists():
                out[seed] = {i: (int(bool(r.get("correct_flexible"))), r.get("prompt", ""))
                             for i, r in item_records(path).items()}
    return out


def paired_comparisons(layouts: Sequence[RunLayout], pairs=PAIRED, datasets=PAIRED_DATASETS, alpha: float = 0.05):
    """Method against baseline, item by item: over the seeds both ran and the items both scored with
    the same prompt, the accuracy difference with a 95% paired-bootstrap interval (items resampled
    with all their seeds) and its p-value, and the exact McNemar test on the first common seed's items
    (one pair per item: pooling an item's seeds would count correlated pairs as independent)."""
    rows = []
    for a, b in pairs:
        for ds in datasets:
            sa, sb = item_scores(layouts, a, ds), item_scores(layouts, b, ds)
            seeds = sorted(sa.keys() & sb.keys())
            row = {"method": METHODS[a].label, "baseline": METHODS[b].label, "dataset": ds, "seeds": len(seeds)}
            items = sorted(set.intersection(*(set(sa[s]) & set(sb[s]) for s in seeds))) if seeds else []
            if not items:
                rows.append({**row, "items": 0, "verdict": "not run in these results"})
                continue
            if any(sa[s][i][1] != sb[s][i][1] for s in seeds for i in items):
                rows.append({**row, "items": 0, "verdict": "not comparable: the items were asked with other prompts"})
                continue
            first = [[sb[s][i][0] for s in seeds] for i in items]
            second = [[sa[s][i][0] for s in seeds] for i in items]
            boot = paired_bootstrap(first, second)
            only_a = sum(x[0] and not y[0] for x, y in zip(second, first))
            only_b = sum(y[0] and not x[0] for x, y in zip(second, first))
            n = len(items) * len(seeds)
            p_mcnemar = mcnemar_exact(only_a, only_b)
            better = boot["low"] > 0 and p_mcnemar < alpha
            worse = boot["high"] < 0 and p_mcnemar < alpha
            rows.append({**row, "items": len(items), "method %": 100 * sum(map(sum, second)) / n,
                         "baseline %": 100 * sum(map(sum, first)) / n, "difference": 100 * boot["diff"],
                         "low": 100 * boot["low"], "high": 100 * boot["high"], "bootstrap p": boot["p"],
                         "only method right": only_a, "only baseline right": only_b, "McNemar seed": seeds[0],
                         "McNemar p": p_mcnemar,
                         "verdict": "method better" if better else ("baseline better" if worse else "no difference shown")})
    return pd.DataFrame(rows)


def _fmt_p(p: float) -> str:
    """A p-value for the table; a bootstrap p of 0 means below the resolution of the resamples."""
    return "< 0.001" if p == 0 else f"{p:.3g}"


def comparisons_markdown(table) -> str:
    lines = ["| method | baseline | dataset | seeds | items | method % | baseline % | difference [95%] | "
             "bootstrap p | McNemar p (first seed) | verdict |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        if not r.get("items"):
            lines.append(f"| {r['method']} | {r['baseline']} | {r['dataset']} | {r['seeds']} | 0 | – | – | – | – | – | "
                         f"{r['verdict']} |")
            continue
        lines.append(f"| {r['method']} | {r['baseline']} | {r['dataset']} | {r['seeds']} | {r['items']} | "
                     f"{r['method %']:.1f} | {r['baseline %']:.1f} | {r['difference']:+.1f} [{r['low']:+.1f}, {r['high']:+.1f}] | "
                     f"{_fmt_p(r['bootstrap p'])} | {_fmt_p(r['McNemar p'])} | {r['verdict']} |")
    return "\n".join(lines) + "\n"


def write_comparisons(table, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "comparisons.csv", table.to_csv(index=False))
    atomic_write_text(out_dir / "comparisons.md", comparisons_markdown(table))
    return out_dir / "comparisons.md"


def fraction_points(df, dataset: str = "arith"):
    """Figure 4's data: p, method (SFT or ExGRPO), mean and interval over seeds."""

    pairs = [(1.0, "sft", "SFT"), (1.0, "exgrpo", "ExGRPO")]
    for p in (0.1, 0.25, 0.5):
        pairs += [(p, f"sft-p{p}", "SFT"), (p, f"exgrpo-p{p}", "ExGRPO")]
    rows = []
    for p, key, method in pairs:
        s = cell_stats(df, key, dataset)
        if s["seeds"]:
            rows.append({"p": p, "method": method, "key": key, **s})
    return pd.DataFrame(rows).sort_values(["method", "p"]) if rows else pd.DataFrame(
        columns=["p", "method", "key", "mean", "low", "high", "seeds"])


def token_points(df, dataset: str = "arith"):
    """Figure 5's data: per method, mean training tokens and mean accuracy over seeds."""

    rows = []
    ok = df[(df["status"] == "ok") & (df["dataset"] == dataset)]
    for key, grp in ok.groupby("key", sort=False):
        s = cell_stats(df, key, dataset)
        rows.append({"key": key, "label": METHODS[key].label, "kind": METHODS[key].kind,
                     "train_tokens": float(grp["train_tokens"].mean()), **s})
    return pd.DataFrame(rows)


def reward_curves(layouts: Sequence[RunLayout], keys=("exgrpo",)):
    """Figure 3's data: per-step R_base and r_dsu of the ExGRPO runs (every seed) of ``layouts``."""

    frames = []
    for lay in layouts:
        for path in sorted(lay.train_root.glob(f"*/{TRAIN_LOG}")):
            rid = path.parent.name
            key = rid.rsplit("-s", 1)[0] if rid.rsplit("-s", 1)[-1].isdigit() else rid
            if key not in keys:
                continue
            log = read_train_log(path)
            if "exgrpo/r_base" not in log.columns:
                continue
            log = log[log["exgrpo/r_base"].notna()]
            frames.append(pd.DataFrame({"run_id": rid, "step": log["step"], "r_base": log["exgrpo/r_base"],
                                        "r_dsu": log.get("exgrpo/r_dsu"), "bonus_fired": log.get("exgrpo/bonus_fired")}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run_id", "step", "r_base", "r_dsu", "bonus_fired"])
