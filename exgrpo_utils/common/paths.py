"""Where things live: the project root, the results folder, run folders."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RESULTS_ENV = "EXGRPO_RESULTS_DIR"


def results_root(override: str | os.PathLike | None = None) -> Path:
    """``override``, else ``$EXGRPO_RESULTS_DIR``, else ``<project>/results``."""
    value = override or os.environ.get(RESULTS_ENV)
    return Path(value).expanduser().resolve() if value else PROJECT_ROOT / "results"


def portable(path: str | os.PathLike) -> str:
    """``path`` relative to the project root when it lies inside it (so records survive a move or a
    fresh clone); anything else (a registry name, a path elsewhere) unchanged."""
    text = str(path)
    if not Path(text).is_absolute():
        return text
    try:
        return str(Path(text).resolve().relative_to(PROJECT_ROOT))
    except (ValueError, OSError):
        return text
