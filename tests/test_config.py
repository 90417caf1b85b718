"""One source for every setting: documented dataclass fields, typed --set values, presets as overrides."""
import json
from pathlib import Path

import pytest

from exgrpo_utils import config
from exgrpo_utils.infra.layout import RunLayout
from exgrpo_utils.infra.runsettings import BACKENDS as RUN_BACKENDS
from exgrpo_utils.infra.runsettings import DTYPES, RunSettings
from exgrpo_utils.infra.settings import SOURCES, SettingsError, build, coerce, params_of, setting
from exgrpo_utils.train.settings import ExGRPOSettings, OPDSettings, SFTSettings

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_documents_its_meaning_and_source():
    for cls in config.SETTINGS + (OPDSettings,):
        for p in params_of(cls):
            assert p.help.strip() and p.source in SOURCES, f"{cls.__name__}.{p.field}"
    assert len(config.PARAMS) == sum(len(params_of(c)) for c in config.SETTINGS)  # one name, one parameter


def test_a_field_without_help_is_refused():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Bad:
        x: int = 1

    with pytest.raises(TypeError, match="Bad.x is not declared with setting"):
        params_of(Bad)
    with pytest.raises(ValueError, match="source must be one of"):
        setting(1, "h", "folklore")
    with pytest.raises(ValueError, match="default 'c' is not one of the choices"):
        setting("c", "h", choices=("a", "b"))


@pytest.mark.parametrize("name, text, expected", [
    ("sft_learning_rate", "1e-5", 1e-5),  # YAML 1.1 reads this as a string: it must stay a float
    ("sft_learning_rate", "2", 2.0),
    ("sft_epochs", "3", 3.0),
    ("rl_k", "3", 3),
    ("rl_use_vllm", "true", True),
    ("rl_use_vllm", "no", False),
    ("ei_n_items", "null", None),
    ("ei_n_items", "20", 20),
    ("ei_max_correct", "-1", -1),
    ("sft_bf16", "null", None),
    ("ei_datasets", "[gsm8k, strategyqa]", ["gsm8k", "strategyqa"]),
    ("ei_datasets", "gsm8k,strategyqa", ["gsm8k", "strategyqa"]),
    ("exp_seeds", "[0, 1, 2]", [0, 1, 2]),
    ("student", "123", "123"),  # text stays text
    ("teacher_model", "", ""),
])
def test_set_values_are_typed_by_their_field(name, text, expected):
    got = config.parse_overrides([f"{name}={text}"])[name]
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("pair, message", [
    ("rl_k=two", "rl_k: expected an integer, got 'two'"),
    ("rl_k=2.5", "rl_k: expected an integer"),
    ("rl_use_vllm=maybe", "rl_use_vllm: expected true or false"),
    ("sft_learning_rate=fast", "sft_learning_rate: expected a number"),
    ("exp_seeds=[0, 1", "exp_seeds='[0, 1': malformed value"),
    ("learning_rate=1e-5", "unknown parameter(s) learning_rate; known parameters: "),
    ("oops", "expected key=value"),
])
def test_bad_set_values_get_one_line_errors(pair, message):
    with pytest.raises(SettingsError) as err:
        config.parse_overrides([pair])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_build_strips_the_prefix_and_makes_tuples():
    s = build(SFTSettings, {"sft_epochs": 2, "sft_rules": ["why"], "rl_k": 9, "sft_bf16": None})
    assert s.epochs == 2.0 and s.rules == ("why",) and s.bf16 is None and s == SFTSettings(epochs=2.0, rules=("why",))
    assert build(ExGRPOSettings, {}, seed=3) == ExGRPOSettings(seed=3)
    with pytest.raises(SettingsError, match="rl_G: expected an integer"):
        build(ExGRPOSettings, {"rl_G": "eight"})


def test_coerce_keeps_none_only_where_allowed():
    assert coerce("x", int | None, None) is None
    with pytest.raises(SettingsError):
        coerce("x", int, None)


@pytest.mark.parametrize("preset", sorted(p.stem for p in (ROOT / "configs").glob("*.yaml")))
def test_presets_list_only_what_differs(preset):
    """cpu and paper against the defaults, a preset that extends another against that one."""
    import yaml

    raw = yaml.safe_load((ROOT / "configs" / f"{preset}.yaml").read_text())
    base = config.load_preset(raw["extends"]).values if raw.get("extends") else {}
    base = config.resolve(None, base)
    loaded = config.load_preset(preset)
    for key in raw:
        if key in config.RESERVED:
            continue
        assert loaded.values[key] != base[key], f"{preset}.yaml repeats {key} = {base[key]!r} (drop it)"


