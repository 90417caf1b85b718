"""Baselines, ablations and the data-fraction study as configurations of the existing stages.

Every method of the paper's Tables 1-4 and Figures 4-5 is a ``Method``: zero-shot, an SFT run on
some data (the EI probes, one EI rule, a baseline's data, a fraction of the questions) or an RL run
(ExGRPO or plain GRPO, with or without the aux SFT loss) that starts from another method or from
the base student. ``run_methods`` trains what is missing, evaluates it, and writes one record per
(method, seed) under ``<run>/experiments/``; ``collect`` gathers those records into one long table
that notebook 06 turns into the paper's tables and figures.

Run folders: ``<run>/train/<run_id>`` and ``<run>/eval_arith/<run_id>`` with ``run_id`` = the method
key for seed 0 and ``<key>-s<seed>`` otherwise, so notebooks 02 (``sft``) and 03 (``exgrpo``) and
this module share their seed-0 runs. A finished run is reused only when its recorded settings equal
the requested ones; otherwise the run stops with an error naming the folder (nothing is overwritten).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

from .io import atomic_write_json

SYNTHETIC_EVAL = ("arith", "arith_rev")


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    kind: str  # "zero-shot" | "sft" | "rl" | "opd"
    data: str = "ei"  # sft: "ei" (probe dataset) or a baseline name (baselines.BASELINES)
    rules: tuple[str, ...] = ()  # sft on "ei": only these rules' probes (Table 4)
    fraction: float = 1.0  # share of the training questions (Figure 4)
    init: str = ""  # rl: the method it starts from (its seed's run), or "base" (cold start)
    mode: str = "exgrpo"  # rl: "exgrpo" or "grpo"
    aux: bool = True  # rl: Eq. 8's aux SFT loss on (lambda from the settings) or off (lambda = 0)


def _methods() -> dict[str, Method]:
    from .baselines import BASELINES, LABELS

    ms = [
        Method("zero-shot", "Zero-shot", "zero-shot"),
        Method("sft", "SFT (EI, all rules)", "sft"),
        Method("exgrpo", "ExGRPO (SFT + ExGRPO + aux SFT)", "rl", init="sft", mode="exgrpo", aux=True),
        Method("sft-grpo", "SFT + GRPO (R_base)", "rl", init="sft", mode="grpo", aux=False),
        Method("sft-grpo-aux", "SFT + GRPO (R_base) + aux SFT", "rl", init="sft", mode="grpo", aux=True),
        Method("cold-grpo", "RL cold start (R_base)", "rl", init="base", mode="grpo", aux=False),
        Method("cold-grpo-aux", "RL cold start + aux SFT", "rl", init="base", mode="grpo", aux=True),
        Method("opd", "On-Policy Distillation", "opd"),
    ]
    ms += [Method(b.replace("_", "-"), LABELS[b], "sft", data=b) for b in BASELINES]
    for rule, name in (("counterfactual", "counterfactual"), ("causal_verification", "causal"),
                       ("explanatory_challenge", "explanatory challenge")):
        ms.append(Method(f"sft-rule-{rule}", f"SFT single rule ({name})", "sft", rules=(rule,)))
    for p in (0.1, 0.25, 0.5):
        ms.append(Method(f"sft-p{p}", f"SFT (p = {p})", "sft", fraction=p))
        ms.append(Method(f"exgrpo-p{p}", f"ExGRPO (p = {p})", "rl", init=f"sft-p{p}", mode="exgrpo", aux=True))
    return {m.key: m for m in ms}


METHODS = _methods()

# Which methods each table or figure needs (notebook 05 runs the union of the groups it is given).
GROUPS = {
    "core": ("zero-shot", "sft", "sft-grpo", "exgrpo"),
    "baselines": ("zero-shot", "skd", "dss", "rephrase", "question-aug", "answer-aug", "revthink", "opd", "exgrpo"),
    "table3": ("sft", "cold-grpo", "cold-grpo-aux", "sft-grpo", "sft-grpo-aux", "exgrpo"),
    "table4": ("rephrase", "sft-rule-counterfactual", "sft-rule-causal_verification", "sft-rule-explanatory_challenge", "sft"),
    "fraction": ("sft-p0.1", "exgrpo-p0.1", "sft-p0.25", "exgrpo-p0.25", "sft-p0.5", "exgrpo-p0.5", "sft", "exgrpo"),
}
FRACTION_OF = {"sft": 1.0, "exgrpo": 1.0, **{m.key: m.fraction for m in METHODS.values() if m.key.endswith(("p0.1", "p0.25", "p0.5"))}}


def expand(groups: Sequence[str] = (), keys: Sequence[str] = ()) -> list[str]:
    """Method keys of the given groups plus ``keys``, each once, dependencies first."""
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise ValueError(f"unknown group(s) {unknown}; known: {', '.join(GROUPS)}")
    wanted = [k for g in groups for k in GROUPS[g]] + list(keys)
    bad = [k for k in wanted if k not in METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; known: {', '.join(METHODS)}")
    order: list[str] = []

    def visit(k: str):
        m = METHODS[k]
        if m.kind == "rl" and m.init != "base":
            visit(m.init)
        if k not in order:
            order.append(k)

    for k in wanted:
        visit(k)
    return order


def run_id(key: str, seed: int) -> str:
    return key if seed == 0 else f"{key}-s{seed}"


def opd_status(teacher: str, teacher_model: str = "") -> tuple[bool, str]:
    """On-Policy Distillation needs the teacher's token distribution on the student's own samples, so
    a local teacher model that shares the student's tokenizer. Returns (runnable, reason if not)."""
    if teacher == "program":
        return False, ("skipped: the program teacher has no token distribution to distil from, and no "
                       "teacher LLM sharing the student's tokenizer runs offline on 2 CPU cores")
    if teacher == "openai":
        return False, ("skipped: an API teacher (e.g. Gemini-1.5-Pro) returns text, not the full next-token "
                       "distributions on student samples that on-policy distillation needs; give a local teacher "
                       "with the student's tokenizer (teacher transformers/vllm, teacher_model=...)")
    if not teacher_model:
        return False, f"skipped: teacher {teacher!r} needs teacher_model (a local model with the student's tokenizer)"
    return True, ""


