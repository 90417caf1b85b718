"""Fingerprints: every stage output records what it was made from, and is reused only when that matches.

A stage output folder (a training, an evaluation) holds ``fingerprint.json``: the inputs that
determine it (settings, the content of its data, the identity of its model, the code's prompt
versions) and their digest. :func:`check_stamp` writes it when the folder is new, passes when the
inputs are the same, and otherwise stops with :class:`StaleOutputError` naming the folder and what
differs, with the two ways forward: another run name, or ``fresh`` (``--set fresh=true``), which
moves the old output aside (``<folder>.replaced-<n>``) and never deletes it.

Models are identified by content: a registry name by its source, a folder of weights by the SHA-256
of its files (remembered in ``.weights_digest.json`` beside them, keyed by size and modification
time, so a large model is hashed once). Two trainings that made the same weights get the same digest:
what a trainer writes beside them that is not the model is left out (``training_args.bin``, a pickle
of the run's arguments and paths; PEFT's ``README.md`` model card), and a PEFT
``adapter_config.json`` is read as what it means (``adapter_config_content``): its module lists as
sets (PEFT writes them in set order, which changes with ``PYTHONHASHSEED``), without the path of its
base model, which is where the base was, not what it is: ``models.registry.model_identity`` adds the
base's own identity, by content.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from .files import atomic_write_json

STAMP = "fingerprint.json"
WEIGHTS_MEMO = ".weights_digest.json"
WEIGHTS_FORMAT = 3  # how weights_digest reads a folder; a memo of another format is not used
_NOT_CONTENT = {STAMP, WEIGHTS_MEMO, ".lock"}
# a converted model's note (where it came from), and what a trainer writes beside a model
_NOT_WEIGHTS = _NOT_CONTENT | {"exgrpo_conversion.json", "training_args.bin", "README.md"}
ADAPTER_CONFIG = "adapter_config.json"
_MODULE_SETS = ("target_modules", "modules_to_save", "exclude_modules", "layers_to_transform")


class StaleOutputError(RuntimeError):
    """An output folder holds something made from other inputs (or by an older version of the kit)."""


def digest(obj: Any) -> str:
    """SHA-256 of the canonical JSON of ``obj`` (sorted keys; tuples as lists), 20 hex digits."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:20]


def adapter_config_content(path: str | os.PathLike) -> dict:
    """What a PEFT ``adapter_config.json`` says about the adapter, independent of how and where it was
    written: the module lists sorted (sets in PEFT, written in hash order), the base model's path left
    out (``models.registry.model_identity`` identifies the base by content).

    >>> import json, tempfile
    >>> d = tempfile.mkdtemp()
    >>> for i, mods in enumerate((["v_proj", "q_proj"], ["q_proj", "v_proj"])):
    ...     _ = open(f"{d}/{i}.json", "w").write(json.dumps({"target_modules": mods, "r": 8}))
    >>> adapter_config_content(f"{d}/0.json") == adapter_config_content(f"{d}/1.json")
    True
    """
    try:
        config = json.loads(Path(path).read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: not a JSON adapter config ({exc})") from exc
    for key in _MODULE_SETS:
        if isinstance(config.get(key), list):
            config[key] = sorted(config[key], key=str)
    config.pop("base_model_name_or_path", None)
    return config


def _content_digest(path: Path) -> str:
    return digest(adapter_config_content(path)) if path.name == ADAPTER_CONFIG else file_digest(path)


def weights_digest(folder: str | os.PathLike) -> str:
    """Digest of the files directly in a model folder (weights, configs, tokenizer; not what a trainer
    writes beside them, a PEFT adapter config by its content), memoised."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name not in _NOT_WEIGHTS)
    stats = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}
    memo = folder / WEIGHTS_MEMO
    try:
        old = json.loads(memo.read_text())
        if old.get("files") == stats and old.get("format") == WEIGHTS_FORMAT:
            return old["digest"]
    except (OSError, ValueError):
        pass
    value = digest({p.name: _content_digest(p) for p in files})
    try:
        atomic_write_json(memo, {"format": WEIGHTS_FORMAT, "files": stats, "digest": value})
    except OSError:  # a read-only model folder: hash again next time
        pass
    return value


_FILES_MEMO: dict[tuple, str] = {}


def files_digest(folder: str | os.PathLike, names: tuple[str, ...]) -> str:
    """Digest of the named files of ``folder`` (a missing one counts as missing), remembered in this
    process by their sizes and modification times."""
    folder = Path(folder)
    stats = tuple((n, *((p.stat().st_size, p.stat().st_mtime_ns) if (p := folder / n).is_file() else (None, None)))
                  for n in names)
    key = (str(folder.resolve()), stats)
    if key not in _FILES_MEMO:
        _FILES_MEMO[key] = digest({n: file_digest(folder / n) if size is not None else None for n, size, _ in stats})
    return _FILES_MEMO[key]


def read_stamp(folder: str | os.PathLike) -> dict | None:
    path = Path(folder) / STAMP
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        raise StaleOutputError(f"{path} is not valid JSON; move the folder aside or rerun with fresh=true") from None


def _flat(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differences(old: Mapping, new: Mapping, limit: int = 8) -> str:
    a, b = _flat(json.loads(json.dumps(old, default=str))), _flat(json.loads(json.dumps(new, default=str)))
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    shown = "; ".join(f"{k}: {a.get(k, '(none)')!r} -> {b.get(k, '(none)')!r}" for k in keys[:limit])
    return shown + (f"; and {len(keys) - limit} more" if len(keys) > limit else "")


def move_aside(folder: Path) -> Path:
    """Rename ``folder`` to the first free ``<folder>.replaced-<n>``; returns the new path."""
    n = 1
    while (aside := folder.with_name(f"{folder.name}.replaced-{n}")).exists():
        n += 1
    os.replace(folder, aside)
    return aside


def _has_content(folder: Path) -> bool:
    return folder.is_dir() and any(p.name not in _NOT_CONTENT for p in folder.iterdir())


def stamp_fingerprint(inputs: Mapping) -> str:
    """The fingerprint ``check_stamp`` stamps for ``inputs`` (values JSON cannot hold taken as text)."""
    return digest(json.loads(json.dumps(inputs, default=str)))


def check_stamp(folder: str | os.PathLike, inputs: Mapping, *, what: str, fresh: bool = False, log=print) -> str:
    """Stamp ``folder`` with ``inputs`` or verify the stamp there; returns the fingerprint.

    A folder with content but no stamp (made by an older version of the kit, or by hand) and a
    folder stamped with other inputs are both refused, unless ``fresh`` moves them aside first."""
    folder = Path(folder)
    inputs = json.loads(json.dumps(inputs, default=str))
    fp = stamp_fingerprint(inputs)
    stamp = read_stamp(folder)
    if stamp is not None and stamp.get("fingerprint") == fp:
        return fp
    if _has_content(folder):  # a stamp alone (a run that failed before producing anything) is no output
        why = (f"made from other inputs ({differences(stamp.get('inputs', {}), inputs)})" if stamp is not None
               else "without a fingerprint (by an older version of the kit, or by hand), so what made it is unknown")
        if not fresh:
            raise StaleOutputError(f"{folder} holds a {what} {why}. Nothing was reused or changed. Use another run name "
                                   f"(--run-name), or rerun with fresh=true (--set fresh=true) to move it aside "
                                   f"({folder.name}.replaced-<n>) and start again.")
        aside = move_aside(folder)
        log(f"[fresh] {folder} held a {what} {why}; moved it aside to {aside}")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / STAMP, {"fingerprint": fp, "inputs": inputs})
    return fp
