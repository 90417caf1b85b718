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
else is trained again, as on any machine. A warm-up is trained again when a method of the plan that
starts from it cannot be kept (its weights are that method's start). Trained again on another
machine, a model may come out with other weights (other CPU arithmetic): its stored evaluations, and
the methods kept from it, would then be another model's, so ``run_triple`` stops right after that
training, saying so, before anything is evaluated or started from it (``check_retrained``). Hence
the parts of ``cpu-full`` (README): whole seeds, and every method that starts from the main job's
seed-0 warm-up in the part that holds its weights.
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
from .records import read_json

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


def weights_here(spec: str) -> bool:
    return Path(resolve(spec)).is_dir()


def kept_summary(folder: Path, summary_name: str, *, planned: Callable[[], dict | None], eval_dirs: Sequence[Path],
                 evaluate: Callable[[str, RenderOnly], object], student: str) -> dict | None:
    """The summary of the training in ``folder`` when its weights are not on this machine and it can be
    kept (the module's conditions), else None. ``planned``: the inputs the trainer would stamp now (a
    precision of None, left to the node that trains, is taken from the stamp); ``eval_dirs``: the
    evaluation folders the record is made of; ``evaluate(final, generator)``: every one of them,
    through ``generator``. A check that fails writes nothing."""
    summary, stamp = read_json(folder / summary_name), read_stamp(folder)
    if not summary or not stamp or not summary.get("final") or recorded_before(summary["final"]) is None:
        return None  # its weights are here (the usual path reuses it), or no identity was recorded
    inputs = planned()
    if inputs is None:
        return None
    inputs = json.loads(json.dumps(inputs, default=str))
    if "precision" in inputs and inputs["precision"] is None:
        inputs["precision"] = (stamp.get("inputs") or {}).get("precision")
    if stamp.get("fingerprint") != stamp_fingerprint(inputs):
        return None
    if not all((Path(d) / "config.json").is_file() for d in eval_dirs):  # an evaluation never started: checked
        return None  # first, as evaluating would stamp its folder for a model that may be trained again
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


def recorded_before(final: str) -> dict | None:
    """The identity recorded for a final model whose weights are not here (None when they are, or when
    none was recorded): what a retraining must reproduce for what was made from it to stay valid."""
    if weights_here(final):
        return None
    ident = model_identity(final)
    return None if "name" in ident else ident


def check_retrained(rid: str, before: dict | None, final: str) -> None:
    """Stop when a model trained again here (its weights were not on this machine) came out other than
    the one recorded for it: its stored evaluations and the methods started from it are of that one."""
    now = model_identity(final) if before is not None else None
    if now != before:
        raise RetrainedDiffers(
            f"{rid} was trained again here (its weights were not on this machine) and came out with other weights "
            f"than the model its stored evaluations and the methods started from it were made with ({before} -> "
            f"{now}; the same inputs on another CPU's arithmetic). Nothing was evaluated or started "
            "from it. Run this part on the machine that holds the committed run's weights, or rerun the whole plan "
            "with --set fresh=true (old outputs are moved aside, never deleted).")


class RetrainedDiffers(RuntimeError):
    """A retrained warm-up whose weights differ from the ones recorded for it."""