# ---------------------------------------------------------------------------------------------
# Statistics over seeds

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def seed_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the 95% Student-t interval of the mean over seeds; NaN bounds for one seed."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return (float("nan"),) * 3
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return (m, float("nan"), float("nan"))
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
    t = T_975.get(len(vals) - 1, 1.96)
    half = t * sd / math.sqrt(len(vals))
    return (m, m - half, m + half)


# ---------------------------------------------------------------------------------------------
# Running

@dataclass
class Context:
    """Everything ``run_methods`` needs besides the method list (notebook 05's parameters)."""
    run: Path  # results/runs/<run_name>
    student: str
    train_dataset: str
    sft_settings: object  # sft.SFTSettings of the main SFT run (notebook 02)
    rl_settings: object  # exgrpo.ExGRPOSettings of the main ExGRPO run (notebook 03)
    teacher: str = "program"
    teacher_model: str = ""  # On-Policy Distillation: a local teacher with the student's tokenizer
    eval_limit: int = 50
    eval_max_new_tokens: int = 96
    eval_batch_size: int = 50
    suite: tuple[str, ...] = ()  # the 12 datasets: evaluated for the methods in suite_keys
    suite_keys: tuple[str, ...] = ()
    suite_limit: int = 10
    suite_max_new_tokens: int = 160
    suite_batch_size: int = 60


def _check_reuse(summary_path: Path, want: dict, what: str, defaults: dict | None = None) -> dict | None:
    """The finished summary when its settings equal ``want``; None when there is none; error otherwise.

    ``defaults``: values for settings a summary written by an older version does not record."""
    if not summary_path.exists():
        return None
    have = json.loads(summary_path.read_text())
    want = json.loads(json.dumps(want))  # tuples become lists, as stored
    stored = {**json.loads(json.dumps(defaults or {})), **have["settings"]}
    diff = {k: (stored.get(k), v) for k, v in want.items() if stored.get(k) != v}
    if diff:
        raise RuntimeError(f"{summary_path.parent} holds a finished {what} run with other settings {diff} "
                           "(stored, requested). Use another run name, or delete that folder to retrain.")
    if not (summary_path.parent / "final").exists():
        return None
    if "train_tokens" not in have:  # older summaries: the trainer's own count is in the log
        from .trainlog import read_train_log

        log = read_train_log(summary_path.parent / "train_log.jsonl")
        have["train_tokens"] = int(log["num_tokens"].max()) if "num_tokens" in log else 0
    return have


