"""Loading the 12 evaluation datasets of the paper (method.md section 5) plus the synthetic ``arith`` family.

``load(name, split)`` returns a list of :class:`Example`. Rows come from a local data directory laid
out as ``<data_dir>/<name>/<split>.jsonl`` (the argument, else the ``EXGRPO_DATA_DIR`` environment
variable), else from the dataset's Hugging Face hub source. Each dataset has one parser that turns a
source row into an Example; hub rows are first converted to the local layout so the same parser
serves both.

This module is the public entry of the data side. The pieces it puts together:
  registry.py   one DatasetSpec per dataset (DATASETS, HELD_IN, OOD, PAPER_DATASETS, task_eval_sets)
  parsers.py    the row parsers, and the canonical gold answers they produce
  hub.py        each dataset's hub id, splits and row adapter
  normalize.py  the answer helpers shared with the scorer (canonical_number, last_boxed)
"""
from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Any, Mapping

from ..infra.files import iter_jsonl
from . import synthetic
from .example import LETTERS, Example
from .normalize import canonical_number, last_boxed
from .parsers import NLI_OPTIONS, format_options
from .registry import DATASETS, HELD_IN, OOD, PAPER_DATASETS, DatasetSpec, task_eval_sets

# datasets is imported inside the functions that use it (heavy, or needed only on some paths).

__all__ = [
    "ALLOW_PARTIAL_ENV", "DATASETS", "DATA_DIR_ENV", "DataError", "DataNotFoundError", "DatasetSpec", "Example",
    "HELD_IN", "KNOWN_DEFECTS", "LETTERS", "NLI_OPTIONS", "OOD", "PAPER_DATASETS", "canonical_number",
    "format_options", "last_boxed", "load", "parse_row", "partial_copies_allowed", "resolve_data_dir",
    "subsample", "task_eval_sets",
]

DATA_DIR_ENV = "EXGRPO_DATA_DIR"
ALLOW_PARTIAL_ENV = "EXGRPO_ALLOW_PARTIAL_DATA"


class DataError(ValueError):
    """A source row or file that cannot be turned into an Example."""


class DataNotFoundError(FileNotFoundError):
    """No local copy and the hub could not provide the dataset."""


# Source rows that are defective in the public data itself. They are skipped with a warning that
# names them (never silently); the MANIFEST row counts include them.
KNOWN_DEFECTS: dict[tuple[str, str, int], str] = {
    ("math", "train", 5530): "the source solution ends in an empty \\boxed{}",
    ("math", "train", 5532): "the source solution ends in an empty \\boxed{}",
}


def parse_row(name: str, row: Mapping, split: str, lineno: int, source: str) -> Example:
    """Turn one source row into an Example, or raise DataError naming dataset, source and line."""
    spec = DATASETS.get(name)
    if spec is None or spec.parser is None:
        raise DataError(f"{name}: {source}:{lineno}: no row parser ({'unknown dataset' if spec is None else 'generated, not read from files'})")
    try:
        fields = spec.parser(row, split, lineno)
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
        what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise DataError(f"{name}: {source}:{lineno}: malformed row: {what}") from None
    row_id = fields.pop("id", None) or f"{name}-{split}-{lineno}"
    return Example(id=str(row_id), dataset=name, **fields)


# --------------------------------------------------------------------------------------------------
# Loading

def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    value = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        source = "data_dir argument" if data_dir is not None else f"${DATA_DIR_ENV}"
        raise DataNotFoundError(f"{source} points at {path}, which is not a directory")
    return path


def load(name: str, split: str = "test", *, data_dir: str | os.PathLike | None = None,
         limit: int | None = None, sample_seed: int | None = None,
         synthetic_options: Mapping[str, Any] | None = None, allow_partial: bool | None = None) -> list[Example]:
    """Load ``split`` of dataset ``name`` as a list of Examples.

    With a data directory (the argument, else ``$EXGRPO_DATA_DIR``) rows come from
    ``<data_dir>/<name>/<split>.jsonl`` only, and its row count must equal the dataset's (unless
    ``allow_partial``, default ``$EXGRPO_ALLOW_PARTIAL_DATA``); without one, from the hub. Ids must
    be unique.

    ``limit`` keeps the first ``limit`` rows, or (with ``sample_seed``) a seeded random sample of
    ``limit`` rows kept in source order: the fixed subsamples of the CPU presets.
    ``synthetic_options`` is passed to the generator of the ``arith`` family (see synthetic.py).
    """
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    spec = DATASETS[name]
    if split not in spec.splits:
        raise KeyError(f"dataset {name!r} has no split {split!r}; it has {', '.join(spec.splits)}")
    if spec.role == "synthetic":
        examples = synthetic.load(name, split, **dict(synthetic_options or {}))
    else:
        root = resolve_data_dir(data_dir)
        if root is None:
            examples = _load_from_hub(spec, split, None)
        else:
            examples = _load_local(spec, split, root / name / f"{split}.jsonl", allow_partial)
        _check_unique_ids(examples, name, split)
    return subsample(examples, limit, sample_seed)


