"""Plots. One function per figure; each returns the matplotlib Figure and can save PNG and PDF.

The returned Figure is closed in pyplot (pyplot keeps no reference to it), so nothing draws it behind
the caller's back: a notebook saves and shows it with ``publish(fig, stem)`` as its cell's last
expression (the PNG just saved, once, with the figure's title as its text form), and a script saves
it. Where it is drawn depends on the process:

- inside a Jupyter kernel (JupyterLab, papermill), ipykernel sets ``MPLBACKEND`` to the inline
  backend, which is kept, so the figure becomes an ``image/png`` output of the cell;
- anywhere else with no backend chosen (scripts, tests, the runner), pyplot gets the headless Agg
  backend, which needs no display.
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

# matplotlib, seaborn are imported inside the functions that use them (heavy, or needed only on some paths).


def _plt():
    """pyplot, on the backend already chosen (a kernel's inline backend, ``MPLBACKEND``, a matplotlibrc,
    ``matplotlib.use``), else on Agg: headless, needs no display."""
    import matplotlib

    if matplotlib.get_backend(auto_select=False) is None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _detached(fig):
    """``fig``, released by pyplot: a kernel's inline backend then does not also draw it at the end of
    the cell (one image per figure, from the notebook's own display), and long runs keep no figures."""
    import matplotlib.pyplot as plt

    plt.close(fig)
    return fig


@dataclass(frozen=True)
class SavedFigure:
    """A figure saved as PNG and PDF. A notebook displays it as the PNG that was saved (no second
    rendering, at the figure's size in inches x 100 pixels), with the figure's title as its text."""
    png: Path
    pdf: Path
    title: str
    width: int

    def _repr_png_(self):
        return self.png.read_bytes(), {"width": self.width}

    def __repr__(self) -> str:
        return self.title or self.png.stem


def _title(fig) -> str:
    suptitle = fig.get_suptitle()
    return suptitle or next((t for ax in fig.axes if (t := ax.get_title())), "")


def publish(fig, path_stem: str | Path) -> SavedFigure:
    """Save ``fig`` (``save``) and return it for a notebook to show: the saved PNG, titled."""
    png, pdf = save(fig, path_stem)
    return SavedFigure(png, pdf, _title(fig), int(round(fig.get_figwidth() * 100)))


def save(fig, path_stem: str | Path) -> list[Path]:
    """Save ``fig`` as ``<stem>.png`` and ``<stem>.pdf``."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight")
    return paths


def accuracy_bars(summary, title: str = "", paper_averages: dict[str, float] | None = None):
    """Per-dataset accuracy with 95% intervals; held-in and OOD sets coloured apart.

    ``paper_averages``: optional {"held-in-avg8": value, ...} drawn as dashed reference lines.
    """
    plt = _plt()
    import seaborn as sns

    df = summary.copy()
    colours = {"held-in": sns.color_palette()[0], "ood": sns.color_palette()[1]}
    df["colour_key"] = ["avg" if r.startswith("average") else r for r in df["role"]]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(df) + 2), 4))
    x = range(len(df))
    cols = [colours.get(k, (0.5, 0.5, 0.5)) for k in df["colour_key"]]
    err = [df["accuracy"] - df["ci_low"], df["ci_high"] - df["accuracy"]]
    ax.bar(x, df["accuracy"], color=cols, yerr=err, capsize=3)
    ax.set_xticks(list(x), df["dataset"], rotation=45, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    for key, value in (paper_averages or {}).items():
        ax.axhline(value, ls="--", lw=1, color="k")
        ax.text(len(df) - 0.5, value + 1, f"paper {key}: {value:.1f}", ha="right", fontsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()] + [plt.Rectangle((0, 0), 1, 1, color=(0.5, 0.5, 0.5))]
    ax.legend(handles, ["held-in", "OOD", "average"], fontsize=8, loc="upper left")
    ax.set_title(title)
    fig.tight_layout()
    return _detached(fig)


def probe_filter_bars(stats_rules, title: str = ""):
    """Per rule: probes generated, kept by Eq. 1, and in questions kept by Eq. 2."""
    plt = _plt()

    df = stats_rules.groupby("rule", sort=False)[["generated", "kept_eq1", "in_kept_items"]].sum()
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(df) + 2), 4))
    width = 0.27
    x = range(len(df))
    for j, (col, label) in enumerate([("generated", "generated"), ("kept_eq1", "kept by Eq. 1"),
                                      ("in_kept_items", "in questions kept by Eq. 2")]):
        ax.bar([i + (j - 1) * width for i in x], df[col], width=width, label=label)
    ax.set_xticks(list(x), df.index, rotation=45, ha="right")
    ax.set_ylabel("probes")
    ax.legend(fontsize=8)
    ax.set_title(title or "Explanatory Inversion: probes per rule through the filters")
    fig.tight_layout()
    return _detached(fig)


def training_curves(log, columns: dict[str, str], title: str = "", smooth: int = 1):
    """One panel per logged metric against the training step (Figure 3's R_base and r_dsu curves).

    ``columns``: {log column: panel title}; missing columns are skipped. ``smooth`` > 1 adds a
    rolling mean over that many steps.
    """
    plt = _plt()

    log = log[log["step"] > 0]
    if "loss" in log.columns:  # the end-of-training summary row has no per-step metrics
        log = log[log["loss"].notna()]
    present = [(c, t) for c, t in columns.items() if c in log.columns]
    if not present:
        raise ValueError(f"none of the columns {list(columns)} are in the log")
    cols = min(3, len(present))
    rows = (len(present) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, (col, name) in zip(axes.flat, present):
        ax.plot(log["step"], log[col], lw=1, alpha=0.5 if smooth > 1 else 1)
        if smooth > 1:
            ax.plot(log["step"], log[col].rolling(smooth, min_periods=1).mean(), lw=2)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return _detached(fig)


def figure1_ei_test(points, title: str = "Figure 1: accuracy on the test set and on its EI-Test"):
    """Per model, its accuracy on the original test questions beside its accuracy on the EI-Test
    (``report.figure1.figure1_points``), with 95% intervals; a bar without one (too few EI questions)
    is hatched and drawn without an error bar."""
    plt = _plt()
    models = list(dict.fromkeys(points["model"])) if len(points) else []
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(models) + 1.5), 3.5))
    width = 0.38
    for j, name in enumerate(("original", "EI-Test")):
        grp = points[points["set"] == name].set_index("model").reindex(models)
        xs = [i + (j - 0.5) * width for i in range(len(models))]
        err = [(grp["accuracy"] - grp["low"]).clip(lower=0).fillna(0), (grp["high"] - grp["accuracy"]).clip(lower=0).fillna(0)]
        bars = ax.bar(xs, grp["accuracy"], width, yerr=err, capsize=3, label=name)
        for bar, missing in zip(bars, grp["low"].isna()):
            bar.set_hatch("//" if missing else None)
    ax.set_xticks(range(len(models)), models, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    if models:
        ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _detached(fig)


def figure3_rewards(curves, title: str = "Figure 3: R_base and r_dsu during ExGRPO training", smooth: int = 3):
    """R_base and the mean DSU bonus r_dsu per step, one thin line per seed and their mean over the
    seeds, smoothed by a running mean over the last ``smooth`` steps (1: none); and the share of
    questions per step where the bonus fired (Eq. 5) beside the share where it changed an advantage
    (``exgrpo/bonus_effective``; runs logged before it was measured show fired only)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, col, name in ((axes[0], "r_base", "R_base (Eq. 4)"), (axes[1], "r_dsu", "mean r_dsu (Eq. 5)")):
        if len(curves):
            for rid, grp in curves.groupby("run_id"):
                ax.plot(grp["step"], grp[col], lw=1, alpha=0.5, label=rid)
            mean = curves.groupby("step")[col].mean().rolling(max(1, smooth), min_periods=1).mean()
            ax.plot(mean.index, mean.values, lw=2.5, color="k",
                    label=f"mean over seeds, running mean of {smooth} steps" if smooth > 1 else "mean over seeds")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("training step")
    _bonus_panel(axes[2], curves)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _detached(fig)


def _bonus_panel(ax, curves) -> None:
    """Cumulative share of questions where the bonus fired, and where it acted, over the seeds."""
    for col, label, style in (("bonus_fired", "fired (Eq. 5)", "--"), ("bonus_effective", "changed an advantage", "-")):
        if col in curves and curves[col].notna().any():
            per_step = curves.groupby("step")[col].mean()
            ax.plot(per_step.index, per_step.expanding().mean().values, style, lw=2, label=label)
    if "bonus_effective" not in curves or not curves["bonus_effective"].notna().any():
        ax.text(0.5, 0.5, "effect on advantages\nnot logged in these runs", ha="center", va="center",
                transform=ax.transAxes, fontsize=8, color="0.4")
    ax.set_ylim(0, 1)
    ax.set_title("DSU bonus: share of questions (cumulative)", fontsize=10)
    ax.set_xlabel("training step")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def figure4_fraction(points, notes: Sequence[str] = (), title: str = "Figure 4: accuracy vs training-data fraction"):
    """Accuracy against the data fraction p, ExGRPO vs SFT, with 95% intervals; each point labelled
    with the mean number of questions its models trained on (``questions``, where known), and
    ``notes`` (``report.figure4.notes``: fractions that trained on the same questions) below."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5 + 0.3 * len(notes)))
    for method, grp in points.groupby("method"):
        grp = grp.sort_values("p")
        lo = (grp["mean"] - grp["low"]).fillna(0).clip(lower=0)
        hi = (grp["high"] - grp["mean"]).fillna(0).clip(lower=0)
        ax.errorbar(grp["p"], grp["mean"], yerr=[lo, hi], marker="o", capsize=3, label=method)
        for p, mean, q in zip(grp["p"], grp["mean"], grp["questions"]):
            if q == q:  # not NaN
                ax.annotate(f"{q:.3g} q", (p, mean), textcoords="offset points", xytext=(4, 4), fontsize=6)
    ax.set_xscale("log")
    ax.set_xticks([0.1, 0.25, 0.5, 1.0], ["0.1", "0.25", "0.5", "1.0"])
    ax.set_xlabel("fraction p of the training questions (labels: questions trained on)")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    footnote = "\n".join(textwrap.fill(n, 100) for n in notes)
    fig.tight_layout(rect=(0, min(0.5, 0.03 + 0.035 * (footnote.count("\n") + 1)) if notes else 0, 1, 1))
    if notes:
        fig.text(0.01, 0.01, footnote, fontsize=5.5, va="bottom")
    return _detached(fig)


def _fmt_tokens(x: float, _pos=None) -> str:
    """A token count as a tick label: 150k, 2M, 800."""
    return f"{x / 1e6:g}M" if x >= 1e6 else f"{x / 1e3:g}k" if x >= 1e3 else f"{x:g}"


def _token_axis(ax, tokens) -> None:
    """A log x axis of token counts with labelled ticks even where the counts span less than a decade
    (matplotlib labels only powers of ten, and a CPU run's methods often lie between two)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    tokens = [t for t in tokens if t and t == t]
    decades = math.log10(max(tokens) / min(tokens)) if tokens else 3.0
    subs = ((1.0,) if decades > 3 else (1.0, 2.0, 5.0) if decades > 1 else (1.0, 1.5, 2.0, 3.0, 5.0, 7.0) if decades > 0.6
            else (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0))
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(_fmt_tokens))
    ax.xaxis.set_minor_formatter(NullFormatter())


def figure5_tokens(points, title: str = "Figure 5: accuracy vs training tokens"):
    """Accuracy against the tokens processed in training (warm-up included), one point per method;
    zero-shot (no training) as a dashed line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.6))
    markers = {"sft": "o", "rl": "s", "opd": "^"}
    trained = points[points["kind"] != "zero-shot"].sort_values("train_tokens").reset_index(drop=True)
    colors = plt.get_cmap("tab20").colors
    for i, r in trained.iterrows():  # one colour and legend entry per method: labels on the axes would collide
        yerr = None
        if not math.isnan(r["low"]):
            yerr = [[max(0.0, r["mean"] - r["low"])], [max(0.0, r["high"] - r["mean"])]]
        ax.errorbar([r["train_tokens"]], [r["mean"]], yerr=yerr, marker=markers.get(r["kind"], "o"), capsize=2, ls="none",
                    alpha=0.85, color=colors[i % len(colors)], label=f"{r['key']} ({int(r['seeds'])} seed{'s' if r['seeds'] > 1 else ''})")
    for _, r in points[points["kind"] == "zero-shot"].iterrows():
        ax.axhline(r["mean"], ls="--", lw=1, color="k")
        ax.text(0.01, r["mean"], "zero-shot", fontsize=7, va="bottom", transform=ax.get_yaxis_transform())
    _token_axis(ax, trained["train_tokens"])
    ax.set_xlabel("training tokens (prompt + completion; RL methods include their SFT warm-up)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title + "  (circles: SFT-type, squares: RL)", fontsize=10)
    if len(trained):
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return _detached(fig)
