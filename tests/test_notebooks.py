import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from exgrpo_utils import config, runner, train_cli
from exgrpo_utils.infra.settings import SettingsError, build
from exgrpo_utils.train.settings import ExGRPOSettings, SFTSettings

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _parameters(nb_path):
    from papermill.translators import PythonTranslator

    nb = nbformat.read(nb_path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{nb_path.name}: needs exactly one cell tagged 'parameters'"
    namespace = {}
    exec(cells[0].source, {}, namespace)  # our own committed cell, not model output
    params = {k: v for k, v in namespace.items() if not k.startswith("__")}
    declared = {p.name for p in PythonTranslator.inspect(cells[0])}
    assert declared == set(params), f"{nb_path.name}: papermill cannot read {set(params) - declared}"
    return cells[0].source, params


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: strip outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameter_cells_are_generated_from_the_settings(path):
    source, params = _parameters(path)
    assert source == config.parameter_cell(path.stem), \
        f"{path.name}: parameter cell is stale; run python -m exgrpo_utils.config --write-notebooks"
    assert list(params) == list(config.NOTEBOOKS[path.stem])
    cpu = config.for_notebook(path.stem, config.resolve(config.load_preset("cpu"), run_name="cpu"))
    assert params == cpu  # opened by hand, a notebook runs the main job's values


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_code_names_no_run_folder(path):
    """Every path of a run comes from RunLayout: no notebook writes a run folder's name itself."""
    import ast

    folders = {"ei", "train", "eval", "eval_task", "eval_arith", "experiments", "baselines", "paper", "executed", "runs", "results"}
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code" or "parameters" in cell.metadata.get("tags", []):
            continue
        literals = {n.value for n in ast.walk(ast.parse(cell.source)) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        assert not (literals & folders), f"{path.name}: folder names {literals & folders} written by hand; use RunLayout"


def _shows(statement: ast.stmt, name: str) -> bool:
    """``plotting.publish(name, ...)`` as an expression statement (a cell's last one is its displayed
    result) or inside ``display(...)``."""
    if not isinstance(statement, ast.Expr):
        return False
    value = statement.value
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "display":
        value = value.args[0] if len(value.args) == 1 else None
    return (isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr == "publish"
            and bool(value.args) and isinstance(value.args[0], ast.Name) and value.args[0].id == name)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_figure_a_notebook_makes_is_shown_once(path, figure_calls):
    """The plotting functions hand back a Figure that pyplot no longer holds (no image of its own at the
    end of the cell): a cell that makes one saves and shows it once, ``plotting.publish(fig, ...)`` as its
    last expression or in display()."""
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "code" or not figure_calls(cell.source):
            continue
        body = ast.parse(cell.source).body
        names = [t.id for s in body if isinstance(s, ast.Assign) and figure_calls(ast.unparse(s.value))
                 for t in s.targets if isinstance(t, ast.Name)]
        assert names, f"{path.name}: assign each figure to a name and show it:\n{cell.source}"
        for name in names:
            shown = [s for s in body if _shows(s, name)]
            assert len(shown) == 1 and (shown[0] is body[-1] or isinstance(shown[0].value.func, ast.Name)), \
                f"{path.name}: figure {name!r} is not shown exactly once:\n{cell.source}"


@pytest.mark.parametrize("mplbackend", [None, "module://matplotlib_inline.backend_inline"])
def test_plots_keep_a_kernels_backend_and_default_to_agg(mplbackend):
    """A Jupyter kernel sets MPLBACKEND to the inline backend, which the plots keep (figures become
    image/png outputs); a process with no backend chosen (script, test, runner) gets headless Agg."""
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "DISPLAY", "WAYLAND_DISPLAY")}
    if mplbackend:
        env["MPLBACKEND"] = mplbackend
    code = ("import matplotlib, pandas as pd, matplotlib.pyplot as plt\n"
            "from exgrpo_utils.report import plotting\n"
            "fig = plotting.figure3_rewards(pd.DataFrame(columns=['run_id', 'step', 'r_base', 'r_dsu']))\n"
            "print(matplotlib.get_backend(), len(plt.get_fignums()), len(fig.axes))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    backend, open_figures, axes = out.stdout.split()
    assert backend.lower() == (mplbackend or "agg")
    assert (open_figures, axes) == ("0", "3")  # pyplot holds no figure: the caller shows or saves it


def test_runner_rejects_bad_presets_and_overrides(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("notebooks: 00_setup\n")
    with pytest.raises(SettingsError, match="needs a 'notebooks' list"):
        config.load_preset(str(bad))
    with pytest.raises(SettingsError, match="known presets"):
        config.load_preset("no-such-preset")
    with pytest.raises(SettingsError, match="key=value"):
        config.parse_overrides(["oops"])
    with pytest.raises(SystemExit, match="unknown parameter.*known parameters: .*sft_learning_rate"):
        runner.main(["--preset", "smoke", "--run-name", "x", "--set", "no_such_parameter=1"])
    with pytest.raises(SystemExit, match="taken by no notebook of this call"):
        runner.main(["--preset", "smoke", "--run-name", "x", "--only", "06_paper_figures", "--set", "sft_epochs=2"])
    with pytest.raises(SystemExit, match="--only 07_nothing: no such notebook"):
        runner.main(["--preset", "smoke", "--run-name", "x", "--only", "07_nothing", "--dry-run"])
    with pytest.raises(SystemExit, match=r"^error: sft_epochs='\[1, 2': malformed value"):
        runner.main(["--preset", "smoke", "--run-name", "x", "--set", "sft_epochs=[1, 2", "--dry-run"])


def test_dry_run_shows_which_notebooks_take_a_value(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EXGRPO_RESULTS_DIR", str(tmp_path))
    assert runner.main(["--preset", "cpu", "--dry-run", "--set", "suite_max_new_tokens=200", "sft_learning_rate=1e-5"]) == 0
    out = capsys.readouterr().out
    sections = {block.split("\n", 1)[0].strip(): block for block in out.split("# ")[1:]}
    takers = sorted(s for s, block in sections.items() if "suite_max_new_tokens = 200" in block)
    assert takers == ["05_experiments"] and "04_evaluate" not in sections  # the main job leaves the suite to cpu-full
    assert "sft_learning_rate = 1e-05" in sections["02_sft"] and "sft_learning_rate = 1e-05" in sections["05_experiments"]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "executed").exists()  # nothing ran, nothing written


def test_train_cli_trains_with_the_notebook_parameters():
    params = train_cli.stage_params("sft", "paper", ["sft_epochs=2"], "r")
    assert params == config.for_notebook("02_sft", config.resolve(config.load_preset("paper"), {"sft_epochs": 2.0}, run_name="r"))
    settings = build(SFTSettings, params)
    assert settings.epochs == 2.0 and isinstance(settings.epochs, float) and settings.rules == ()
    rl = build(ExGRPOSettings, train_cli.stage_params("exgrpo", "cpu", [], "r"))
    assert (rl.k, rl.G, rl.max_steps, rl.questions_per_step) == (2, 4, 5, 4)  # 20 question-visits


def test_smoke_run_of_the_notebooks_with_papermill(tmp_path, monkeypatch, student_path):
    monkeypatch.setenv("EXGRPO_RESULTS_DIR", str(tmp_path))
    assert runner.main(["--preset", "smoke", "--run-name", "t"]) == 0
    executed = tmp_path / "executed" / "t"
    for stem in ("00_setup", "01_probes", "04_evaluate"):
        nb = nbformat.read(executed / f"{stem}.ipynb", as_version=4)
        assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code")
        assert json.loads((executed / f"{stem}.parameters.json").read_text())["run_name"] == "t"
    ev = tmp_path / "runs" / "t" / "eval" / "zero-shot"
    summary = (ev / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + 12 + 2
    assert len((ev / "gsm8k.jsonl").read_text().splitlines()) == 2
    for name in ("table_paper_layout.md", "accuracy_by_dataset.png", "accuracy_by_dataset.pdf"):
        assert (ev / name).exists(), name
    assert (ev.parent / "04_evaluate.json").exists() and (ev.parent / "table_paper_layout.md").exists()
    ei = tmp_path / "runs" / "t" / "ei"
    assert len((ei / "arith" / "probe_dataset.jsonl").read_text().splitlines()) <= 3
    assert (ei / "stats_rules.csv").exists() and (ei / "probe_filters.png").exists()
    assert (tmp_path / "runs" / "t" / "eval" / "exgrpo" / "summary.csv").exists()
    # 05: every planned (method, seed) has a record; sft-grpo also on the 12 datasets; OPD skipped with a reason
    run = tmp_path / "runs" / "t"
    records = {p.stem: json.loads(p.read_text()) for p in (run / "experiments").glob("*.json")}
    assert set(records) == {"zero-shot", "sft", "sft-grpo", "exgrpo", "rephrase", "sft-rule-counterfactual",
                            "sft-rule-causal_verification", "sft-rule-explanatory_challenge"}
    # its task, the paired OOD set and the task's EI-Test (Figure 1), which notebook 01 built
    assert (run / "ei_test" / "arith" / "ei_test.jsonl").read_text().strip()
    assert set(records["sft-grpo"]["n"]) == {"arith", "arith_rev", "arith-ei"}
    assert set(records["sft-grpo"]["suite"]["n"]) >= {"gsm8k", "held-in-avg8"}  # and, apart, the 12-dataset suite
    assert {r["train_dataset"] for r in records.values()} == {"arith"}
    assert records["sft-rule-counterfactual"]["train_tokens"] > 0 and records["exgrpo"]["train_tokens"] > records["sft"]["train_tokens"]
    assert (run / "baselines" / "arith" / "baseline_data.jsonl").exists() and (run / "experiments.csv").exists()
    for rid in ("sft", "exgrpo", "sft-grpo"):  # every trainer reports to TensorBoard inside its training folder
        assert list((run / "train" / rid / "tensorboard").glob("events.out.tfevents*")), rid
    # 06: tables and figures from the records alone
    for name in ("table1.md", "table2.md", "table3.md", "table4.md", "figure1_ei_test.png", "figure1_ei_test.md",
                 "figure3_rewards.png", "figure4_fraction.pdf", "figure5_tokens.png"):
        assert (run / "paper" / name).exists(), name
    assert "82.54" in (run / "paper" / "table3.md").read_text()  # the paper's number beside ours
    # records are portable: nothing a run commits holds the results root's absolute path (weights,
    # checkpoints and TensorBoard events are not committed: .gitignore)
    for path in list(run.rglob("*")) + list(executed.glob("*")):
        if path.is_file() and not {"final", "merged", "init", "checkpoints", "tensorboard"} & set(path.relative_to(tmp_path).parts):
            assert str(tmp_path).encode() not in path.read_bytes(), f"{path} holds an absolute path"
    stamp = (executed / "04_evaluate.ipynb").stat().st_mtime
    assert runner.main(["--preset", "smoke", "--run-name", "t"]) == 0  # finished notebooks are skipped
    assert (executed / "04_evaluate.ipynb").stat().st_mtime == stamp


def test_a_notebook_that_ran_makes_the_later_ones_run(tmp_path, monkeypatch):
    import papermill

    ran = []

    def fake_execute(src, dst, **kwargs):
        ran.append(Path(src).stem)
        Path(dst).write_text("{}")

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    monkeypatch.setenv("EXGRPO_RESULTS_DIR", str(tmp_path))
    preset = tmp_path / "two.yaml"
    preset.write_text("notebooks: [05_experiments, 06_paper_figures]\n")
    assert runner.main(["--preset", str(preset), "--run-name", "r"]) == 0
    assert ran == ["05_experiments", "06_paper_figures"]
    ran.clear()
    assert runner.main(["--preset", str(preset), "--run-name", "r"]) == 0
    assert ran == []  # both finished with these parameters
    (tmp_path / "executed" / "r" / "05_experiments.done.json").unlink()  # 05 must run again (say it was cut off)
    assert runner.main(["--preset", str(preset), "--run-name", "r"]) == 0
    assert ran == ["05_experiments", "06_paper_figures"]  # 06 too: its inputs changed
    ran.clear()
    assert runner.main(["--preset", str(preset), "--run-name", "r", "--only", "06_paper_figures"]) == 0
    assert ran == []


@pytest.mark.slow
def test_the_figures_notebook_run_headless_holds_one_image_per_figure(committed_cpu_results, monkeypatch, figure_calls):
    """Notebook 06 through the runner (papermill, as `make reproduce` runs it) over a copy of the committed
    cpu run: no error, and its executed copy holds each figure it makes as one image/png output."""
    monkeypatch.setenv("EXGRPO_RESULTS_DIR", str(committed_cpu_results))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's own inline backend, as on a fresh machine
    stem = "06_paper_figures"
    params = config.for_notebook(stem, config.resolve(config.load_preset("cpu"), run_name="cpu"))
    out_dir = committed_cpu_results / "executed" / "cpu"
    assert runner.run_notebook(stem, params, out_dir, log=lambda *_: None)
    cells = nbformat.read(out_dir / f"{stem}.ipynb", as_version=4).cells
    outputs = [o for c in cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    made = figure_calls(ROOT / "notebooks" / f"{stem}.ipynb")
    assert len(made) == 4 and len(images) == len(made), (made, len(images))
    written = sorted(p.stem for p in (committed_cpu_results / "runs" / "cpu" / "paper").glob("*.png"))
    assert len(written) == len(made)  # and each is saved as before


@pytest.mark.parametrize("preset", ["cpu", "paper-mini"])
def test_the_committed_run_is_finished_with_the_presets_parameters(preset):
    """The committed reference is current: `make update-results` would find every notebook finished
    (`make reproduce` recomputes it into reproduction/ and compares)."""
    loaded = config.load_preset(preset)
    executed = ROOT / "results" / "executed" / preset
    values = config.resolve(loaded, run_name=loaded.values.get("run_name", preset))
    for stem in loaded.notebooks:
        done = json.loads((executed / f"{stem}.done.json").read_text())
        params = config.for_notebook(stem, values)  # where trainings run (config.PLACEMENT) is no reason to rerun
        assert runner._why_rerun({**done, "inputs": {}}, params, {}) is None, f"{preset}/{stem}: would run again"


def test_paper_mini_smoke_runs_the_paper_protocol_end_to_end(tmp_path, monkeypatch, student_path):
    """paper-mini at smoke size: the LLM teacher over HTTP (the kit's server on loopback, started and
    stopped by notebooks 01 and 05), one model per task, each OOD set scored with its paired model."""
    monkeypatch.setenv("EXGRPO_RESULTS_DIR", str(tmp_path))
    monkeypatch.setenv("EXGRPO_CACHE_DIR", str(tmp_path / "cache"))  # every teacher call really goes over HTTP
    (tmp_path / "cache" / "models").mkdir(parents=True)
    (tmp_path / "cache" / "models" / Path(student_path).name).symlink_to(student_path)  # the converted student
    assert runner.main(["--preset", "paper-mini-smoke", "--run-name", "pm"]) == 0
    run = tmp_path / "runs" / "pm"
    ei = json.loads((run / "ei" / "01_probes.json").read_text())
    for task in ("strategyqa", "arc_challenge"):
        assert ei["teacher_usage"][task]["requests"] > 0  # answered by the loopback server
        fp = json.loads((run / "ei" / task / "fingerprint.json").read_text())
        assert fp["teacher"] == {"kind": "openai", "model": "smollm2-135m-instruct", "base_url": "served locally: smollm2-135m-instruct"}
    records = {p.stem: json.loads(p.read_text()) for p in (run / "experiments").glob("*.json")}
    keys = ("zero-shot", "sft", "sft-grpo", "exgrpo", "rephrase", "sft-rule-counterfactual",
            "sft-rule-causal_verification", "sft-rule-explanatory_challenge")
    assert set(records) == set(keys) | {f"arc_challenge--{k}" for k in keys}
    trained = 0
    for rid, rec in records.items():
        task = "arc_challenge" if rid.startswith("arc_challenge--") else "strategyqa"
        assert rec["train_dataset"] == task
        # a 135M stand-in teacher may leave a task without any question that passes Eq. 1 and Eq. 2: its
        # EI-trained methods and its baselines (which train on the same questions) are then recorded as
        # skipped; zero-shot always runs
        kept = len((run / "ei" / task / "probe_dataset.jsonl").read_text().splitlines())
        if kept or rec["key"] == "zero-shot":
            assert rec["status"] == "ok", rid
            ei_test = (run / "ei_test" / task / "ei_test.jsonl").read_text().strip()  # may hold no probe at this size
            assert set(rec["n"]) == {task, {"strategyqa": "boolq", "arc_challenge": "openbookqa"}[task]} | (
                {f"{task}-ei"} if ei_test else set())
            trained += rec["key"] != "zero-shot"
        else:
            assert rec["status"] == "skipped" and (f"no {task} question survived" in rec["reason"] or
                                                   "no SFT rows" in rec["reason"]), rec["reason"]
    assert trained >= 1
    assert (run / "baselines" / "arc_challenge" / "baseline_data.jsonl").exists()
    t1 = (run / "paper" / "table1.md").read_text()
    assert "held-in avg over 2 (per-task models)" in t1 and "arc_challenge (held-in)" in t1
    assert "OOD avg over 2 (per-task models)" in (run / "paper" / "table2.md").read_text()
    comparisons = (run / "paper" / "comparisons.csv").read_text()
    assert "openbookqa" in comparisons and "boolq" in comparisons
    assert not list(tmp_path.glob("exgrpo-serve-*"))


def test_the_committed_paper_mini_run_follows_the_per_task_protocol():
    """results/runs/paper-mini: every record says which task trained it, every scored set is that
    task's test set or an OOD set paired with it, every task and OOD set is scored, Tables 1-4 exist."""
    from exgrpo_utils.data.datasets import task_eval_sets

    run = ROOT / "results" / "runs" / "paper-mini"
    records = [json.loads(p.read_text()) for p in sorted((run / "experiments").glob("*.json"))]
    tasks = config.resolve(config.load_preset("paper-mini"))["exp_tasks"]
    assert {r["train_dataset"] for r in records} == set(tasks)
    ei_tests = {f"{t}-ei" for t in tasks if (run / "ei_test" / t / "ei_test.jsonl").read_text().strip()}
    scored = set()
    for rec in records:
        task = rec["train_dataset"]
        assert set(rec["accuracy"]) <= set(task_eval_sets(task)) | {f"{task}-ei"}, rec["run_id"]
        assert rec["status"] == "ok" or rec["reason"], rec["run_id"]
        scored |= set(rec["accuracy"])
    # boolq, openbookqa, arith_rev with their tasks, and each task's EI-Test (Figure 1) where it holds probes
    assert ei_tests and scored == {d for t in tasks for d in task_eval_sets(t)} | ei_tests
    for name in ("table1", "table2", "table3", "table4"):
        assert (run / "paper" / f"{name}.md").exists(), name


def test_a_published_figure_is_saved_and_shown_as_its_png_with_its_title(tmp_path):
    """``plotting.publish``: PNG and PDF written, the notebook's image is the saved PNG itself, and the
    text form is the figure's title (not matplotlib's '<Figure size ...>')."""
    import pandas as pd

    from exgrpo_utils.report import plotting

    log = pd.DataFrame({"step": [1, 2, 3], "loss": [1.0, 0.8, 0.7]})
    fig = plotting.training_curves(log, {"loss": "SFT loss"}, title="SFT warm-up")
    shown = plotting.publish(fig, tmp_path / "curves")
    assert shown.png.exists() and shown.pdf.exists()
    data, meta = shown._repr_png_()
    assert data == (tmp_path / "curves.png").read_bytes() and data.startswith(b"\x89PNG")
    assert meta == {"width": int(round(fig.get_figwidth() * 100))}
    assert repr(shown) == "SFT warm-up" and "Figure size" not in repr(shown)
