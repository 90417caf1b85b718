"""Where things live: the project root, the results root, the cache directory; paths as records store them."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RESULTS_ENV = "EXGRPO_RESULTS_DIR"
CACHE_ENV = "EXGRPO_CACHE_DIR"
CACHE_MARK = "$" + CACHE_ENV  # how records name the cache directory


def results_root(override: str | os.PathLike | None = None) -> Path:
    """``override``, else ``$EXGRPO_RESULTS_DIR``, else ``<project>/results``."""
    value = override or os.environ.get(RESULTS_ENV)
    return Path(value).expanduser().resolve() if value else PROJECT_ROOT / "results"


def cache_dir() -> Path:
    """``$EXGRPO_CACHE_DIR``, else ``~/.cache/exgrpo-kit``: converted models and the completion cache."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "exgrpo-kit").expanduser()


def _inside(path: Path, root: Path) -> str | None:
    try:
        return str(path.relative_to(root.resolve()))
    except ValueError:
        return None


def portable(path: str | os.PathLike) -> str:
    """``path`` as records store it, so they hold no absolute path of the machine that made them:
    inside the results root, relative to it (``runs/cpu/train/sft/final``); inside the cache
    directory, ``$EXGRPO_CACHE_DIR/...``; inside the project, relative to it; anything else (a
    registry name, a hub id, a path elsewhere) unchanged. :func:`resolve` turns it back."""
    text = str(path)
    if not Path(text).is_absolute():
        return text
    real = Path(text).resolve()
    for root, prefix in ((results_root(), ""), (cache_dir(), CACHE_MARK + "/"), (PROJECT_ROOT, "")):
        rel = _inside(real, root)
        if rel is not None:
            return prefix + rel
    return text


def portable_text(text: str) -> str:
    """Free text (a notebook's printed output, a warning's file name) with the absolute paths of this
    machine replaced as :func:`portable` stores them: under the results root relative to it, the
    cache directory as ``$EXGRPO_CACHE_DIR``, the project relative to it, the home directory as ``~``."""
    roots = [(str(results_root()), ""), (str(cache_dir()), CACHE_MARK), (str(PROJECT_ROOT), ""),
             (str(Path.home()), "~")]
    for root, mark in sorted(roots, key=lambda r: -len(r[0])):  # the most specific root first
        if len(root) > 1:
            text = text.replace(root + "/", f"{mark}/" if mark else "").replace(root, mark or ".")
    return text


def resolve(text: str | os.PathLike) -> str:
    """A stored path back to one this machine can open: ``$EXGRPO_CACHE_DIR/x`` under the cache
    directory, a relative path under the results root (else the project root) when it exists there;
    anything else (registry names, hub ids, absolute paths) unchanged."""
    text = str(text)
    if text.startswith(CACHE_MARK + "/"):
        return str(cache_dir() / text[len(CACHE_MARK) + 1:])
    if text and not Path(text).is_absolute():
        for root in (results_root(), PROJECT_ROOT):
            if (root / text).exists():
                return str(root / text)
    return text