def _train_method(m: Method, seed: int, ctx: Context, done: dict[str, dict]) -> dict:
    from . import baselines, exgrpo, probes, sft

    out_dir = ctx.run / "train" / run_id(m.key, seed)
    if m.kind == "sft":
        settings = replace(ctx.sft_settings, seed=seed, rules=tuple(m.rules), data_fraction=m.fraction * ctx.sft_settings.data_fraction)
        reused = _check_reuse(out_dir / "sft_summary.json", asdict(settings), "SFT", asdict(type(settings)()))
        if reused:
            if reused.get("data", "ei") != m.data:
                raise RuntimeError(f"{out_dir} holds an SFT run on {reused.get('data', 'ei')!r} data, not {m.data!r}")
            return reused
        if m.data == "ei":
            records = probes.load_probe_dataset(ctx.run / "ei" / ctx.train_dataset / "probe_dataset.jsonl")
            summary = sft.train_sft(model=ctx.student, probe_records=records, out_dir=out_dir, settings=settings)
        else:
            data = baselines.load_baseline_data(baseline_data_path(ctx.run, ctx.train_dataset))
            summary = sft.train_sft(model=ctx.student, rows=baselines.baseline_rows(data, m.data), out_dir=out_dir, settings=settings)
        summary["data"] = m.data
        atomic_write_json(out_dir / "sft_summary.json", summary)
        return summary
    # rl
    lam = ctx.rl_settings.aux_lambda if m.aux else 0.0
    settings = replace(ctx.rl_settings, seed=seed, mode=m.mode, aux_lambda=lam)
    reused = _check_reuse(out_dir / "rl_summary.json", asdict(settings), "RL", asdict(type(settings)()))
    if reused:
        return reused
    init = ctx.student if m.init == "base" else done[m.init]["final"]
    records = probes.load_probe_dataset(ctx.run / "ei" / ctx.train_dataset / "probe_dataset.jsonl")
    if m.init != "base":
        frac = FRACTION_OF.get(m.init, 1.0)  # ExGRPO on the same questions as its SFT warm-up
        records = sft.subsample_questions(records, frac * ctx.sft_settings.data_fraction, seed)
    return exgrpo.train_exgrpo(init_model=init, probe_records=records, out_dir=out_dir, settings=settings)


def _train_opd(seed: int, ctx: Context) -> dict:
    from . import distill, probes

    s = ctx.sft_settings
    settings = distill.OPDSettings(epochs=s.epochs, batch_size=s.batch_size, learning_rate=s.learning_rate, lora=s.lora,
                                   lora_r=s.lora_r, lora_alpha=s.lora_alpha, max_length=s.max_length, seed=seed,
                                   max_new_tokens=ctx.rl_settings.max_final_tokens)
    out_dir = ctx.run / "train" / run_id("opd", seed)
    reused = _check_reuse(out_dir / "opd_summary.json", asdict(settings), "OPD", asdict(distill.OPDSettings()))
    if reused:
        return reused
    records = probes.load_probe_dataset(ctx.run / "ei" / ctx.train_dataset / "probe_dataset.jsonl")
    return distill.train_opd(student=ctx.student, teacher=ctx.teacher_model, probe_records=records, out_dir=out_dir,
                             settings=settings)


def baseline_data_path(run: Path, dataset: str) -> Path:
    return run / "baselines" / dataset / "baseline_data.jsonl"


def training_cost(key: str, seed: int, done: dict[str, dict]) -> tuple[int, float]:
    """(tokens, seconds) of everything trained to get this method: RL runs add their warm-up's cost."""
    m = METHODS[key]
    s = done.get(run_id(key, seed)) or {}
    tokens, seconds = int(s.get("train_tokens") or 0), float(s.get("seconds") or 0)
    if m.kind == "rl" and m.init != "base":
        t2, s2 = training_cost(m.init, seed, done)
        tokens, seconds = tokens + t2, seconds + s2
    return tokens, round(seconds, 1)


def plan(groups: Sequence[str], seeds: Sequence[int], seed0_only_groups: Sequence[str] = ()) -> list[tuple[str, int]]:
    """(method key, seed) pairs to run: seed 0 of every method first (so an interrupted run still has
    whole single-seed tables), then the other seeds method by method in the order of ``groups``.
    ``seed0_only_groups`` get seed 0 only; zero-shot (greedy, untrained) and skipped kinds run once."""
    if not seeds:
        raise ValueError("seeds must not be empty")
    all_keys = expand(list(groups) + list(seed0_only_groups))
    out = [(key, seeds[0]) for key in all_keys]
    for key in expand(groups):
        if METHODS[key].kind in ("zero-shot", "opd"):
            continue
        out += [(key, seed) for seed in seeds[1:]]
    return out


def context_from_run(run: Path, *, student: str, train_dataset: str, **kwargs) -> Context:
    """A Context whose main SFT and RL settings are those notebooks 02 and 03 recorded in ``run``."""
    from .exgrpo import ExGRPOSettings
    from .sft import SFTSettings

    settings = {}
    for what, name, cls in (("sft", "sft_summary.json", SFTSettings), ("exgrpo", "rl_summary.json", ExGRPOSettings)):
        path = Path(run) / "train" / what / name
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run notebooks 01-03 of this run first (e.g. make reproduce)")
        stored = json.loads(path.read_text())["settings"]
        stored = {k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()}
        settings[what] = cls(**stored)
    probe_path = Path(run) / "ei" / train_dataset / "probe_dataset.jsonl"
    if not probe_path.exists():
        raise FileNotFoundError(f"{probe_path} is missing: run notebook 01 of this run first")
    return Context(run=Path(run), student=student, train_dataset=train_dataset, sft_settings=settings["sft"],
                   rl_settings=settings["exgrpo"], **kwargs)


