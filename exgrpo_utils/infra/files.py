"""Small file helpers: atomic writes, append-only JSONL logs that survive interruption, data files
that name the bad line."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

# pandas is imported inside the functions that use it (heavy, or needed only on some paths).


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` so that readers see either the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


class FolderBusyError(RuntimeError):
    """Another process is writing the same output folder."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "output"):
    """One writer per output folder: hold ``.<folder name>.lock`` beside it while writing; a second
    writer gets a clear error at once instead of both generating or training the same items. The
    lock lives outside the folder, so moving the folder aside (``fresh``) keeps it held."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    fh = open(folder.parent / f".{folder.name}.lock", "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise FolderBusyError(f"{folder}: {holder} is writing this {what} now; wait for it to finish or stop it, "
                              "or write to another run name") from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"process {os.getpid()}")
        fh.flush()
        yield folder
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


@contextlib.contextmanager
def waiting_lock(target: str | os.PathLike):
    """Wait for and hold ``.<target name>.wait.lock`` beside ``target``: processes that would all make
    the same file (every process of an ``accelerate launch`` merging the same adapter) make it one
    after another, and the later ones find it made."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.wait.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield target
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def append_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Append records, one JSON object a line, and fsync so a kill loses at most the line being written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)
    if not lines:
        return
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(lines)
        fh.flush()
        os.fsync(fh.fileno())


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)`` from a data file; a bad line (not UTF-8, not JSON, not an
    object) raises naming file and line."""
    path = Path(path)
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not UTF-8 ({exc.reason} at byte {exc.start} of the line)") from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            yield lineno, rec


def read_log_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read an append-only log written by :func:`append_jsonl`.

    A record counts only once its line ends with a newline. A run killed mid-write can leave an
    unterminated final line: it is cut off the file (it was never a complete record, so it will be
    recomputed) and everything before it is kept. A bad line anywhere else is an error.
    """
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    complete, _, tail = raw.rpartition(b"\n")
    if tail:
        try:
            with open(path, "r+b") as fh:
                fh.truncate(len(complete) + (1 if complete or raw.startswith(b"\n") else 0))
        except OSError as exc:  # a read-only copy: report the torn line, change nothing
            warnings.warn(f"{path}: its last line is incomplete (an interrupted write) and was ignored; the file "
                          f"could not be repaired ({exc.strerror})", stacklevel=2)
    records: list[dict] = []
    for lineno, line in enumerate(complete.split(b"\n") if complete else [], start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{lineno}: corrupt log line (not the last line, so not an interrupted write)") from None
    return records


def read_train_log(path: str | os.PathLike):
    """A training log (``train_log.jsonl``) as a DataFrame, one row per logged step."""
    import pandas as pd  # heavy; every module imports this one, few need tables

    return pd.DataFrame(read_log_jsonl(path))
