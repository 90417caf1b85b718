"""Progress reporting that works both in JupyterLab (a live bar) and headless under papermill.

``EXGRPO_PROGRESS``: ``bar`` (default: tqdm, a widget in JupyterLab), ``lines`` (one plain line per
update: papermill's log shows these as they happen; the runner sets this), or ``off``.
"""
from __future__ import annotations

import os
import sys
import time

from tqdm.auto import tqdm

PROGRESS_ENV = "EXGRPO_PROGRESS"


class LineProgress:
    """A plain line at most every 5% of the work or 30 seconds, and at the end."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.n, self.t0 = total, desc, 0, time.time()
        self.last_n, self.last_t = 0, self.t0

    def update(self, k: int = 1) -> None:
        self.n += k
        now = time.time()
        if self.n < self.total and self.n - self.last_n < 0.05 * self.total and now - self.last_t < 30:
            return
        self.last_n, self.last_t = self.n, now
        elapsed = now - self.t0
        eta = elapsed / self.n * (self.total - self.n) if self.n else float("nan")
        print(f"[{self.desc}] {self.n}/{self.total} ({elapsed:.0f} s, about {eta:.0f} s left)", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def progress(total: int, desc: str, enabled: bool = True):
    mode = os.environ.get(PROGRESS_ENV, "bar")
    if not enabled or mode == "off":
        return tqdm(total=total, desc=desc, disable=True)
    if mode == "lines":
        return LineProgress(total, desc)

    return tqdm(total=total, desc=desc)