def _same_record(path: Path, rec: dict) -> dict | None:
    """The record stored at ``path`` when it equals ``rec`` (its wall time aside), else None."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    same = {k: v for k, v in old.items() if k != "wall_seconds"} == json.loads(json.dumps(rec))
    return old if same else None


def run_plan(pairs: Sequence[tuple[str, int]], ctx: Context, *, log=print) -> list[dict]:
    """Train (or reuse), evaluate and record every (method, seed) pair; returns the records."""
    import pandas as pd

    from .evaluation import run_evaluation

    out = []
    done: dict[str, dict] = {}
    for n, (key, seed) in enumerate(pairs, 1):
        m = METHODS[key]
        rid = run_id(key, seed)
        record_path = ctx.run / "experiments" / f"{rid}.json"
        rec = {"run_id": rid, "key": key, "label": m.label, "kind": m.kind, "seed": seed, "status": "ok",
               "reason": "", "train_tokens": 0, "train_seconds": 0.0, "accuracy": {}, "n": {}, "correct": {}}
        t0 = time.time()
        if m.kind == "opd":
            ok, reason = opd_status(ctx.teacher, ctx.teacher_model)
            if ok:
                try:
                    summary = _train_opd(seed, ctx)
                except ValueError as exc:  # e.g. the tokenizers differ
                    ok, reason = False, f"skipped: {exc}"
            if not ok:
                rec.update(status="skipped", reason=reason)
                log(f"[{n}/{len(pairs)}] {rid}: {reason}")
                atomic_write_json(record_path, rec)
                out.append(rec)
                continue
            done[rid] = summary
            model = summary["final"]
            rec["train_tokens"], rec["train_seconds"] = training_cost(key, seed, done)
        elif m.kind == "zero-shot":
            model = ctx.student
        else:
            log(f"[{n}/{len(pairs)}] {rid}: training")
            summary = _train_method(m, seed, ctx, done)
            done[rid] = summary
            model = summary["final"]
            rec["train_tokens"], rec["train_seconds"] = training_cost(key, seed, done)
            rec["train_steps"] = summary.get("steps")
        log(f"[{n}/{len(pairs)}] {rid}: evaluating")
        table = run_evaluation(model=model, datasets=list(SYNTHETIC_EVAL), out_dir=ctx.run / "eval_arith" / rid,
                               limit_per_dataset=ctx.eval_limit, sample_seed=0, max_new_tokens=ctx.eval_max_new_tokens,
                               batch_size=ctx.eval_batch_size, label=m.label)
        if ctx.suite and key in ctx.suite_keys and seed == 0:
            suite = run_evaluation(model=model, datasets=list(ctx.suite), out_dir=ctx.run / "eval" / rid,
                                   limit_per_dataset=ctx.suite_limit, sample_seed=0,
                                   max_new_tokens=ctx.suite_max_new_tokens, batch_size=ctx.suite_batch_size, label=m.label)
            table = pd.concat([table, suite], ignore_index=True)
        for _, r in table.iterrows():
            rec["accuracy"][r["dataset"]] = round(float(r["accuracy"]), 4)
            rec["n"][r["dataset"]] = int(r["n"])
            if "avg" not in r["dataset"]:
                rec["correct"][r["dataset"]] = int(round(r["accuracy"] * r["n"] / 100))
        stored = _same_record(record_path, rec)
        if stored:  # reused unchanged: keep the record (and time) of the run that made it
            rec = stored
        else:
            rec["wall_seconds"] = round(time.time() - t0, 1)
            atomic_write_json(record_path, rec)
        log(f"[{n}/{len(pairs)}] {rid}: " + ", ".join(f"{d} {rec['accuracy'][d]:.1f}" for d in SYNTHETIC_EVAL))
        out.append(rec)
    return out


def collect(run: Path):
    """All records under ``<run>/experiments`` as a long table: one row per (method, seed, dataset)."""
    import pandas as pd

    rows = []
    for path in sorted((Path(run) / "experiments").glob("*.json")):
        rec = json.loads(path.read_text())
        base = {k: rec[k] for k in ("run_id", "key", "label", "kind", "seed", "status", "reason", "train_tokens", "train_seconds")}
        if rec["status"] != "ok":
            rows.append({**base, "dataset": "", "n": 0, "correct": 0, "accuracy": float("nan")})
            continue
        for ds, acc in rec["accuracy"].items():
            rows.append({**base, "dataset": ds, "n": rec["n"].get(ds, 0), "correct": rec["correct"].get(ds), "accuracy": acc})
    return pd.DataFrame(rows)
