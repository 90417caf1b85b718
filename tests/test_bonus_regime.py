"""How often the DSU bonus can act (train/bonus_regime.py) and the rollout pilot (train/pilot.py)."""
import json

import pytest

from exgrpo_utils.train import bonus_regime as br
from exgrpo_utils.train import pilot
from exgrpo_utils.train.settings import ExGRPOSettings

# ---------------------------------------------------------------------------------------------
# the exact probabilities, hand-computed

def test_even_odds_g4_by_hand():
    # 2 A and 2 B rollouts, each right with probability 1/2: a, b in {0, 1, 2} with P 1/4, 1/2, 1/4.
    # Eq. 5 fires when a > b: (1, 0) 1/8, (2, 0) 1/16, (2, 1) 1/8 -> 5/16. Under group scaling only
    # (2, 1) acts (a right B rollout keeps R = 1 beside 1.5): 1/8. Without the division every firing
    # acts. No gradient: all wrong (1/16) or all right without a bonus (1/16).
    group = br.bonus_regime(0.5, 0.5, G=4)
    assert group["fires"] == pytest.approx(5 / 16)
    assert group["acts"] == pytest.approx(1 / 8)
    assert group["no_gradient"] == pytest.approx(1 / 8)
    none = br.bonus_regime(0.5, 0.5, G=4, scaling="none")
    assert none["fires"] == none["acts"] == pytest.approx(5 / 16)
    # (1, 0): R - mean goes from [.75, -.25, -.25, -.25] to [1.125, -.375, -.375, -.375]: mean |change| 3/16;
    # (2, 0): [.5, .5, -.5, -.5] -> [.75, .75, -.75, -.75]: 1/4; (2, 1): [.25, .25, .25, -.75] ->
    # [.5, .5, 0, -1]: 1/4
    assert none["mean_abs_change"] == pytest.approx(1 / 8 * 3 / 16 + 1 / 16 * 1 / 4 + 1 / 8 * 1 / 4)


def test_all_right_a_never_acts_under_group_scaling_without_a_right_b():
    assert br.bonus_regime(1.0, 0.0, G=8)["fires"] == pytest.approx(1.0)
    assert br.bonus_regime(1.0, 0.0, G=8)["acts"] == 0.0  # [1.5]*4 + [0]*4 is [1]*4 + [0]*4 rescaled
    assert br.bonus_regime(1.0, 0.0, G=8, scaling="none")["acts"] == pytest.approx(1.0)


def test_odd_g_and_nu():
    # G = 5: 3 A, 2 B. p_full = 1, p_partial = 1/2: b = 0 (1/4) fires without acting, b = 1 (1/2)
    # fires (1 > 1/2) and acts, b = 2 (1/4) does not fire (1 > 1 is false)
    r = br.bonus_regime(1.0, 0.5, G=5)
    assert (r["fires"], r["acts"]) == (pytest.approx(0.75), pytest.approx(0.5))
    r = br.bonus_regime(1.0, 0.5, G=5, nu=2.0)  # 1 > 2 * 1/2 is false: only b = 0 fires
    assert (r["fires"], r["acts"]) == (pytest.approx(0.25), 0.0)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="p_partial"):
        br.bonus_regime(0.5, 1.5, G=4)
    with pytest.raises(ValueError, match="G must be >= 2"):
        br.bonus_regime(0.5, 0.5, G=1)
    with pytest.raises(ValueError, match="batch"):
        br.bonus_regime(0.5, 0.5, G=4, scaling="batch")


def test_acts_per_step():
    assert br.acts_per_step(0.125, 1) == pytest.approx(0.125)
    assert br.acts_per_step(0.125, 4) == pytest.approx(1 - 0.875 ** 4)


# ---------------------------------------------------------------------------------------------
# a run's measured rates and the command line

