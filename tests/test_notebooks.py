import json
from pathlib import Path

import nbformat
import pytest
import yaml

from exgrpo_utils import runner

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PRESETS = sorted((ROOT / "configs").glob("*.yaml"))


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
    return params


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: strip outputs"


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_presets_name_real_notebooks_and_parameters(preset):
    cfg = yaml.safe_load(preset.read_text())
    for stem in cfg["notebooks"]:
        params = _parameters(ROOT / "notebooks" / f"{stem}.ipynb")
        unknown = set(cfg.get(stem, {})) - set(params)
        assert not unknown, f"{preset.name} [{stem}]: not parameters of the notebook: {unknown}"


def test_notebook_defaults_are_the_cpu_preset():
    cfg = yaml.safe_load((ROOT / "configs" / "cpu.yaml").read_text())
    for stem in cfg["notebooks"]:
        params = _parameters(ROOT / "notebooks" / f"{stem}.ipynb")
        for key, value in cfg[stem].items():
            assert params[key] == value, f"{stem}.{key}: notebook says {params[key]!r}, cpu.yaml says {value!r}"


def test_runner_rejects_bad_presets_and_overrides(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("notebooks: 00_setup\n")
    with pytest.raises(SystemExit, match="needs a 'notebooks' list"):
        runner.load_preset(str(bad))
    with pytest.raises(SystemExit, match="known presets"):
        runner.load_preset("no-such-preset")
    with pytest.raises(SystemExit, match="key=value"):
        runner.parse_overrides(["oops"])
    with pytest.raises(SystemExit, match="applies to no notebook"):
        runner.main(["--preset", "smoke", "--run-name", "x", "--set", "no_such_parameter=1"])


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
    assert set(records["sft-grpo"]["n"]) >= {"arith", "arith_rev", "gsm8k", "held-in-avg8"}
    assert records["sft-rule-counterfactual"]["train_tokens"] > 0 and records["exgrpo"]["train_tokens"] > records["sft"]["train_tokens"]
    assert (run / "baselines" / "arith" / "baseline_data.jsonl").exists() and (run / "experiments.csv").exists()
    # 06: tables and figures from the records alone
    for name in ("table1.md", "table2.md", "table3.md", "table4.md", "figure3_rewards.png", "figure4_fraction.pdf",
                 "figure5_tokens.png"):
        assert (run / "paper" / name).exists(), name
    assert "82.54" in (run / "paper" / "table3.md").read_text()  # the paper's number beside ours
    stamp = (executed / "04_evaluate.ipynb").stat().st_mtime
    assert runner.main(["--preset", "smoke", "--run-name", "t"]) == 0  # finished notebooks are skipped
    assert (executed / "04_evaluate.ipynb").stat().st_mtime == stamp


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_training_sections_map_onto_the_settings(preset):
    import dataclasses

    from exgrpo_utils import exgrpo, sft, train_cli

    cfg = yaml.safe_load(preset.read_text())
    notebook_only = {"model", "train_dataset", "label", "init_model", "eval_datasets", "eval_limit",
                     "eval_max_new_tokens", "eval_batch_size"}
    for section, cls in (("02_sft", sft.SFTSettings), ("03_exgrpo", exgrpo.ExGRPOSettings)):
        if section not in cfg:
            continue
        fields = {f.name for f in dataclasses.fields(cls)}
        assert set(cfg[section]) - fields <= notebook_only, set(cfg[section]) - fields - notebook_only
        settings = train_cli.settings_from(cls, cfg[section])
        for key in set(cfg[section]) & fields:
            assert getattr(settings, key) == cfg[section][key]


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
