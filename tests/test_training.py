"""Two-step smoke runs of SFT and ExGRPO on the embedded student, with a resume from step 1."""
import json
import shutil

import pytest

from exgrpo_utils.infra.files import read_train_log
from exgrpo_utils.teach import rules
from exgrpo_utils.train import exgrpo, rl_data, sft
from exgrpo_utils.train.loop import run_cost
from exgrpo_utils.train.settings import ExGRPOSettings, SFTSettings


@pytest.fixture
def probe_records(arith_probe_records):
    return arith_probe_records


def _adapter_weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def _step_rows(log):
    return log[log["loss"].notna()].set_index("step")


def _resume_from_step_one(out_dir):
    """As a run killed while it saved the step-2 checkpoint: checkpoint-2 without its trainer_state.json
    (the trainer writes it last), no final model. The rerun sets checkpoint-2 aside and resumes from 1."""
    (out_dir / "checkpoints" / "checkpoint-2" / "trainer_state.json").unlink()
    shutil.rmtree(out_dir / "final")


def test_sft_two_steps_then_resume_reproduces_step_two(probe_records, tmp_path, student_path):
    settings = SFTSettings(max_steps=2, batch_size=4, save_steps=1, seed=0)
    first = sft.train_sft(model="smollm2-135m-instruct", probe_records=probe_records, out_dir=tmp_path, settings=settings)
    assert first["steps"] == 2 and first["rows"] == sum(len(r["probes"]) + 1 for r in probe_records)
    weights = _adapter_weights(tmp_path / "final")
    assert any(float(w.abs().sum()) > 0 for k, w in weights.items() if "lora_B" in k)  # LoRA B starts at zero
    log1 = _step_rows(read_train_log(tmp_path / "train_log.jsonl"))
    _resume_from_step_one(tmp_path)
    second = sft.train_sft(model="smollm2-135m-instruct", probe_records=probe_records, out_dir=tmp_path, settings=settings)
    assert second["resumed_from"].endswith("checkpoint-1")
    assert (tmp_path / "incomplete-checkpoints" / "checkpoint-2").is_dir()  # set aside, not deleted
    log2 = read_train_log(tmp_path / "train_log.jsonl")
    steps = _step_rows(log2)
    assert list(steps.index) == [1, 2]  # one curve, no duplicated step
    assert steps.loc[2, "loss"] == pytest.approx(log1.loc[2, "loss"], rel=1e-3)
    # totals over both calls equal the uninterrupted run's (TRL counts tokens from zero in each call)
    assert second["train_tokens"] == first["train_tokens"] > 0
    assert second["train_loss"] == pytest.approx(first["train_loss"], rel=1e-3)
    assert first["train_loss"] == pytest.approx(log1["loss"].mean(), rel=1e-6)


def test_sft_data_fraction_keeps_a_seeded_share_of_questions(probe_records):
    half = sft.subsample_questions(probe_records, 0.5, seed=0)
    assert len(half) == 2 and half == sft.subsample_questions(probe_records, 0.5, seed=0)
    rows = sft.sft_rows(half, rules.load_rules(), include_original_cot=False)
    assert len(rows) == sum(len(r["probes"]) for r in half)
    assert all(r["completion"][0]["role"] == "assistant" for r in rows)
    with pytest.raises(ValueError, match="data_fraction"):
        sft.subsample_questions(probe_records, 0.0, seed=0)


def test_exgrpo_two_steps_logs_everything_and_resumes(probe_records, tmp_path, student_path):
    settings = ExGRPOSettings(k=2, G=4, max_probe_tokens=12, max_final_tokens=16, max_steps=2, save_steps=1,
                                     learning_rate=1e-4, seed=0, revealing_probes="exclude")
    first = exgrpo.train_exgrpo(init_model="smollm2-135m-instruct", probe_records=probe_records, out_dir=tmp_path,
                                settings=settings)
    assert first["steps"] == 2
    log1 = _step_rows(read_train_log(tmp_path / "train_log.jsonl"))
    for col in ("exgrpo/r_base", "exgrpo/bonus_fired", "exgrpo/p_full", "exgrpo/p_partial", "exgrpo/r_dsu", "kl",
                "aux_sft_loss", "completions/mean_length", "num_tokens", "wall_time_s",
                "exgrpo/revealing_dialogues_A", "exgrpo/revealing_dialogues_B"):
        assert col in log1.columns, col
    assert (log1["aux_sft_loss"] > 0).all()
    assert (log1[["exgrpo/revealing_dialogues_A", "exgrpo/revealing_dialogues_B"]] == 0).all().all()  # excluded
    kinds = first["train_token_kinds"]
    assert set(kinds) == {"generated", "context", "update", "reference", "aux_sft"}
    assert kinds["generated"] > 0 and kinds["context"] > 0 and kinds["aux_sft"] > 0  # dialogues carry context turns
    assert kinds["update"] == kinds["reference"] > kinds["generated"]  # beta > 0: one reference pass per update
    assert first["train_tokens"] == sum(kinds.values())
    assert kinds["generated"] == log1["tokens/generated"].sum()
    weights = _adapter_weights(tmp_path / "final")
    assert any(float(w.abs().sum()) > 0 for k, w in weights.items() if "lora_B" in k)
    _resume_from_step_one(tmp_path)
    second = exgrpo.train_exgrpo(init_model="smollm2-135m-instruct", probe_records=probe_records, out_dir=tmp_path,
                                 settings=settings)
    assert second["resumed_from"].endswith("checkpoint-1")
    steps = _step_rows(read_train_log(tmp_path / "train_log.jsonl"))
    assert list(steps.index) == [1, 2]
    for col in ("completions/mean_length", "exgrpo/r_base", "aux_sft_loss"):
        assert steps.loc[2, col] == pytest.approx(log1.loc[2, col], rel=1e-3, abs=1e-6), col