def test_smoke_extends_cpu_and_cpu_full_adds_to_the_cpu_run():
    cpu, smoke, full = (config.resolve(config.load_preset(p)) for p in ("cpu", "smoke", "cpu-full"))
    assert smoke["student"] == cpu["student"] == "smollm2-135m-instruct" and smoke["rl_max_steps"] == 2
    assert full["run_name"] == "cpu" and full["exp_seeds"] == [0, 1, 2]
    for key in config.NOTEBOOKS["02_sft"] + config.NOTEBOOKS["03_exgrpo"]:  # 05 of cpu-full trains as 02/03 of cpu
        assert full[key] == cpu[key] or key == "run_name"
    # the 12-dataset suite (04) is cpu-full's, not the main job's (its 60-minute budget); smoke runs every notebook
    assert config.load_preset("cpu-full").notebooks == ("04_evaluate", "05_experiments", "06_paper_figures")
    assert "04_evaluate" not in config.load_preset("cpu").notebooks and "04_evaluate" in config.load_preset("smoke").notebooks
    assert full["exp_suite_keys"] == ["zero-shot", "sft", "exgrpo"] and not cpu["exp_suite_keys"]


def test_preset_errors_name_the_file_and_the_problem(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: " + str(tmp_path / "b.yaml") + "\nnotebooks: [00_setup]\n")
    (tmp_path / "b.yaml").write_text("extends: " + str(tmp_path / "a.yaml") + "\n")
    with pytest.raises(SettingsError, match="loops back"):
        config.load_preset(str(tmp_path / "a.yaml"))
    (tmp_path / "c.yaml").write_text("notebooks: [00_setup]\nsft_epoch: 2\n")
    with pytest.raises(SettingsError, match=r"c.yaml: unknown parameter\(s\) sft_epoch; known parameters: .*sft_epochs"):
        config.load_preset(str(tmp_path / "c.yaml"))
    (tmp_path / "d.yaml").write_text("notebooks: [00_setup]\nrl_k: [1\n")
    with pytest.raises(SettingsError, match="d.yaml: not valid YAML"):
        config.load_preset(str(tmp_path / "d.yaml"))
    (tmp_path / "e.yaml").write_text("notebooks: [00_setup]\nrl_k: two\n")
    with pytest.raises(SettingsError, match="e.yaml: rl_k: expected an integer"):
        config.load_preset(str(tmp_path / "e.yaml"))


def test_one_name_reaches_every_notebook_that_uses_the_concept():
    takers = lambda name: sorted(s for s, names in config.NOTEBOOKS.items() if name in names)
    assert takers("student") == ["00_setup", "01_probes", "02_sft", "03_exgrpo", "04_evaluate", "05_experiments"]
    assert takers("suite_max_new_tokens") == ["04_evaluate", "05_experiments"]
    assert takers("eval_max_new_tokens") == ["02_sft", "03_exgrpo", "05_experiments"]
    assert takers("sft_learning_rate") == ["02_sft", "05_experiments"]


def test_notebook_values_check_the_namespace():
    ns = config.for_notebook("06_paper_figures", config.resolve(config.load_preset("cpu"), run_name="cpu"))
    assert config.notebook_values("06_paper_figures", ns) == {"run_name": "cpu", "figures_runs": []}
    with pytest.raises(SettingsError, match="parameters \\['figures_runs'\\] are not defined"):
        config.notebook_values("06_paper_figures", {"run_name": "cpu"})


def test_configuration_reference_is_current():
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == config.configuration_reference(), "regenerate: python -m exgrpo_utils.config --write-docs"
    for name in config.PARAMS:
        assert f"`{name}`" in committed


def test_values_round_trip_through_json():
    """papermill passes parameters as JSON: every resolved value survives it unchanged."""
    for preset in ("cpu", "smoke", "paper", "cpu-full"):
        values = config.resolve(config.load_preset(preset))
        assert json.loads(json.dumps(values)) == values


def test_an_empty_set_value_is_the_empty_list():
    assert config.parse_overrides(["report_to="])["report_to"] == []
    assert config.parse_overrides(["sft_rules=[]"])["sft_rules"] == []


@pytest.mark.parametrize("value", ["AIzaSyD3adbeefKEYkey0123456789", "sk-proj-abc", "my_key"])
def test_an_api_key_where_its_variable_name_belongs_never_reaches_a_file(value):
    with pytest.raises(SettingsError) as err:
        config.resolve(config.load_preset("paper"), config.parse_overrides([f"teacher_api_key_env={value}"]))
    assert value not in str(err.value) and "NAME of the environment variable" in str(err.value)
    config.resolve(config.load_preset("paper"), {"teacher_api_key_env": "MY_GEMINI_KEY"})  # a name is fine


# -- issue 23: values outside a parameter's choices, and labels that name no folder, are refused when
# the parameters are resolved (not by a KeyError inside a notebook)

def _plan(*pairs):
    from argparse import Namespace

    from exgrpo_utils import runner

    return runner.plan(Namespace(preset="cpu", run_name="x", only=None, set=list(pairs)))


@pytest.mark.parametrize("pair, accepted", [
    ("dtype=float99", "auto, float32, fp32, bfloat16, bf16, float16, fp16"),
    ("backend=tensorrt", "fast, transformers, vllm"),
])
def test_unknown_dtype_or_backend_is_refused_when_the_parameters_are_resolved(pair, accepted, tmp_path):
    name, value = pair.split("=")
    for attempt in (lambda: config.parse_overrides([pair]), lambda: _plan(pair),
                    lambda: config.resolve(config.load_preset("cpu"), {name: value})):
        with pytest.raises(SettingsError) as err:
            attempt()
        msg = str(err.value)
        assert f"{name}: {value!r} is not accepted; use one of {accepted}" in msg and "\n" not in msg
    with pytest.raises(SettingsError, match=f"{name}: {value!r} is not accepted"):
        build(RunSettings, {name: value})
    (tmp_path / "p.yaml").write_text(f"notebooks: [04_evaluate]\n{name}: {value}\n")
    with pytest.raises(SettingsError, match=f"p.yaml: {name}: {value!r} is not accepted"):
        config.load_preset(str(tmp_path / "p.yaml"))
    ns = dict(config.for_notebook("04_evaluate", config.resolve(config.load_preset("cpu"))), **{name: value})
    with pytest.raises(SettingsError, match=f"{name}: {value!r} is not accepted"):
        config.notebook_values("04_evaluate", ns)


def test_every_accepted_dtype_and_backend_is_one_the_models_layer_takes():
    from exgrpo_utils.models import generation, registry

    assert RUN_BACKENDS == generation.BACKENDS
    for dtype in DTYPES:
        registry.pick_dtype(dtype)
    for wrong in ("float99", "float64", "half", "int8"):
        with pytest.raises(KeyError):
            registry.pick_dtype(wrong)
    assert _plan("dtype=bf16", "backend=transformers")[2]  # accepted values pass


@pytest.mark.parametrize("entry", ["..=smollm2-135m-instruct", ".=smollm2-135m-instruct", "=smollm2-135m-instruct",
                                   ".hidden=smollm2-135m-instruct", ".."])
def test_a_suite_label_that_names_no_folder_of_its_own_is_refused(entry):
    """``..=model`` would write the evaluation into the run folder itself."""
    for attempt in (lambda: _plan(f"suite_models=[{entry!r}]"),
                    lambda: config.resolve(config.load_preset("cpu"), {"suite_models": [entry]})):
        with pytest.raises(SettingsError) as err:
            attempt()
        msg = str(err.value)
        assert f"suite_models entry {entry!r}: label {entry.partition('=')[0]!r}" in msg and "'..'" in msg
        assert "letters, digits" in msg and "\n" not in msg
    with pytest.raises(SettingsError, match="must not be empty"):
        RunLayout.of("x").suite_eval_dir(entry.partition("=")[0])
    assert RunLayout.of("x").suite_eval_dir("my model (v2)").name == "my_model_v2_"  # free text still works


def test_the_run_a_preset_writes():
    from exgrpo_utils.config import load_preset, run_name_of

    assert run_name_of("cpu", load_preset("cpu")) == "cpu"  # no run_name: the preset's name
    assert run_name_of("cpu-full", load_preset("cpu-full")) == "cpu"  # adds to the main job's run
    assert run_name_of("cpu-full", load_preset("cpu-full"), "mine") == "mine"
