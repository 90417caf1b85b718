"""Table 3's leak rates: how often an ExGRPO run's dialogues held a probe that states the original answer.

The probe policy (``rl_revealing_probes``: ``allow``, the paper's and the kit default, or ``exclude``;
the rows ``exgrpo-revealing`` and ``exgrpo-norevealing`` fix it) decides whether such probes may enter
the multi-turn dialogues; every RL
step logs how many Scenario A and Scenario B dialogues held one (``exgrpo/revealing_dialogues_A``,
``_B``, ``train.rollouts``). A run's dialogues of each scenario are its question-visits times the
rollouts of that scenario per question (``train.dialogue.plan_group``: ceil(G/2) A, floor(G/2) B),
the visits read from its ``question_visits.jsonl`` (the main process's, whose counts the log holds)
or its summary (``rl_summary.json``), G from the summary, so the rate is measured, not planned.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..infra.files import read_log_jsonl
from ..infra.layout import QUESTION_VISITS, RL_SUMMARY, TRAIN_LOG, RunLayout

COLUMN = "leak rate: dialogues holding an answer-stating probe (Scenario A; B)"


def run_leaks(log_rows: Sequence[dict], summary: dict, visits: int | None = None) -> dict | None:
    """One ExGRPO run's counts: ``{"A": revealing A, "A_of": A dialogues, "B": ..., "B_of": ...}``, or
    None for a run that logged no revealing counts (plain GRPO, SFT, a run made before the counts) or
    whose question-visits are unknown (a run made before they were logged). ``visits``: the main
    process's question-visits (its counts are the ones the train log holds; with several processes
    each logs its own); by default the summary's ``question_visits`` (one process)."""
    steps = [r for r in log_rows if "exgrpo/revealing_dialogues_A" in r]
    settings = summary.get("settings", {})
    visits = summary.get("question_visits") if visits is None else visits
    if not steps or settings.get("mode") != "exgrpo" or visits is None:
        return None
    G, visits = int(settings["G"]), int(visits)
    return {"A": round(sum(r["exgrpo/revealing_dialogues_A"] for r in steps)), "A_of": visits * (G - G // 2),
            "B": round(sum(r.get("exgrpo/revealing_dialogues_B", 0) for r in steps)), "B_of": visits * (G // 2)}


def main_process_visits(path: Path) -> int | None:
    """The main process's question-visits from a run's ``question_visits.jsonl`` (per step, the ids of
    every process, the main one first); None where the run has no such log."""
    if not path.exists():
        return None
    return sum(len(r["questions"][0]) for r in read_log_jsonl(path) if r.get("questions"))


def leak_rates(layouts: Sequence[RunLayout], df) -> dict[str, dict]:
    """Per method key: the counts of :func:`run_leaks` summed over the runs (task, seed) that ``df`` (the
    records of ``paper_tables.load_records``) kept, with ``runs``, how many runs they cover."""
    by_name = {lay.name: lay for lay in layouts}
    out: dict[str, dict] = {}
    kept = df[(df["status"] == "ok") & (df["kind"] == "rl")].drop_duplicates(["run", "run_id"])
    for r in kept.itertuples():
        folder = by_name[r.run].train_dir(r.run_id)
        if not (folder / TRAIN_LOG).exists() or not (folder / RL_SUMMARY).exists():
            continue
        log = read_log_jsonl(folder / TRAIN_LOG)  # names its file on a bad line
        visits = main_process_visits(folder / QUESTION_VISITS)
        try:
            counts = run_leaks(log, json.loads((folder / RL_SUMMARY).read_text()), visits)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{folder / RL_SUMMARY}: cannot count the run's dialogues ({type(e).__name__}: {e}); "
                             "it needs settings.mode and settings.G") from None
        if counts is None:
            continue
        total = out.setdefault(r.key, {"A": 0, "A_of": 0, "B": 0, "B_of": 0, "runs": 0})
        for name, n in counts.items():
            total[name] += n
        total["runs"] += 1
    return out


def fmt_leaks(counts: dict | None) -> str:
    """``"25.0% (16 of 64); 3.1% (2 of 64), 1 run"``; "–" for a method without dialogues."""
    if not counts:
        return "–"

    def one(k: int, n: int) -> str:
        return f"{100 * k / n:.1f}% ({k} of {n})" if n else "–"

    runs = counts["runs"]
    return f"{one(counts['A'], counts['A_of'])}; {one(counts['B'], counts['B_of'])}, {runs} run{'s' * (runs != 1)}"
