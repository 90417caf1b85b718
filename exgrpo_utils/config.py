"""The kit's parameters: one flat namespace built from the stages' settings dataclasses, presets as
override files, and the parameter cell of every notebook.

* Every parameter is a field of one settings dataclass (:data:`SETTINGS`); its default lives there
  and only there. Its flat name is the class's ``PREFIX`` + the field name (``sft_learning_rate``),
  so one name means one thing in every notebook, preset and ``--set``.
* A preset (``configs/<name>.yaml``) lists only what differs: from the defaults, or (``extends``) from
  another preset. Reserved keys: ``extends``, ``notebooks``; everything else is a parameter.
* :data:`NOTEBOOKS` says which parameters each notebook takes. Its parameter cell is generated from
  the dataclasses and the ``cpu`` preset (``python -m exgrpo_utils.config --write-notebooks``); a
  test keeps the committed cells equal to the generated ones.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import nbformat
import yaml

from .evaluate.settings import SuiteSettings, TaskEvalSettings
from .experiments.settings import ExperimentSettings
from .infra.files import atomic_write_text
from .infra.layout import safe_label
from .infra.paths import PROJECT_ROOT
from .infra.runsettings import RunSettings
from .infra.settings import SOURCES, Param, SettingsError, check_choice, coerce, params_of, parse_text, plain
from .models.chat import ENV_NAME_RE
from .report.settings import FigureSettings
from .setup_check import TourSettings
from .teach.settings import EISettings, TeacherSettings
from .train.settings import ExGRPOSettings, SFTSettings

CONFIG_DIR = PROJECT_ROOT / "configs"
NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
RESERVED = ("extends", "notebooks")
NOTEBOOK_DEFAULTS_PRESET = "cpu"  # the values a notebook runs with when opened by hand


SETTINGS = (RunSettings, TourSettings, TeacherSettings, EISettings, SFTSettings, ExGRPOSettings, TaskEvalSettings,
            SuiteSettings, ExperimentSettings, FigureSettings)


def _all_params() -> dict[str, Param]:
    out: dict[str, Param] = {}
    for cls in SETTINGS:
        for p in params_of(cls):
            if p.name in out:
                raise TypeError(f"parameter {p.name!r} is declared by {out[p.name].owner.__name__} and {cls.__name__}")
            out[p.name] = p
    return out


PARAMS: dict[str, Param] = _all_params()


def _names(*classes, extra: Sequence[str] = ()) -> tuple[str, ...]:
    return tuple(extra) + tuple(p.name for cls in classes for p in params_of(cls))


_RUN = ("run_name", "data_dir", "student")
_GEN = ("dtype", "backend", "sample_seed", "fresh")
NOTEBOOKS: dict[str, tuple[str, ...]] = {
    "00_setup": _names(TourSettings, extra=_RUN + ("dtype", "sample_seed")),
    "01_probes": _names(TeacherSettings, EISettings, extra=_RUN + ("dtype", "sample_seed", "fresh")),
    "02_sft": _names(SFTSettings, TaskEvalSettings, extra=_RUN + ("train_dataset",) + _GEN + ("report_to",)),
    "03_exgrpo": _names(ExGRPOSettings, TaskEvalSettings, extra=_RUN + ("train_dataset",) + _GEN + ("report_to",)),
    "04_evaluate": _names(SuiteSettings, extra=_RUN + _GEN),
    "05_experiments": _names(TeacherSettings, SFTSettings, ExGRPOSettings, TaskEvalSettings, SuiteSettings,
                             ExperimentSettings, extra=_RUN + ("train_dataset",) + _GEN + ("report_to",)),
    "06_paper_figures": _names(FigureSettings, extra=("run_name",)),
}

# Where notebook 05's trainings run, not what they compute: a change never makes a finished notebook
# run again (runner: its done record is compared without them).
PLACEMENT = tuple(p.name for p in params_of(ExperimentSettings)
                  if p.name in ("exp_executor", "exp_accelerate_config") or p.name.startswith("exp_slurm_"))


def new_at_default(before: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, Any]:
    """``now`` without the parameters that ``before`` (a done record made before they existed) lacks and
    that are at their default, where that default is the earlier behaviour (``setting(added=True)``)."""
    return {k: v for k, v in now.items()
            if k in before or not (k in PARAMS and PARAMS[k].added and v == PARAMS[k].default)}


def defaults() -> dict[str, Any]:
    return {name: p.default for name, p in PARAMS.items()}


def unknown_key_message(keys: Sequence[str], where: str) -> str:
    return (f"{where}: unknown parameter(s) {', '.join(sorted(keys))}; known parameters: {', '.join(sorted(PARAMS))} "
            "(docs/configuration.md)")


# ---------------------------------------------------------------------------------------------
# Presets

@dataclass(frozen=True)
class Preset:
    name: str
    notebooks: tuple[str, ...]
    values: dict[str, Any]  # the flat overrides of the whole chain, typed
    chain: tuple[Path, ...]  # files read, base first


def preset_path(preset: str) -> Path:
    path = Path(preset) if preset.endswith((".yaml", ".yml")) else CONFIG_DIR / f"{preset}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise SettingsError(f"preset {preset!r}: no file {path} (known presets: {known})")
    return path


def load_preset(preset: str, _seen: tuple[Path, ...] = ()) -> Preset:
    """Read a preset and the chain it extends; every key is checked and typed."""
    path = preset_path(preset).resolve()
    if path in _seen:
        raise SettingsError(f"{path}: 'extends' loops back to itself")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise SettingsError(f"{path}: expected a mapping of parameters")
    base = load_preset(str(raw["extends"]), _seen + (path,)) if raw.get("extends") else None
    unknown = [k for k in raw if k not in PARAMS and k not in RESERVED]
    if unknown:
        raise SettingsError(unknown_key_message(unknown, str(path)))
    values = dict(base.values) if base else {}
    for key, value in raw.items():
        if key not in RESERVED:
            where = f"{path.name}: {key}"
            values[key] = check_choice(where, PARAMS[key].choices, coerce(where, PARAMS[key].type, value))
    notebooks = raw.get("notebooks", base.notebooks if base else None)
    if not isinstance(notebooks, (list, tuple)) or not notebooks:
        raise SettingsError(f"{path}: needs a 'notebooks' list (or extend a preset that has one)")
    bad = [n for n in notebooks if n not in NOTEBOOKS]
    if bad:
        raise SettingsError(f"{path}: unknown notebook(s) {bad}; known: {', '.join(NOTEBOOKS)}")
    return Preset(path.stem, tuple(notebooks), values, (base.chain if base else ()) + (path,))


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs, each typed by the field it sets; unknown keys are refused."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise SettingsError(f"--set {pair!r}: expected key=value")
        key, text = (s.strip() for s in pair.split("=", 1))
        if key not in PARAMS:
            raise SettingsError(unknown_key_message([key], "--set"))
        out[key] = check_choice(key, PARAMS[key].choices, parse_text(key, PARAMS[key].type, text))
    return out


def run_name_of(preset_name: str, preset: Preset, given: str | None = None) -> str:
    """The run a preset writes: ``given`` (``--run-name``), else the preset's ``run_name``, else its file's name."""
    return given or preset.values.get("run_name") or Path(preset_name).stem


def resolve(preset: Preset | None, overrides: Mapping[str, Any] = (), *, run_name: str | None = None) -> dict[str, Any]:
    """Every parameter's value: defaults < preset chain < overrides < ``run_name``; checked before
    anything is written (an API key where its variable's name belongs never reaches a file; a value
    outside a parameter's choices; a ``suite_models`` label that is no folder name)."""
    values = defaults()
    if preset is not None:
        values.update(preset.values)
    values.update(dict(overrides))
    if run_name is not None:
        values["run_name"] = run_name
    key_env = values.get("teacher_api_key_env") or ""
    if key_env and not ENV_NAME_RE.fullmatch(key_env):  # never echo it: it may be the key itself
        raise SettingsError(f"teacher_api_key_env must be the NAME of the environment variable holding the API key "
                            f"(upper-case letters, digits and _, like GEMINI_API_KEY); the value given ({len(key_env)} "
                            "characters) is not one")
    for name, p in PARAMS.items():
        check_choice(name, p.choices, values[name])
    _check_suite_labels(values.get("suite_models") or ())
    return {k: plain(v) for k, v in values.items()}


def _check_suite_labels(entries: Sequence[str]) -> None:
    """Each ``suite_models`` entry's label (``label=spec``, or a method key alone) names the folder
    ``eval/<label>/`` of the run: ``infra.layout.safe_label`` refuses those that would not be one."""
    for entry in entries:
        try:
            safe_label(str(entry).partition("=")[0].strip())
        except SettingsError as exc:
            raise SettingsError(f"suite_models entry {entry!r}: {exc}") from None


def for_notebook(stem: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters notebook ``stem`` takes, from a resolved mapping."""
    if stem not in NOTEBOOKS:
        raise SettingsError(f"unknown notebook {stem!r}; known: {', '.join(NOTEBOOKS)}")
    return {name: values[name] for name in NOTEBOOKS[stem]}


def notebook_values(stem: str, namespace: Mapping[str, Any]) -> dict[str, Any]:
    """Inside a notebook: its parameters, read from its namespace and typed (papermill passes JSON)."""
    missing = [n for n in NOTEBOOKS[stem] if n not in namespace]
    if missing:
        raise SettingsError(f"notebook {stem}: parameters {missing} are not defined; regenerate its parameter cell "
                            "(python -m exgrpo_utils.config --write-notebooks)")
    return {n: check_choice(n, PARAMS[n].choices, coerce(n, PARAMS[n].type, namespace[n])) for n in NOTEBOOKS[stem]}


# ---------------------------------------------------------------------------------------------
# Notebook parameter cells

CELL_HEADER = ("# Parameters: generated from the settings dataclasses and configs/{preset}.yaml by\n"
               "# `python -m exgrpo_utils.config --write-notebooks` (edit those, not this cell).\n"
               "# papermill injects a preset's values after this cell; docs/configuration.md explains each one.\n")


def parameter_cell(stem: str, preset: str = NOTEBOOK_DEFAULTS_PRESET) -> str:
    values = for_notebook(stem, resolve(load_preset(preset), run_name=preset))
    lines = [CELL_HEADER.format(preset=preset)]
    for name, value in values.items():
        p = PARAMS[name]
        # help on its own line (papermill skips comment lines; an "=" in a trailing comment confuses it);
        # an optional type gets no annotation (papermill cannot read "int | None")
        annotation = "" if "|" in p.type_name else f": {p.type_name}"
        lines.append(f"# {p.help}\n{name}{annotation} = {_literal(value)}\n")
    return "".join(lines).rstrip("\n")


def _literal(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)


def parameters_cell_index(nb) -> int:
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            return i
    raise SettingsError("notebook has no cell tagged 'parameters'")


def write_notebook_cells(stems: Sequence[str] = tuple(NOTEBOOKS)) -> list[Path]:
    """Rewrite the parameter cell of each notebook from the dataclasses; returns the files changed."""
    changed = []
    for stem in stems:
        path = NOTEBOOK_DIR / f"{stem}.ipynb"
        nb = nbformat.read(path, as_version=4)
        cell = nb.cells[parameters_cell_index(nb)]
        text = parameter_cell(stem)
        if cell.source != text:
            cell.source = text
            nbformat.write(nb, path)
            changed.append(path)
    return changed


def configuration_reference() -> str:
    """docs/configuration.md: every parameter with its type, default, cpu and paper values, source, meaning."""
    cpu = resolve(load_preset("cpu"))
    paper = resolve(load_preset("paper"))
    used_by = {name: [s.split("_")[0] for s, names in NOTEBOOKS.items() if name in names] for name in PARAMS}
    out = ["# Configuration reference\n\n",
           "Generated by `python -m exgrpo_utils.config --write-docs` from the settings dataclasses and the presets; "
           "a test keeps it current. Every parameter has one name in every notebook, preset and `--set`. "
           "`default` is the dataclass default (the paper-scale value); `cpu` is the main job's value "
           "(`configs/cpu.yaml`), `paper` the paper preset's. Sources: " +
           "; ".join(f"*{k}*: {v}" for k, v in SOURCES.items()) +
           ".\n\n"]
    for cls in SETTINGS:
        module = "exgrpo_utils.config" if cls.__module__ == "__main__" else cls.__module__
        out.append(f"## {cls.__name__} (`{module}`)\n\n{(cls.__doc__ or '').strip()}\n\n")
        out.append("| parameter | type | default | cpu | paper | source | notebooks | meaning |\n|---|---|---|---|---|---|---|---|\n")
        for p in params_of(cls):
            cell = lambda v: "`" + json.dumps(v) + "`"
            cpu_v = cell(cpu[p.name]) if cpu[p.name] != p.default else "="
            paper_v = cell(paper[p.name]) if paper[p.name] != p.default else "="
            out.append(f"| `{p.name}` | {p.type_name.replace('|', 'or')} | {cell(p.default)} | {cpu_v} | {paper_v} | {p.source} | "
                       f"{', '.join(used_by[p.name]) or '-'} | {p.help.replace('|', '/')} |\n")
        out.append("\n")
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Regenerate the notebooks' parameter cells and docs/configuration.md.")
    ap.add_argument("--write-notebooks", action="store_true")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args(argv)
    if args.write_notebooks:
        for path in write_notebook_cells():
            print("rewrote", path)
    if args.write_docs:
        print("wrote", atomic_write_text(PROJECT_ROOT / "docs" / "configuration.md", configuration_reference()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
