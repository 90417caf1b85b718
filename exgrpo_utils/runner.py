"""Run the numbered notebooks headless with papermill, with parameters from a preset.

    python -m exgrpo_utils.runner --preset cpu                  # the main job (make reproduce)
    python -m exgrpo_utils.runner --preset smoke --run-name t   # seconds to minutes
    python -m exgrpo_utils.runner --preset cpu --only 04_evaluate --set suite_limit=5 --run-name quick
    python -m exgrpo_utils.runner --preset paper --dry-run      # print every notebook's parameters, run nothing

Parameters resolve as: the settings dataclasses' defaults < the preset (``configs/<preset>.yaml``,
and the presets it ``extends``) < ``--set KEY=VALUE`` (typed by the field it sets; an unknown key is
refused with the list of known ones). Each notebook receives the parameters it declares
(``config.NOTEBOOKS``). Each executed notebook goes to ``results/executed/<name>/<notebook>.ipynb``
with its parameters beside it. A notebook that finished with the same parameters is skipped on the
next run (``--force`` reruns it), unless a notebook before it in the same call ran (its outputs may
be inputs of the later ones); the stages inside resume too.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import nbformat

from .config import NOTEBOOK_DIR, NOTEBOOKS, for_notebook, load_preset, parse_overrides, resolve
from .infra.files import atomic_write_json, atomic_write_text
from .infra.layout import RunLayout
from .infra.paths import portable, portable_text
from .infra.settings import SettingsError

# papermill is imported inside the function that uses it (heavy, or needed only on some paths).


def notebook_path(stem: str) -> Path:
    path = NOTEBOOK_DIR / f"{stem}.ipynb"
    if not path.exists():
        raise SettingsError(f"notebook {path} does not exist")
    return path


def run_notebook(stem: str, params: dict, out_dir: Path, *, force: bool = False, log=print) -> bool:
    """Execute one notebook unless it finished with these parameters; True when it ran."""
    import papermill as pm

    os.environ.setdefault("EXGRPO_PROGRESS", "lines")  # the kernel inherits it: progress lines in the log
    out_nb = out_dir / f"{stem}.ipynb"
    params_file = out_dir / f"{stem}.parameters.json"
    done_file = out_dir / f"{stem}.done.json"
    if not force and done_file.exists() and json.loads(done_file.read_text()).get("parameters") == params:
        log(f"[skip] {stem}: already finished with these parameters ({out_nb})")
        return False
    atomic_write_json(params_file, params)
    done_file.unlink(missing_ok=True)
    log(f"[run ] {stem} -> {out_nb}")
    t0 = time.time()
    try:
        pm.execute_notebook(str(notebook_path(stem)), str(out_nb), parameters=params, kernel_name="python3",
                            cwd=str(NOTEBOOK_DIR), progress_bar=False, log_output=True)
    except pm.PapermillExecutionError as exc:
        raise SystemExit(f"notebook {stem} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}\n"
                         f"The executed notebook with the full traceback is {out_nb}") from None
    finally:
        _make_portable(out_nb)
    seconds = round(time.time() - t0, 1)
    atomic_write_json(done_file, {"parameters": params, "seconds": seconds})
    log(f"[done] {stem} in {seconds} s")
    return True


def _make_portable(executed: Path) -> None:
    """papermill records its input and output paths as given (absolute), and printed output (paths,
    warnings naming library files, tracebacks) holds this machine's paths: store both portably."""
    try:
        nb = nbformat.read(executed, as_version=4)
    except (OSError, ValueError, nbformat.ValidationError):  # not written, or not a notebook: nothing to fix, and no error to mask
        return
    meta = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if meta.get(key):
            meta[key] = portable(meta[key])
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out:
                out["text"] = portable_text(out["text"])
            if "traceback" in out:
                out["traceback"] = [portable_text(line) for line in out["traceback"]]
            for mime, value in (out.get("data") or {}).items():
                if mime.startswith("text/") and isinstance(value, str):
                    out["data"][mime] = portable_text(value)
    atomic_write_text(executed, nbformat.writes(nb))


def plan(args) -> tuple[RunLayout, str, list[tuple[str, dict]]]:
    """(run layout, executed-folder name, [(notebook, its parameters)]) for the command line ``args``."""
    preset = load_preset(args.preset)
    overrides = parse_overrides(args.set)
    run_name = args.run_name or preset.values.get("run_name") or Path(args.preset).stem
    layout = RunLayout.of(run_name)
    stems = list(args.only or preset.notebooks)
    unknown = [s for s in stems if s not in NOTEBOOKS]
    if unknown:
        raise SettingsError(f"--only {', '.join(unknown)}: no such notebook; known: {', '.join(NOTEBOOKS)}")
    unused = [k for k in overrides if not any(k in NOTEBOOKS[s] for s in stems)]
    if unused:
        raise SettingsError(f"--set {', '.join(sorted(unused))}: taken by no notebook of this call ({', '.join(stems)})")
    values = resolve(preset, overrides, run_name=run_name)
    return layout, args.run_name or Path(args.preset).stem, [(s, for_notebook(s, values)) for s in stems]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu", help="configs/<preset>.yaml or a path to a YAML file")
    ap.add_argument("--run-name", default=None, help="results/runs/<run-name> (default: the preset's run_name, else its name)")
    ap.add_argument("--only", nargs="+", default=None, help="run only these notebooks (stems)")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override a parameter in every notebook that takes it")
    ap.add_argument("--force", action="store_true", help="rerun notebooks that already finished")
    ap.add_argument("--dry-run", action="store_true", help="print every notebook's resolved parameters; run nothing")
    args = ap.parse_args(argv)
    try:
        layout, executed_name, todo = plan(args)
    except (SettingsError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.dry_run:
        for stem, params in todo:
            print(f"# {stem}")
            print("\n".join(f"  {k} = {json.dumps(v)}" for k, v in params.items()))
        print(f"# outputs: {layout.root}; executed notebooks: {layout.executed_dir(executed_name)}")
        return 0
    out_dir = layout.executed_dir(executed_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    layout.create()
    t0 = time.time()
    upstream_ran = False  # once a notebook runs, the later ones run too: their inputs may have changed
    for stem, params in todo:
        upstream_ran |= run_notebook(stem, params, out_dir, force=args.force or upstream_ran)
    print(f"finished {len(todo)} notebook(s) in {time.time() - t0:.0f} s")
    print(f"executed notebooks: {out_dir}")
    print(f"run outputs:        {layout.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
