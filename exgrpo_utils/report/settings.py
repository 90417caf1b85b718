"""Settings of notebook 06 (tables and figures from results/ alone)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..infra.settings import setting


@dataclass(frozen=True)
class FigureSettings:
    """Notebook 06: whose experiment records the tables and figures are built from."""
    PREFIX: ClassVar[str] = "figures_"
    runs: tuple[str, ...] = setting((), "runs whose experiment records are read (later runs win on a clash); "
                                    "empty: this run", "run")
