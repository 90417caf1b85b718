"""Persistent on-disk cache of chat completions (SQLite, one row per request).

Every teacher call (and every student call the probe filters make) goes through it: the key is a
hash of the backend kind, the model, where it is served and how (the server URL of an HTTP backend,
the dtype of a local one), the messages and the sampling parameters (never an API key).
Each result is committed the moment it arrives, so a run killed at any point loses at most the
requests in flight, and a rerun pays only for what is missing.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from .generation import SamplingConfig

SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    key TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    text TEXT NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    created REAL NOT NULL
)
"""


@dataclass(frozen=True)
class ChatResult:
    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class CacheError(RuntimeError):
    """The cache file cannot be used; the message names it and says how to recover."""


def request_key(backend: str, model: str, messages: Sequence[dict], sampling: SamplingConfig, sample_index: int = 0,
                identity: dict | None = None) -> str:
    """``identity``: what else decides the answer besides the model name (server URL, dtype)."""
    payload = {"backend": backend, "model": model, "messages": list(messages), "sampling": asdict(sampling),
               "sample_index": sample_index, **({"identity": identity} if identity else {})}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class CompletionCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=60)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(SCHEMA)
            self._db.execute("SELECT key, backend, model, request, text FROM completions LIMIT 1").fetchall()
        except sqlite3.DatabaseError as exc:
            raise CacheError(f"{self.path}: not a usable completion cache ({exc}). Move it aside "
                             f"(mv {self.path} {self.path}.bad) and rerun: an empty cache is rebuilt, and every answer "
                             "it held is asked again (teacher calls cost again).") from None
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> ChatResult | None:
        with self._lock:
            row = self._db.execute("SELECT text, prompt_tokens, completion_tokens FROM completions WHERE key = ?",
                                   (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return ChatResult(*row)

    def put(self, key: str, backend: str, model: str, request: dict, result: ChatResult) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO completions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, backend, model, json.dumps(request, ensure_ascii=False), result.text, result.prompt_tokens,
                 result.completion_tokens, time.time()))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