def partial_copies_allowed() -> bool:
    """``$EXGRPO_ALLOW_PARTIAL_DATA=1``: accept local files whose row counts differ from the specs."""
    return os.environ.get(ALLOW_PARTIAL_ENV, "") in ("1", "true", "yes")


def _load_local(spec: DatasetSpec, split: str, path: Path, allow_partial: bool | None) -> list[Example]:
    """A local copy: every row parsed, the row count checked against the spec, no hub fallback."""
    if not path.exists():
        raise DataNotFoundError(f"{spec.name}/{split}: {path} does not exist. A data directory was given, so the hub "
                                f"is not tried; copy the file there, or unset the data directory to load from the hub.")
    examples, rows = [], 0
    for lineno, row in iter_jsonl(path):
        rows += 1
        defect = KNOWN_DEFECTS.get((spec.name, split, lineno))
        if defect:
            warnings.warn(f"{spec.name}: {path}:{lineno}: skipped known source defect: {defect}", stacklevel=3)
            continue
        examples.append(parse_row(spec.name, row, split, lineno, str(path)))
    expected = spec.rows.get(split)
    allowed = partial_copies_allowed() if allow_partial is None else allow_partial
    if expected is not None and rows != expected and not allowed:
        raise DataError(f"{spec.name}/{split}: {path} has {rows} rows, the dataset has {expected}. A cut or extended "
                        f"copy changes every seeded subsample; restore the file, or allow a partial copy explicitly "
                        f"(load(..., allow_partial=True) or ${ALLOW_PARTIAL_ENV}=1).")
    return examples


def _check_unique_ids(examples: list[Example], name: str, split: str) -> None:
    seen: dict[str, int] = {}
    for i, ex in enumerate(examples):
        if ex.id in seen:
            raise DataError(f"{name}/{split}: id {ex.id!r} appears twice (items {seen[ex.id] + 1} and {i + 1}); "
                            "ids must be unique (evaluations and probe records are keyed by them)")
        seen[ex.id] = i


def subsample(examples: list[Example], limit: int | None, seed: int | None) -> list[Example]:
    if limit is None or limit >= len(examples):
        return list(examples)
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if seed is None:
        return list(examples[:limit])
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]


# --------------------------------------------------------------------------------------------------
# Hub path: the dataset's HubSource converts hub rows into the local layout, so parse_row() serves both.

def _load_from_hub(spec: DatasetSpec, split: str, local: Path | None) -> list[Example]:
    where = f"no local copy at {local}" if local else f"no data directory given (argument or ${DATA_DIR_ENV})"
    hint = (f"Point ${DATA_DIR_ENV} (or data_dir=) at a folder laid out as <name>/<split>.jsonl, "
            "e.g. the kit's ../shared/datasets.")
    source = spec.hub
    if source is None:
        raise DataNotFoundError(f"{spec.name}/{split}: {where}, and this dataset has no Hugging Face hub source. {hint}")
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True") or os.environ.get("HF_DATASETS_OFFLINE") in ("1", "true"):
        raise DataNotFoundError(f"{spec.name}/{split}: {where}, and the hub is disabled (HF_HUB_OFFLINE). {hint}")
    try:
        import datasets as hf_datasets
    except ImportError as exc:  # pragma: no cover - datasets is a pinned dependency
        raise DataNotFoundError(f"{spec.name}/{split}: {where}, and the 'datasets' package is missing") from exc
    examples: list[Example] = []
    for config, hub_split in source.splits[split]:
        label = f"hub:{source.hf_id}" + (f"/{config}" if config else "") + f"[{hub_split}]"
        try:
            ds = hf_datasets.load_dataset(source.hf_id, config, split=hub_split)
        except Exception as exc:  # network errors come in many types; all mean the same here
            raise DataNotFoundError(f"{spec.name}/{split}: {where}, and {label} could not be loaded "
                                    f"({type(exc).__name__}: {str(exc)[:200]}). {hint}") from None
        for i, row in enumerate(ds, start=1):
            try:
                local_row = source.adapter(row)
            except (KeyError, IndexError, TypeError) as exc:
                raise DataError(f"{spec.name}: {label}:{i}: hub row not in the expected layout ({exc})") from None
            examples.append(parse_row(spec.name, local_row, split, len(examples) + 1, label))
    return examples
