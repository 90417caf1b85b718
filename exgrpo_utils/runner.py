"""Run the numbered notebooks headless with papermill, with parameters from a preset file.

    python -m exgrpo_utils.runner --preset cpu                 # the main job (make reproduce)
    python -m exgrpo_utils.runner --preset smoke --run-name t  # seconds to minutes
    python -m exgrpo_utils.runner --preset cpu --only 04_evaluate --set limit_per_dataset=10

Presets live in ``configs/<preset>.yaml``: a ``notebooks`` list, one section of parameters per
notebook, and optionally ``run_name`` (the run folder it writes to; default the preset's name). Each executed notebook goes to ``results/executed/<run>/<notebook>.ipynb`` with its
resolved parameters beside it (``<notebook>.parameters.json``). A notebook that finished with the
same parameters is skipped on the next run (``--force`` reruns it), unless a notebook before it
in the same call ran (its outputs may be inputs of the later ones); the stages inside resume too.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .io import atomic_write_json
from .paths import PROJECT_ROOT, results_root

CONFIG_DIR = PROJECT_ROOT / "configs"
NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"


def load_preset(preset: str) -> dict:
    import yaml

    path = Path(preset) if preset.endswith((".yaml", ".yml")) else CONFIG_DIR / f"{preset}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise SystemExit(f"preset {preset!r}: no file {path} (known presets: {known})")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SystemExit(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(cfg.get("notebooks"), list):
        raise SystemExit(f"{path}: needs a 'notebooks' list")
    for nb in cfg["notebooks"]:
        if not isinstance(cfg.get(nb, {}), dict):
            raise SystemExit(f"{path}: section {nb!r} must be a mapping of parameters")
    return cfg


def parse_overrides(pairs: list[str]) -> dict:
    import yaml

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set {pair!r}: expected key=value")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def notebook_path(stem: str) -> Path:
    path = NOTEBOOK_DIR / f"{stem}.ipynb"
    if not path.exists():
        raise SystemExit(f"notebook {path} does not exist")
    return path


def run_notebook(stem: str, params: dict, out_dir: Path, *, force: bool = False, log=print) -> bool:
    """Execute one notebook unless it finished with these parameters; True when it ran."""
    import os

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
    seconds = round(time.time() - t0, 1)
    atomic_write_json(done_file, {"parameters": params, "seconds": seconds})
    log(f"[done] {stem} in {seconds} s")
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu", help="configs/<preset>.yaml or a path to a YAML file")
    ap.add_argument("--run-name", default=None, help="results/runs/<run-name> (default: the preset name)")
    ap.add_argument("--only", nargs="+", default=None, help="run only these notebooks (stems)")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override a parameter everywhere it applies")
    ap.add_argument("--force", action="store_true", help="rerun notebooks that already finished")
    args = ap.parse_args(argv)

    cfg = load_preset(args.preset)
    # outputs: results/runs/<run_name>; a preset may name the run it extends (cpu-full adds to cpu)
    run_name = args.run_name or cfg.get("run_name") or Path(args.preset).stem
    executed_name = args.run_name or Path(args.preset).stem
    overrides = parse_overrides(args.set)
    stems = args.only or cfg["notebooks"]
    unused = set(overrides) - {k for stem in stems for k in cfg.get(stem, {})}
    if unused:
        raise SystemExit(f"--set {', '.join(sorted(unused))}: applies to no notebook of this run ({', '.join(stems)})")
    out_dir = results_root() / "executed" / executed_name
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    upstream_ran = False  # once a notebook runs, the later ones run too: their inputs may have changed
    for stem in stems:
        params = dict(cfg.get(stem, {}))
        params.update({k: v for k, v in overrides.items() if k in params})
        params["run_name"] = run_name
        upstream_ran |= run_notebook(stem, params, out_dir, force=args.force or upstream_ran)
    print(f"finished {len(stems)} notebook(s) in {time.time() - t0:.0f} s")
    print(f"executed notebooks: {out_dir}")
    print(f"run outputs:        {results_root() / 'runs' / run_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
