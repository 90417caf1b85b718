"""Run the numbered notebooks headless with papermill, with parameters from a preset.

    python -m exgrpo_utils.runner --preset cpu                  # the main job (make reproduce)
    python -m exgrpo_utils.runner --preset smoke --run-name t   # seconds to minutes
    python -m exgrpo_utils.runner --preset cpu --only 04_evaluate --set suite_limit=5 --run-name quick
    python -m exgrpo_utils.runner --preset paper --dry-run      # print every notebook's parameters, run nothing

Parameters resolve as: the settings dataclasses' defaults < the preset (``configs/<preset>.yaml``,
and the presets it ``extends``) < ``--set KEY=VALUE`` (typed by the field it sets; an unknown key is
refused with the list of known ones). Each notebook receives the parameters it declares
(``config.NOTEBOOKS``). Each executed notebook goes to ``results/executed/<name>/<notebook>.ipynb``
with its parameters beside it, and, once it finishes, a done record (``<notebook>.done.json``): its
parameters and the digests of its inputs (``notebook_inputs``: the data files, the models by content,
the done records of the run's earlier notebooks). A notebook whose done record holds the same
parameters and inputs is skipped on the next run (``--force`` reruns it); otherwise it runs again,
and the runner says what differs. The stages inside resume too (their own fingerprints).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import nbformat

from .config import (
    NOTEBOOK_DIR,
    NOTEBOOKS,
    PLACEMENT,
    for_notebook,
    load_preset,
    new_at_default,
    parse_overrides,
    resolve,
    run_name_of,
)
from .data.datasets import DataNotFoundError, resolve_data_dir
from .experiments.jobs import plan_description
from .infra.files import atomic_write_json, atomic_write_text
from .infra.fingerprint import differences, file_digest
from .infra.layout import RunLayout
from .infra.paths import portable, portable_text
from .infra.settings import SettingsError
from .models.registry import model_identity

# papermill and nbclient are imported inside the function that uses them (heavy, or needed only on some paths).


def notebook_path(stem: str) -> Path:
    path = NOTEBOOK_DIR / f"{stem}.ipynb"
    if not path.exists():
        raise SettingsError(f"notebook {path} does not exist")
    return path


def data_digests(data_dir: str = "") -> dict:
    """{``<name>/<split>.jsonl``: digest} of every data file the kit may read (the ``data_dir``
    parameter, else ``$EXGRPO_DATA_DIR``); empty without a data directory (the hub's copies)."""
    root = resolve_data_dir(data_dir or None)
    if root is None:
        return {}
    return {str(p.relative_to(root)): file_digest(p) for p in sorted(root.glob("*/*.jsonl"))}


def _done_records(results_executed: Path, run_name: str) -> dict[str, dict]:
    """{notebook: done record} of run ``run_name``, from every executed folder (a run may be made
    by several presets: cpu, then cpu-full), the one that finished last where two hold one (by
    the ``finished`` stamp, which starts with its time: files' times change with a checkout)."""
    found: dict[str, dict] = {}
    for path in sorted(results_executed.glob("*/*.done.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        stem = path.name[: -len(".done.json")]
        if (rec.get("parameters") or {}).get("run_name") == run_name and rec.get("finished"):
            if stem not in found or rec["finished"] > found[stem]["finished"]:
                found[stem] = rec
    return found


def notebook_inputs(stem: str, params: dict, results_executed: Path) -> dict:
    """What a notebook's outputs are made from besides its parameters: the content of the data files,
    the student (and a local teacher) by content (``models.registry.model_identity``), and which
    finished run of each earlier notebook of the same run it read (their ``finished`` ids)."""
    models = {k: model_identity(params[k]) for k in ("student", "teacher_model") if params.get(k)}
    earlier = list(NOTEBOOKS)[: list(NOTEBOOKS).index(stem)]
    done = _done_records(results_executed, params.get("run_name", ""))
    return {"data": data_digests(params.get("data_dir", "")), "models": models,
            "upstream": {s: done[s]["finished"] for s in earlier if s in done}}


def _why_rerun(done: dict, params: dict, inputs: dict) -> str | None:
    """Why a notebook with done record ``done`` must run again; None when it is current. Where its
    trainings ran (``config.PLACEMENT``: the executor and its resources) is no reason."""
    before, now = ({k: v for k, v in d.items() if k not in PLACEMENT} for d in (done.get("parameters") or {}, params))
    now = new_at_default(before, now)
    if before != now:
        return f"its parameters changed ({differences(before, now)})"
    if "inputs" not in done:
        return "its done record holds no input digests (made by an older version of the kit)"
    if done["inputs"] != inputs:
        return f"its inputs changed ({differences(done['inputs'], inputs, limit=4)})"
    return None


def run_notebook(stem: str, params: dict, out_dir: Path, *, force: bool = False, log=print) -> bool:
    """Execute one notebook unless it finished with these parameters and inputs; True when it ran."""
    import papermill as pm
    from nbclient.exceptions import DeadKernelError

    os.environ.setdefault("EXGRPO_PROGRESS", "lines")  # the kernel inherits it: progress lines in the log
    out_nb = out_dir / f"{stem}.ipynb"
    done_file = out_dir / f"{stem}.done.json"
    inputs = notebook_inputs(stem, params, out_dir.parent)
    why = "--force" if force else "it has not finished" if not done_file.exists() else \
        _why_rerun(json.loads(done_file.read_text()), params, inputs)
    if why is None:
        log(f"[skip] {stem}: already finished with these parameters and inputs ({out_nb})")
        return False
    atomic_write_json(out_dir / f"{stem}.parameters.json", params)
    done_file.unlink(missing_ok=True)
    log(f"[run ] {stem} -> {out_nb} (runs because {why})")
    t0 = time.time()
    try:
        pm.execute_notebook(str(notebook_path(stem)), str(out_nb), parameters=params, kernel_name="python3",
                            cwd=str(NOTEBOOK_DIR), progress_bar=False, log_output=True)
    except pm.PapermillExecutionError as exc:
        raise SystemExit(f"notebook {stem} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}\n"
                         f"The executed notebook with the full traceback is {out_nb}") from None
    except DeadKernelError:
        raise SystemExit(f"notebook {stem}: its kernel died after {time.time() - t0:.0f} s (killed, or out of memory?); "
                         f"the executed notebook up to there is {out_nb}. Rerun to resume: finished stages are "
                         "kept") from None
    finally:
        _make_portable(out_nb)
    seconds = round(time.time() - t0, 1)
    atomic_write_json(done_file, {"parameters": params, "inputs": inputs, "seconds": seconds,
                                  "finished": f"{datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%S.%fZ}-{uuid.uuid4().hex[:8]}"})
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
    run_name = run_name_of(args.preset, preset, args.run_name)
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
            if stem == "05_experiments":
                print("# 05_experiments: the training plan\n" + plan_description(params))
        print(f"# outputs: {layout.root}; executed notebooks: {layout.executed_dir(executed_name)}")
        return 0
    out_dir = layout.executed_dir(executed_name)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        layout.create()
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise SystemExit(f"error: cannot write the results folder {layout.results} ({exc.strerror or exc}): set "
                         "EXGRPO_RESULTS_DIR to a writable folder, or fix its permissions") from None
    t0 = time.time()
    for stem, params in todo:  # a later notebook whose upstream ran again sees it in its inputs and runs too
        try:
            run_notebook(stem, params, out_dir, force=args.force)
        except DataNotFoundError as exc:
            raise SystemExit(f"error: {stem}: {exc}") from None
    print(f"finished {len(todo)} notebook(s) in {time.time() - t0:.0f} s")
    print(f"executed notebooks: {out_dir}")
    print(f"run outputs:        {layout.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