def test_plain_grpo_variant_trains_on_independent_probes(probe_records, tmp_path, student_path):
    settings = ExGRPOSettings(mode="grpo", k=2, G=2, max_probe_tokens=8, max_final_tokens=16, max_steps=1,
                              save_steps=10, aux_lambda=0.1)
    rows = rl_data.training_rows(rl_data.rl_records(probe_records, settings), rules.load_rules(), settings)
    assert len(rows) == 3 * len(probe_records)  # k probes and the question, per question
    summary = exgrpo.train_exgrpo(init_model="smollm2-135m-instruct", probe_records=probe_records, out_dir=tmp_path,
                                  settings=settings)
    log = _step_rows(read_train_log(tmp_path / "train_log.jsonl"))
    assert summary["steps"] == 1 and "exgrpo/r_base" in log.columns and "exgrpo/bonus_fired" not in log.columns
    assert log["aux_sft_loss"].iloc[0] > 0
    kinds = summary["train_token_kinds"]
    assert kinds["context"] == 0 and kinds["generated"] > 0 and kinds["aux_sft"] > 0  # single turns, aux on probes


def test_bad_settings_are_refused(probe_records, tmp_path):
    with pytest.raises(ValueError, match="mode must be"):
        exgrpo.train_exgrpo(init_model="x", probe_records=probe_records, out_dir=tmp_path,
                            settings=ExGRPOSettings(mode="ppo"))


def test_on_policy_distillation_runs_with_a_local_teacher(probe_records, tmp_path, student_path):
    """TRL's GKD path with lmbda = 1 (student samples) and reverse KL; the student as its own teacher
    stands in for a larger model with the same tokenizer (the only local one on a CPU machine)."""
    from exgrpo_utils.train import opd as distill
    from exgrpo_utils.train.settings import OPDSettings

    settings = OPDSettings(max_steps=1, batch_size=2, max_new_tokens=8, save_steps=10)
    summary = distill.train_opd(student="smollm2-135m-instruct", teacher="smollm2-135m-instruct",
                                probe_records=probe_records[:2], out_dir=tmp_path, settings=settings)
    assert summary["steps"] == 1 and (tmp_path / "final" / "adapter_config.json").exists()
    weights = _adapter_weights(tmp_path / "final")
    assert any(float(w.abs().sum()) > 0 for k, w in weights.items() if "lora_B" in k)
    log = read_train_log(tmp_path / "train_log.jsonl")
    assert log["loss"].notna().any()


def test_a_finished_run_is_not_trained_again(probe_records, tmp_path, student_path):
    """Rerunning a finished stage returns its summary; a run killed after its last checkpoint but before
    saving ``final`` loads that checkpoint instead of taking another step."""
    settings = SFTSettings(max_steps=2, batch_size=4, save_steps=1, seed=0)
    first = sft.train_sft(model="smollm2-135m-instruct", probe_records=probe_records, out_dir=tmp_path, settings=settings)
    again = sft.train_sft(model="smollm2-135m-instruct", probe_records=probe_records, out_dir=tmp_path, settings=settings)
    assert again == json.loads(json.dumps(first))  # as stored
    weights = _adapter_weights(tmp_path / "final")
    shutil.rmtree(tmp_path / "final")
    (tmp_path / "sft_summary.json").unlink()
    third = sft.train_sft(model="smollm2-135m-instruct", probe_records=probe_records, out_dir=tmp_path, settings=settings)
    assert third["steps"] == 2 and third["resumed_from"].endswith("checkpoint-2")
    logged = max(r["wall_time_s"] for r in read_train_log(tmp_path / "train_log.jsonl").to_dict("records"))
    assert third["seconds"] >= round(logged, 1)  # the training's time, not the reload's
    assert list(_step_rows(read_train_log(tmp_path / "train_log.jsonl")).index) == [1, 2]  # no step 3
    reloaded = _adapter_weights(tmp_path / "final")
    assert all(float((reloaded[k] - w).abs().max()) == 0 for k, w in weights.items())


def test_run_cost_spans_resumed_calls(tmp_path):
    (tmp_path / "train_log.jsonl").write_text('{"step": 1, "wall_time_s": 40.0}\n{"step": 2, "wall_time_s": 287.03}\n')
    (tmp_path / "sft_summary.json").write_text(json.dumps({"peak_memory_mib": 1e9}))
    cost = run_cost(tmp_path, "sft_summary.json", 0.3)  # a call that only reloaded the last checkpoint
    assert cost == {"seconds": 287.0, "peak_memory_mib": 1e9}
    assert run_cost(tmp_path / "none", "sft_summary.json", 12.34)["seconds"] == 12.3  # no log yet: this call
