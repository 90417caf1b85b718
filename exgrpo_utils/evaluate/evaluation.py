"""Evaluation: single pass on the original question (paper), accuracy per dataset with a 95% interval.

Per-sample records go to ``<out_dir>/<dataset>.jsonl`` as each batch finishes, so a killed run
resumes where it stopped: finished ids are skipped, nothing is generated twice. ``config.json`` in
the same folder records everything that changes the outputs; resuming with other settings is an
error rather than a silent mix of two evaluations.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import pandas as pd

from ..data import answers, prompts
from ..data.datasets import DATASETS, HELD_IN, OOD, load
from ..data.example import Example
from ..infra.files import append_jsonl, atomic_write_json, atomic_write_text, folder_lock, read_log_jsonl
from ..infra.fingerprint import digest, move_aside
from ..infra.layout import RunLayout
from ..infra.paths import portable
from ..infra.progress import progress as make_progress
from ..infra.runsettings import RunSettings
from ..models.generation import Generator, SamplingConfig, make_generator
from ..models.registry import MODELS, default_device, model_identity, pick_dtype
from .settings import SuiteSettings, TaskEvalSettings
from .stats import mean_interval, wilson_interval

# torch, transformers and vllm are imported by the generators, only when a model is loaded.


@dataclass(frozen=True)
class EvalIdentity:
    """What determines an evaluation's outputs (batch size does not; it only changes speed): stored as
    ``config.json`` in the evaluation folder, and required to match before anything in it is reused.
    The model is identified by content (``model_fingerprint``), not only by its path."""
    model: str
    max_new_tokens: int = 1024  # paper lineage; CPU presets use less (kit default)
    prompt_version: str = prompts.PROMPT_VERSION
    system_prompt: str | None = None
    dtype: str = "float32"  # the dtype the weights ran in ("auto" resolved on the machine that ran it)
    backend: str = "fast"
    model_fingerprint: str = ""  # digest of models.registry.model_identity(model): the weights' files, or the registry source


class SettingsMismatchError(RuntimeError):
    pass


def check_settings(out_dir: Path, settings: EvalIdentity, *, fresh: bool = False, log=print) -> None:
    """Write ``config.json`` in a new evaluation folder, or require the one there to equal ``settings``;
    ``fresh`` moves a folder made with other settings (or another model) aside instead."""
    out_dir = Path(out_dir)
    path = out_dir / "config.json"
    wanted = asdict(settings)
    if path.exists():
        have = json.loads(path.read_text())
        have["model"] = portable(have.get("model", ""))  # records written before paths were stored relative
        diff = {k: (have.get(k), v) for k, v in wanted.items() if have.get(k) != v}
        if not diff:
            return
        if not fresh:
            raise SettingsMismatchError(
                f"{out_dir} holds an evaluation made with other settings or another model {diff} (stored, requested); "
                "nothing in it was reused. Use another run name, or rerun with fresh=true (--set fresh=true) to move it "
                f"aside ({out_dir.name}.replaced-<n>) and evaluate again.")
        log(f"[fresh] {out_dir} held an evaluation made with {diff} (stored, requested); moved it aside to "
            f"{move_aside(out_dir)}")
    atomic_write_json(path, wanted)


def score_record(example: Example, completion: str) -> dict:
    ext = answers.extract_both(example, completion)
    return {"extracted_strict": ext.strict, "extracted_flexible": ext.flexible,
            "correct_strict": answers.matches(example, ext.strict),
            "correct_flexible": answers.matches(example, ext.flexible)}


def evaluate_examples(generator: Generator, examples: Sequence[Example], out_path: str | Path, *,
                      sampling: SamplingConfig, batch_size: int = 32, progress: bool = True,
                      system_prompt: str | None = None) -> list[dict]:
    """Generate and score every example not yet in ``out_path``; return all records in example order."""
    return evaluate_pooled(generator, {"": (examples, out_path)}, sampling=sampling, batch_size=batch_size,
                           progress=progress, system_prompt=system_prompt)[""]


def evaluate_pooled(generator: Generator, jobs: dict[str, tuple[Sequence[Example], str | Path]], *,
                    sampling: SamplingConfig, batch_size: int = 32, progress: bool = True,
                    system_prompt: str | None = None, fresh: bool = False, log=print) -> dict[str, list[dict]]:
    """Several datasets at once: {name: (examples, out_path)} -> {name: records in example order}.
    A file whose records were asked other prompts is refused (``fresh``: moved aside and redone).

    Items of every dataset share batches, longest prompts first (less padding, full batches even for
    small per-dataset subsamples); each record goes to its own dataset's file as its batch finishes
    (with the kit's engine, as that item finishes: ``batch_size`` is then the sequences in flight)."""
    done: dict[str, dict[str, dict]] = {}
    todo: list[tuple[str, Example]] = []
    def rendered(ex: Example) -> str:
        return generator.render(prompts.messages_for(ex, system_prompt))

    for name, (examples, out_path) in jobs.items():
        done[name] = _rescored(Path(out_path), {ex.id: ex for ex in examples}, rendered, fresh=fresh, log=log)
        todo += [(name, ex) for ex in examples if ex.id not in done[name]]
    if todo:
        msgs = {(name, ex.id): prompts.messages_for(ex, system_prompt) for name, ex in todo}
        lengths = {key: len(generator.render(m)) for key, m in msgs.items()}
        todo.sort(key=lambda t: lengths[(t[0], t[1].id)], reverse=True)
        names = sorted({ex.dataset for _, ex in todo})
        bar = make_progress(total=len(todo), desc=f"eval {names[0] if len(names) == 1 else f'{len(names)} datasets'}",
                            enabled=progress)
        def record(name: str, ex: Example, out) -> dict:
            rec = {"id": ex.id, "dataset": ex.dataset, "answer": ex.answer,
                   "prompt": generator.render(msgs[(name, ex.id)]), "completion": out.text,
                   "n_tokens": out.n_tokens, "finished": out.finished, **score_record(ex, out.text)}
            done[name][ex.id] = rec
            return rec

        if getattr(generator, "streams", False):  # the kit's engine: one call, each record saved as it ends
            def save(i: int, out) -> None:
                name, ex = todo[i]
                append_jsonl(Path(jobs[name][1]), [record(name, ex, out)])
                bar.update(1)

            generator.generate([msgs[(name, ex.id)] for name, ex in todo], sampling, on_result=save,
                               batch_size=batch_size)
        else:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                outs = generator.generate([msgs[(name, ex.id)] for name, ex in chunk], sampling)
                per_file: dict[str, list[dict]] = {}
                for (name, ex), out in zip(chunk, outs):
                    per_file.setdefault(name, []).append(record(name, ex, out))
                for name, recs in per_file.items():
                    append_jsonl(Path(jobs[name][1]), recs)
                bar.update(len(chunk))
        bar.close()
    return {name: [done[name][ex.id] for ex in examples if ex.id in done[name]] for name, (examples, _) in jobs.items()}


def _prompt_difference(stored: str, wanted: str) -> str:
    """Where two prompts first differ, shown briefly."""
    i = next((k for k, (a, b) in enumerate(zip(stored, wanted)) if a != b), min(len(stored), len(wanted)))
    return f"first difference at character {i}: stored {stored[i:i + 40]!r}, now {wanted[i:i + 40]!r}"


def _rescored(out_path: Path, by_id: dict[str, Example], rendered: Callable[[Example], str], *, fresh: bool = False,
              log=print) -> dict[str, dict]:
    """Finished records, re-scored with the current scorer; the file is rewritten if a score changed.

    A record is reused only when its gold answer and its stored prompt equal the dataset's answer and
    the prompt ``rendered`` now (the whole text: a question edited in the data, another system prompt
    or chat template is a different input). Completions are what costs; scores are cheap and must
    always come from the one scorer in ``answers`` (so an improved extractor updates old runs instead
    of mixing two scorers). ``fresh``: a file holding another input is moved aside (an EI-Test rebuilt
    from other inputs) and {} returned.
    """
    records = read_log_jsonl(out_path)
    changed = False
    for rec in records:
        ex = by_id.get(rec["id"])
        if ex is None:
            continue
        prompt = rendered(ex)
        if rec.get("answer") != ex.answer or rec.get("prompt") != prompt:
            what = (f"gold {rec.get('answer')!r} but the dataset now says {ex.answer!r}" if rec.get("answer") != ex.answer
                    else f"another prompt than the one rendered now ({_prompt_difference(rec.get('prompt') or '', prompt)})")
            if fresh:
                log(f"[fresh] {out_path}: record {rec['id']} has {what}; moved it aside to {move_aside(out_path)}")
                return {}
            raise SettingsMismatchError(f"{out_path}: record {rec['id']} has {what}; the data or the prompt changed, "
                                        f"nothing in this file was reused: use another run name, or move {out_path} aside "
                                        "(the kit deletes nothing) and rerun to evaluate again")
        new = score_record(ex, rec["completion"])
        if any(rec.get(k) != v for k, v in new.items()):
            rec.update(new)
            changed = True
    if changed:
        atomic_write_text(out_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return {r["id"]: r for r in records}


# ---------------------------------------------------------------------------------------------
# Metrics





@dataclass
class DatasetScore:
    dataset: str
    n: int
    correct: int
    correct_strict: int
    mean_tokens: float
    truncated: int
    accuracy: float = field(init=False)
    accuracy_strict: float = field(init=False)
    ci_low: float = field(init=False)
    ci_high: float = field(init=False)

    def __post_init__(self):
        self.accuracy = self.correct / self.n if self.n else float("nan")
        self.accuracy_strict = self.correct_strict / self.n if self.n else float("nan")
        self.ci_low, self.ci_high = wilson_interval(self.correct, self.n)


def item_records(out_path: str | Path) -> dict[str, dict]:
    """The finished per-item records of one evaluation file, by item id (what the reports pair items
    on); a torn last line of an interrupted run is left out, as a resume would."""
    return {r["id"]: r for r in read_log_jsonl(out_path)}


def score_records(dataset: str, records: Iterable[dict]) -> DatasetScore:
    records = list(records)
    return DatasetScore(dataset=dataset, n=len(records),
                        correct=sum(bool(r["correct_flexible"]) for r in records),
                        correct_strict=sum(bool(r["correct_strict"]) for r in records),
                        mean_tokens=sum(r["n_tokens"] for r in records) / max(1, len(records)),
                        truncated=sum(not r["finished"] for r in records))


def summary_table(scores: Sequence[DatasetScore], label: str = ""):
    """Per-dataset rows plus the held-in and OOD averages (unweighted mean over datasets, as the paper)."""

    rows = []
    for s in scores:
        spec = DATASETS.get(s.dataset)
        rows.append({"method": label, "dataset": s.dataset, "role": spec.role if spec else "",
                     "n": s.n, "accuracy": 100 * s.accuracy, "ci_low": 100 * s.ci_low, "ci_high": 100 * s.ci_high,
                     "accuracy_strict": 100 * s.accuracy_strict, "mean_new_tokens": round(s.mean_tokens, 1),
                     "truncated": s.truncated})
    by_name = {s.dataset: s for s in scores}
    for group, names in (("held-in-avg8", HELD_IN), ("ood-avg4", OOD)):
        present = [by_name[n] for n in names if n in by_name]
        if not present:
            continue
        accs, ns = [s.accuracy for s in present], [s.n for s in present]
        lo, hi = mean_interval([s.correct for s in present], ns)
        rows.append({"method": label, "dataset": group, "role": f"average of {len(present)}/{len(names)}",
                     "n": sum(ns), "accuracy": 100 * sum(accs) / len(accs), "ci_low": 100 * lo, "ci_high": 100 * hi,
                     "accuracy_strict": 100 * sum(s.accuracy_strict for s in present) / len(present),
                     "mean_new_tokens": round(sum(s.mean_tokens for s in present) / len(present), 1),
                     "truncated": sum(s.truncated for s in present)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# A whole suite

def evaluate_suite(generator: Generator, suites: dict[str, list[Example]], out_dir: str | Path, *,
                   settings: EvalIdentity, batch_size: int = 32, label: str = "", progress: bool = True,
                   fresh: bool = False):
    """Evaluate several datasets into ``out_dir``; write ``summary.csv``; return the summary table."""
    out_dir = Path(out_dir)
    for name, examples in suites.items():
        if not examples:
            raise ValueError(f"dataset {name!r} has no examples to evaluate")
    sampling = SamplingConfig(max_new_tokens=settings.max_new_tokens, temperature=0.0)
    with folder_lock(out_dir, "evaluation"):
        check_settings(out_dir, settings)
        records = evaluate_pooled(generator, {name: (examples, out_dir / f"{name}.jsonl") for name, examples in suites.items()},
                                  sampling=sampling, batch_size=batch_size, progress=progress,
                                  system_prompt=settings.system_prompt, fresh=fresh)
        scores = [score_records(name, records[name]) for name in suites]
        table = summary_table(scores, label=label)
        atomic_write_text(out_dir / "summary.csv", table.to_csv(index=False, float_format="%.2f"))
    return table


def run_evaluation(*, model: str, datasets: Sequence[str], out_dir: str | Path, split: str = "test",
                   limit_per_dataset: int | None = None, sample_seed: int | None = 0,
                   max_new_tokens: int = SuiteSettings.max_new_tokens, batch_size: int = SuiteSettings.batch_size, backend: str = "fast", dtype: str = "auto", label: str = "",
                   data_dir: str | None = None, generator: Generator | None = None, progress: bool = True,
                   fresh: bool = False, extra: dict[str, list[Example]] | None = None):
    """Load the datasets, build the generator, evaluate, and return the summary table (notebook 04).
    ``extra``: more item sets by name, evaluated with them (an EI-Test: ``evaluate.ei_test``)."""
    suites = {}
    for name in datasets:
        ds_split = split if split in DATASETS[name].splits else "test"
        suites[name] = load(name, ds_split, data_dir=data_dir or None, limit=limit_per_dataset, sample_seed=sample_seed)
    suites.update(extra or {})

    settings = EvalIdentity(model=portable(model), max_new_tokens=max_new_tokens, dtype=resolved_dtype(dtype, backend),
                            backend=backend,
                            model_fingerprint=digest(model_identity(model)))
    check_settings(Path(out_dir), settings, fresh=fresh)  # fail before loading a model, not after
    generator = generator or make_generator(model, backend=backend, dtype=dtype)
    return evaluate_suite(generator, suites, out_dir, settings=settings, batch_size=batch_size, label=label,
                          progress=progress, fresh=fresh)


def resolved_dtype(dtype: str, backend: str) -> str:
    """The dtype an evaluation runs in: ``auto`` differs between machines, so records store what it
    resolved to (vLLM resolves it itself, from the model's config)."""
    if backend == "vllm":
        return dtype
    return str(pick_dtype(dtype, default_device())).removeprefix("torch.")  # "bf16" and "bfloat16" alike


def evaluate_on(settings: TaskEvalSettings | SuiteSettings, run: RunSettings, *, model: str, out_dir: str | Path,
                label: str = "", generator: Generator | None = None, extra: dict[str, list[Example]] | None = None):
    """``run_evaluation`` with a notebook's evaluation settings (the quick ``eval_*`` ones or the
    ``suite_*`` ones) and the run-wide ones (``sample_seed``, ``dtype``, ``backend``, ``data_dir``,
    ``fresh``)."""
    return run_evaluation(model=model, datasets=list(settings.datasets), out_dir=out_dir,
                          split=getattr(settings, "split", "test"), limit_per_dataset=settings.limit,
                          sample_seed=run.sample_seed, max_new_tokens=settings.max_new_tokens,
                          batch_size=settings.batch_size, backend=run.backend, dtype=run.dtype, label=label,
                          data_dir=run.data_dir or None, generator=generator, fresh=run.fresh, extra=extra)


def resolve_models(models: Sequence[str], layout: RunLayout, student: str) -> dict[str, str]:
    """Notebook 04's ``suite_models`` -> {label: what ``load_model`` accepts}.

    ``zero-shot`` is the student; another method key is that method's trained model in this run
    (``train/<key>/final``); ``label=spec`` gives a registry name, a path or a path inside the run
    folder. Anything else is an error that names the entry (a typo should not become a silent
    download attempt)."""
    out = {}
    for entry in models:
        label, _, spec = entry.partition("=")
        label = label.strip()
        if not spec:
            if label == "zero-shot":
                out[label] = student
                continue
            final = layout.final_model(label)
            if not final.exists():
                raise FileNotFoundError(f"model {label!r}: {final} does not exist (did its training finish?); "
                                        "give label=path for a model outside this run")
            out[label] = portable(final)
            continue
        spec = spec.strip()
        inside = layout.root / spec
        if inside.exists():
            out[label] = portable(inside)
        elif spec in MODELS or Path(spec).exists():
            out[label] = spec
        else:
            raise FileNotFoundError(f"model {label!r}: {spec!r} is neither a registry name, a path, nor a path inside "
                                    f"{layout.root}")
    return out


def before_after(summaries: dict[str, "object"]):
    """{stage label: summary table} -> one row per stage, accuracy (95% CI) per dataset."""

    rows = []
    for label, table in summaries.items():
        row = {"stage": label}
        for _, r in table.iterrows():
            if "avg" not in r["dataset"]:
                row[r["dataset"]] = f"{r['accuracy']:.1f} [{r['ci_low']:.1f}, {r['ci_high']:.1f}]"
        rows.append(row)
    return pd.DataFrame(rows)