def _log(path, rows):
    path.mkdir(parents=True, exist_ok=True)
    (path / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_measured_rates_average_the_steps(tmp_path):
    _log(tmp_path, [{"step": 1, "exgrpo/p_full": 0.5, "exgrpo/p_partial": 0.25, "exgrpo/bonus_fired": 0.5,
                     "exgrpo/bonus_effective": 0.0, "frac_reward_zero_std": 0.5},
                    {"step": 2, "exgrpo/p_full": 0.0, "exgrpo/p_partial": 0.75, "exgrpo/bonus_fired": 0.0,
                     "exgrpo/bonus_effective": 0.0, "frac_reward_zero_std": 0.0},
                    {"step": 2, "train_loss": 0.1}])  # the end-of-training row has no P_full
    m = br.measured_rates(tmp_path)
    assert m == {"steps": 2, "p_full": 0.25, "p_partial": 0.5, "fired": 0.25, "acted": 0.0, "no_gradient": 0.25}


def test_measured_rates_name_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_log.jsonl"):
        br.measured_rates(tmp_path)
    (tmp_path / "train_log.jsonl").write_text('{"step": 1}\n{oops\n')
    with pytest.raises(ValueError, match="train_log.jsonl:2"):
        br.measured_rates(tmp_path)
    (tmp_path / "train_log.jsonl").write_text('{"step": 1, "loss": 0.3}\n')  # an SFT log
    with pytest.raises(ValueError, match="no step logs P_full"):
        br.measured_rates(tmp_path)


def test_cli_table_from_a_run(tmp_path, capsys):
    _log(tmp_path, [{"step": 1, "exgrpo/p_full": 0.5, "exgrpo/p_partial": 0.5}])
    (tmp_path / "rl_summary.json").write_text(json.dumps({"settings": {"questions_per_step": 2}}))
    br.main([str(tmp_path), "--G", "4"])
    out = capsys.readouterr().out
    assert "2 question(s) per step" in out
    assert f"| 4 | group | 0.312 | 0.125 | {1 - 0.875 ** 2:.3f} |" in out
    with pytest.raises(SystemExit):
        br.main(["--p-full", "0.5"])  # --p-partial missing
    with pytest.raises(SystemExit):
        br.main(["--p-full", "0.5", "--p-partial", "2"])
    assert "p_partial must be a probability" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# the pilot

def test_regime_estimate_averages_per_question_rates():
    counts = [{"full_right": 2, "full_n": 2, "partial_right": 1, "partial_n": 2},   # p 1, 1/2: acts 1/2
              {"full_right": 0, "full_n": 2, "partial_right": 2, "partial_n": 2}]   # never fires
    est = pilot.regime_estimate(counts, 4, "group", 0.5, 1.0)
    assert est["acts"] == pytest.approx(0.25) and est["fires"] == pytest.approx(0.375)


def test_pilot_cli_refuses_a_missing_model(cli_run_root, capsys):
    assert pilot.main(["--preset", "cpu", "--run-name", "dist"]) == 2
    assert "no such model" in capsys.readouterr().err
    assert pilot.main(["--preset", "cpu", "--run-name", "dist", "--set", "rl_probe_answers=nobody"]) == 2
    assert "probe_answers must be" in capsys.readouterr().err


def test_pilot_refuses_empty_sizes_before_loading_a_model(arith_probe_records):
    settings = ExGRPOSettings(k=2, G=4)
    with pytest.raises(ValueError, match="slots must be >= 1"):
        pilot.run_pilot("no/such/model", arith_probe_records, settings, questions=2, samples=2, slots=0)


@pytest.mark.parametrize("answers", ["student", "teacher"])
def test_pilot_rolls_out_both_scenarios_on_the_student(arith_probe_records, student_path, answers):
    settings = ExGRPOSettings(k=2, G=4, max_probe_tokens=8, max_final_tokens=8, probe_answers=answers, seed=0)
    result = pilot.run_pilot(student_path, arith_probe_records, settings, questions=2, samples=3)
    assert result["questions"] == 2 and result["rollouts"] == 2 * 2 * 3
    assert all(c["full_n"] == c["partial_n"] == 3 for c in result["per_question"])
    assert 0.0 <= result["p_full"] <= 1.0 and result["generated_tokens"] > 0
    # with the teacher answering, the probe turns are context: only the final answers are generated
    if answers == "teacher":
        assert result["generated_tokens"] <= result["rollouts"] * 8
    text = pilot.report(result, [4], 1, 0.5, 1.0)
    assert "| 4 | group |" in text and f"probe answers by the {answers}" in text
