"""Tables in the paper's layout, with the paper's reported numbers beside ours."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..data.datasets import DATASETS, HELD_IN, OOD
from ..infra.files import atomic_write_text
from . import plotting

PAPER_RESULTS = Path(__file__).with_name("paper_results.csv")  # copy of shared/reference/paper_results.csv
AVG_COLUMNS = {"held-in-avg8": "Avg (held-in)", "ood-avg4": "Avg (OOD)"}


def paper_results(path: str | Path | None = None):
    """The paper's reported numbers: columns table, student, method, split, metric, value, note."""

    df = pd.read_csv(path or PAPER_RESULTS)
    missing = {"table", "student", "method", "split", "value"} - set(df.columns)
    if missing:
        raise ValueError(f"{path or PAPER_RESULTS}: missing columns {sorted(missing)}")
    return df


def paper_layout(summaries, *, student: str, paper=None, include_paper: bool = True):
    """One row per method: 8 held-in datasets, their average, 4 OOD datasets, their average.

    ``summaries``: summary tables from ``evaluate.evaluation.summary_table`` (one per method, ``method`` column
    set). Paper rows (tables 1 and 2 of paper_results.csv) carry only the averages the paper reports;
    per-dataset numbers were not recovered, so those cells are empty.
    """

    columns = HELD_IN + ["held-in-avg8"] + OOD + ["ood-avg4"]
    rows = []
    for s in summaries:
        values = dict(zip(s["dataset"], s["accuracy"]))
        label = s["method"].iloc[0] if len(s) else ""
        rows.append({"student": student, "method": label, "source": "ours", **{c: values.get(c) for c in columns}})
    if include_paper:
        paper = paper_results() if paper is None else paper
        paper = paper[paper["table"].isin(["table1", "table2"])]
        for (stud, method), grp in paper.groupby(["student", "method"], sort=False):
            values = dict(zip(grp["split"], grp["value"]))
            rows.append({"student": stud, "method": method, "source": "paper", **{c: values.get(c) for c in columns}})
    table = pd.DataFrame(rows)
    titles = {n: DATASETS[n].title for n in HELD_IN + OOD} | AVG_COLUMNS
    return table.rename(columns=titles)


def to_markdown(table, floatfmt: str = ".1f") -> str:
    """Markdown without the optional 'tabulate' dependency; empty cells print as '–'."""
    cols = list(table.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in table.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            if isinstance(v, float):
                cells.append("–" if v != v else format(v, floatfmt))
            else:
                cells.append("–" if v is None else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_eval_report(summary, out_dir: str | Path, *, student: str, title: str = "") -> dict[str, Path]:
    """Write the paper-layout table (CSV and Markdown) and the accuracy bar plot (PNG, PDF)."""

    out_dir = Path(out_dir)
    table = paper_layout([summary], student=student)
    paths = {"table_csv": out_dir / "table_paper_layout.csv", "table_md": out_dir / "table_paper_layout.md"}
    atomic_write_text(paths["table_csv"], table.to_csv(index=False, float_format="%.2f"))
    atomic_write_text(paths["table_md"], to_markdown(table))
    fig = plotting.accuracy_bars(summary, title=title or f"{student}: accuracy per dataset (95% CI)")
    png, pdf = plotting.save(fig, out_dir / "accuracy_by_dataset")
    paths.update(plot_png=png, plot_pdf=pdf)
    return paths
