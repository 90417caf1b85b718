"""Finished (task, method, seed) triples kept without their weights: a long plan over several machines.

A committed results folder holds each training's summary, log, fingerprint stamp and the identity
its final model was recorded under (``final.identity.json``), every evaluation item by item and the
records, but no weights (``.gitignore``). ``cpu-full``'s three seeds take longer than one working
session on the slower CPU, and its machines do not outlive a session, so the plan is run in parts
(README): each part commits what it finished, and the next, on another machine, keeps it.

``run_triple`` keeps a triple whose trained model is not on this machine, training nothing and
generating nothing, when all of these hold (``kept_summary``, called by ``runs.kept_training``):

* its training folder is stamped with exactly the inputs the trainer would stamp now (settings,
  data, the start model by its identity, precision: ``runs.training_inputs``, the trainer itself in
  planning mode);
* its summary names a final model whose identity the training recorded;
* every evaluation the record is made of is reused whole by ``evaluate_on`` for that identity: the
  evaluation's stamp (model, budget, dtype, backend) matches, and every stored item was asked the
  prompt rendered now and is rescored. The prompts are rendered with the student's tokenizer, which
  every trainer saves unchanged beside its model (``RenderOnly``: it generates nothing).

An evaluation stored for another model or asked other prompts stops the run with the error the
usual path gives (naming the file; ``fresh=true`` redoes it), before anything is trained. Anything
else is trained again, as on any machine. A warm-up is trained again when a method of the
plan that starts from it cannot be kept (its weights are that method's start); the warm-up's other
methods are then checked against the retrained model: kept when it came out with the identity they
started from, trained again otherwise. (Trained again on another CPU, a model may come out with
other weights; its stored evaluations are then another model's, and the run stops as above. The
parts of ``cpu-full`` are whole seeds, so no part retrains another part's warm-up.)
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

from ..infra.fingerprint import read_stamp, stamp_fingerprint
from ..infra.paths import resolve
from ..models.registry import ensure_local, model_identity
from .methods import METHODS

# transformers is imported inside the function that uses it (heavy, or needed only on some paths).


class NeedsGeneration(RuntimeError):
    """An evaluation that ``RenderOnly`` was asked to complete: some of its items are not stored."""


@lru_cache(maxsize=4)
def _tokenizer(student: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ensure_local(student))


class RenderOnly:
    """A generator that renders prompts with the student's tokenizer and generates nothing: an
    evaluation through it succeeds only where every item is already stored and was asked that prompt."""

    streams = False

    def __init__(self, student: str):
        self.student, self.name = student, f"render-only:{student}"

    def render(self, messages) -> str:
        return _tokenizer(self.student).apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, batch, sampling, **_):
        raise NeedsGeneration(f"{len(batch)} items are not evaluated yet")


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def weights_here(spec: str) -> bool:
    return Path(resolve(spec)).is_dir()


def kept_summary(folder: Path, summary_name: str, *, planned: Callable[[], dict | None],
                 evaluate: Callable[[str, RenderOnly], object], student: str) -> dict | None:
    """The summary of the training in ``folder`` when its weights are not on this machine and it can be
    kept (the module's conditions), else None. ``planned``: the inputs the trainer would stamp now;
    ``evaluate(final, generator)``: every evaluation the record is made of, through ``generator``."""
    summary, stamp = _read(folder / summary_name), read_stamp(folder)
    if not summary or not stamp or not summary.get("final") or weights_here(summary["final"]):
        return None
    if "name" in model_identity(summary["final"]):  # no identity recorded: what it was is unknown here
        return None
    inputs = planned()
    if inputs is None or stamp.get("fingerprint") != stamp_fingerprint(json.loads(json.dumps(inputs, default=str))):
        return None
    try:
        evaluate(summary["final"], RenderOnly(student))
    except NeedsGeneration:  # an evaluation not finished: the usual path trains the model again for it
        return None
    return summary


def keepable(triples: Sequence[tuple[str, str, int]], rid: Callable[[str, int, str], str],
             can_keep: Callable[[str, str, int], bool]) -> set[str]:
    """Run ids of the plan's (task, method, seed) triples that may be kept without weights: those
    ``can_keep`` now, less each warm-up that a method of the plan starting from it needs (that method
    is not kept). Each is checked again when its turn comes (a retrained warm-up may have changed)."""
    kept = {rid(key, seed, task) for task, key, seed in triples if can_keep(task, key, seed)}
    for task, key, seed in triples:
        m = METHODS[key]
        if m.kind == "rl" and m.init != "base" and rid(key, seed, task) not in kept:
            kept.discard(rid(m.init, seed, task))
    return kept
