"""Plans of training jobs (``experiments.dispatch``): their order, the inline executor, and a real
single-node SLURM (``slurm_cluster.SlurmCluster``: Debian's slurm-wlm and munge on loopback) running
SFT then ExGRPO of a tiny model through submitit, with the dependency as a SLURM dependency, a failed
job reported with its log, and a second submission that runs nothing."""
import os
from pathlib import Path

import pytest

from exgrpo_utils.experiments import dispatch
from exgrpo_utils.experiments.dispatch import Job


def _job(name, tmp_path, after=(), code="pass"):
    """A job that writes its output file, then runs ``code`` (``python -m timeit`` runs a statement once)."""
    out = tmp_path / f"{name}.done"
    return Job(name, ("timeit", "-n", "1", "-r", "1", f"open({str(out)!r}, 'w').write('x'); {code}"), out, tuple(after))


def test_a_plan_runs_in_dependency_order_and_not_what_is_done_or_blocked(tmp_path):
    jobs = [_job("rl", tmp_path, after=["sft"]), _job("sft", tmp_path), _job("bad", tmp_path, code="1/0"),
            _job("after-bad", tmp_path, after=["bad"])]
    assert [j.name for j in dispatch.in_order(jobs)] == ["sft", "rl", "bad", "after-bad"]
    outcomes = dispatch.run_plan(jobs, executor="inline", log_dir=tmp_path / "logs")
    states = {o.name: o.state for o in outcomes}
    assert states == {"rl": "ran", "sft": "ran", "bad": "failed", "after-bad": "not run"}
    failed = next(o for o in outcomes if o.name == "bad")
    assert "ZeroDivisionError" in Path(failed.log).read_text()  # reported with its log
    assert "bad: failed (log " in dispatch.report(outcomes)
    (tmp_path / "bad.done").unlink()
    again = dispatch.run_plan(jobs[:2], executor="inline", log_dir=tmp_path / "logs")
    assert [o.state for o in again] == ["done", "done"]
    assert "rl [done] after sft" in dispatch.describe(jobs, "inline")


def test_a_finished_output_made_from_other_inputs_is_stale_and_runs_again(tmp_path):
    from dataclasses import replace

    from exgrpo_utils.infra.fingerprint import check_stamp

    folder = tmp_path / "train"
    check_stamp(folder, {"lr": 1e-5}, what="test training", log=lambda *_: None)
    job = replace(_job("sft", folder), inputs={"lr": 1e-5})
    (folder / "sft.done").write_text("x")
    assert job.finished() and "sft [done]" in dispatch.describe([job], "inline")
    assert [o.state for o in dispatch.run_plan([job], executor="inline", log_dir=tmp_path / "logs")] == ["done"]
    stale = replace(job, inputs={"lr": 2e-5})  # the plan now asks for another learning rate
    assert not stale.finished() and "sft [to run]" in dispatch.describe([stale], "inline")
    assert [o.state for o in dispatch.run_plan([stale], executor="inline", log_dir=tmp_path / "logs")] == ["ran"]
    assert not replace(job, output=folder / "missing").finished()


def test_a_job_after_one_that_runs_again_runs_again_and_a_precision_left_open_is_the_stamps(tmp_path):
    from dataclasses import replace

    from exgrpo_utils.infra.fingerprint import check_stamp

    folders = {name: tmp_path / name for name in ("sft", "rl")}
    for name, folder in folders.items():
        check_stamp(folder, {"lr": 1e-5, "precision": {"device": "cuda"}}, what="test training", log=lambda *_: None)
        (folder / f"{name}.done").write_text("x")
    sft = replace(_job("sft", folders["sft"]), inputs={"lr": 1e-5, "precision": {"device": "cuda"}})
    rl = replace(_job("rl", folders["rl"], after=["sft"]), inputs={"lr": 1e-5, "precision": None})
    assert rl.finished()  # planned away from the GPUs: the precision is the one the job trained in
    assert dispatch.to_run([rl, sft]) == set() and "rl [done] after sft" in dispatch.describe([rl, sft], "inline")
    assert not replace(rl, inputs={"lr": 1e-5, "precision": {"device": "cpu"}}).finished()
    stale_sft = replace(sft, inputs={"lr": 2e-5, "precision": {"device": "cuda"}})
    assert dispatch.to_run([rl, stale_sft]) == {"sft", "rl"}  # a new warm-up: the RL starts from another model
    assert "rl [to run] after sft" in dispatch.describe([rl, stale_sft], "inline")
    outcomes = dispatch.run_plan([rl, stale_sft], executor="inline", log_dir=tmp_path / "logs")
    assert [o.state for o in outcomes] == ["ran", "ran"]


def test_the_plan_knows_a_committed_training_is_current_from_the_trainers_own_inputs(monkeypatch):
    """``runs.training_inputs`` runs the real trainer in planning mode: for the committed cpu run's SFT it
    gives exactly the inputs that training stamped, and writes nothing; another setting is stale; an RL
    job whose warm-up's model is not on disk (weights are not committed) has no known inputs."""
    from exgrpo_utils import config
    from exgrpo_utils.experiments import jobs
    from exgrpo_utils.experiments.runs import Context, training_inputs
    from exgrpo_utils.infra.fingerprint import read_stamp, stamp_fingerprint
    from exgrpo_utils.infra.paths import PROJECT_ROOT

    monkeypatch.setenv("EXGRPO_RESULTS_DIR", str(PROJECT_ROOT / "results"))
    params = config.for_notebook("05_experiments", config.resolve(config.load_preset("cpu"), run_name="cpu"))
    ctx = Context.from_params(params, check=False)
    folder = ctx.layout.train_dir("sft")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())
    planned = training_inputs(ctx, "arith", "sft", 0)
    assert stamp_fingerprint(planned) == read_stamp(folder)["fingerprint"]
    assert training_inputs(ctx, "arith", "sft", 0, here=False)["precision"] is None  # decided on the SLURM node
    assert sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir()) == before
    assert training_inputs(ctx, "arith", "exgrpo", 0) is None
    plan = {j.name: j for j in jobs.training_jobs(ctx, [("sft", 0), ("exgrpo", 0)], folder / "unused.json")}
    assert plan["sft"].inputs == planned and plan["sft"].finished() and plan["exgrpo"].inputs is None
    other = config.for_notebook("05_experiments", config.resolve(config.load_preset("cpu"), {"sft_learning_rate": 1e-4},
                                                                 run_name="cpu"))
    stale = jobs.training_jobs(Context.from_params(other, check=False), [("sft", 0), ("exgrpo", 0)], folder / "unused.json")
    assert dispatch.to_run(stale) == {"sft", "exgrpo"}


def test_a_plan_with_a_cycle_or_an_unknown_dependency_is_refused(tmp_path):
    with pytest.raises(ValueError, match="cycle: a -> b -> a"):
        dispatch.in_order([_job("a", tmp_path, after=["b"]), _job("b", tmp_path, after=["a"])])
    with pytest.raises(ValueError, match="needs 'c', which is not in the plan"):
        dispatch.in_order([_job("a", tmp_path, after=["c"])])
    with pytest.raises(ValueError, match="unknown executor 'cloud'"):
        dispatch.run_plan([], executor="cloud", log_dir=tmp_path)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    from slurm_cluster import SlurmCluster, missing_programs

    missing = missing_programs()
    if missing:
        reason = f"SLURM test: {', '.join(missing)} not installed (scripts/setup_env.sh installs slurm-wlm and munge)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI: the set-up must have installed them)")
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()


def _cli(stage, tiny, *sets):
    return ("exgrpo_utils.train_cli", stage, "--preset", "smoke", "--run-name", "dist", "--set", f"student={tiny}",
            "sft_max_steps=1", "rl_max_steps=1", *sets)


def test_a_two_job_plan_runs_through_a_real_slurm_with_its_dependency(slurm, tiny_student, cli_run_root, tmp_path,
                                                                       monkeypatch):
    from exgrpo_utils.experiments.jobs import failure_reason

    for key, value in {**slurm.env, "OMP_NUM_THREADS": "1", "EXGRPO_PROGRESS": "off"}.items():
        monkeypatch.setenv(key, value)  # sbatch exports the submitting environment to the job
    train = cli_run_root / "dist" / "train"
    jobs = [Job("sft", _cli("sft", tiny_student), train / "sft" / "sft_summary.json"),
            Job("exgrpo", _cli("exgrpo", tiny_student), train / "exgrpo" / "rl_summary.json", after=("sft",)),
            Job("typo", _cli("sft", tiny_student, "sft_batchsize=2"), tmp_path / "never"),
            Job("after-typo", _cli("exgrpo", tiny_student), tmp_path / "never-either", after=("typo",)),
            Job("no-rows", ("timeit", "-n", "1", "-r", "1", "import sys; sys.stderr.write('not trained: no training "
                            "rows\\n'); sys.exit(1)"), tmp_path / "never-three")]  # as train_cli method ends such a job
    outcomes = {o.name: o for o in dispatch.run_plan(jobs, executor="slurm", log_dir=tmp_path / "slurm-logs")}
    assert {n: o.state for n, o in outcomes.items()} == {"sft": "ran", "exgrpo": "ran", "typo": "failed",
                                                         "after-typo": "not run", "no-rows": "failed"}
    assert failure_reason(outcomes["no-rows"].log).startswith("skipped: no training rows (log ")  # from SLURM's log
    assert failure_reason(outcomes["typo"].log) == ""  # a real failure stays one
    assert all(o.job_id for o in outcomes.values())  # each was a SLURM job
    assert "sft_batchsize" in Path(outcomes["typo"].log).read_text()  # the failure, in the job's own log
    # ExGRPO started from the SFT model the first job wrote, after it had finished
    sft_end = (train / "sft" / "sft_summary.json").stat().st_mtime
    assert (train / "sft" / "merged" / "exgrpo_init.json").stat().st_mtime >= sft_end

    folders = set((tmp_path / "slurm-logs").iterdir())
    again = dispatch.run_plan(jobs[:2], executor="slurm", log_dir=tmp_path / "slurm-logs")
    assert [o.state for o in again] == ["done", "done"] and set((tmp_path / "slurm-logs").iterdir()) == folders


def test_notebook_05s_plan_is_one_job_per_training_with_its_warm_up(tmp_path, monkeypatch, capsys):
    from exgrpo_utils import config, runner
    from exgrpo_utils.experiments import jobs, methods
    from exgrpo_utils.experiments.runs import Context

    monkeypatch.setenv("EXGRPO_RESULTS_DIR", str(tmp_path))
    params = config.for_notebook("05_experiments", config.resolve(config.load_preset("cpu"), {
        "exp_tasks": ["arith", "gsm8k"], "exp_groups": ["core"], "exp_seeds": [0, 1]}, run_name="r"))
    ctx = Context.from_params(params, check=False)  # no probes yet: a plan, not a run
    plan = jobs.training_jobs(ctx, methods.plan(("core",), (0, 1)), tmp_path / "params.json")
    by_name = {j.name: j for j in plan}
    assert "zero-shot" not in by_name and "gsm8k--zero-shot" not in by_name  # nothing to train
    assert by_name["exgrpo-s1"].after == ("sft-s1",) and by_name["gsm8k--exgrpo-s1"].after == ("gsm8k--sft-s1",)
    assert by_name["gsm8k--sft"].output == ctx.layout.train_dir("gsm8k--sft") / "sft_summary.json"
    assert by_name["sft-grpo"].output.name == "rl_summary.json"
    assert by_name["gsm8k--exgrpo-s1"].module_args[-6:] == ("--task", "gsm8k", "--key", "exgrpo", "--seed", "1")
    assert len(plan) == 2 * 2 * 3  # tasks x seeds x (sft, sft-grpo, exgrpo)
    assert runner.main(["--preset", "paper", "--dry-run", "--set", "exp_executor=slurm", "exp_slurm_gpus=8"]) == 0
    out = capsys.readouterr().out
    assert "executor slurm (SLURM jobs: Resources(partition='', cpus=1, gpus=8" in out
    assert "  gsm8k--exgrpo [to run] after gsm8k--sft" not in out and "  exgrpo [to run] after sft" in out  # gsm8k is the run's task
    assert "  strategyqa--exgrpo [to run] after strategyqa--sft" in out


def test_where_the_trainings_ran_never_makes_a_finished_notebook_run_again():
    from exgrpo_utils import config, runner

    params = config.for_notebook("05_experiments", config.resolve(config.load_preset("cpu"), run_name="r"))
    moved = {**params, "exp_executor": "slurm", "exp_slurm_gpus": 8}
    assert runner._why_rerun({"parameters": params, "inputs": {}}, moved, {}) is None
    assert "exp_seeds" in runner._why_rerun({"parameters": params, "inputs": {}}, {**params, "exp_seeds": [0, 1]}, {})


def test_a_training_whose_job_failed_is_recorded_as_not_trained_and_never_trained_inline(tmp_path, monkeypatch):
    from test_experiments import _fake_run

    ctx, trained, evaluated = _fake_run(tmp_path, monkeypatch)
    reason = "its training job failed (log slurm-logs/7/7_0_log.err)"
    recs = runs_run_plan(ctx, {"sft": reason, "exgrpo": "not trained: a job it needs failed"})
    assert [(r["run_id"], r["status"]) for r in recs] == [("sft", "skipped"), ("strategyqa--sft", "ok"),
                                                          ("exgrpo", "skipped"), ("strategyqa--exgrpo", "ok")]
    assert recs[0]["reason"] == reason and not [t for t in trained if t[1] in ("sft", "exgrpo")]
    assert ("sft", "strategyqa--sft", [{"probe_of": "strategyqa"}]) in trained  # the others go on


def runs_run_plan(ctx, unfinished):
    from exgrpo_utils.experiments import runs

    return runs.run_plan([("sft", 0), ("exgrpo", 0)], ctx, log=lambda *_: None, unfinished=unfinished)


def test_a_dispatched_rl_training_starts_from_its_warm_ups_model_on_disk(tmp_path, monkeypatch):
    import json

    from test_experiments import _fake_run

    from exgrpo_utils.experiments import runs

    ctx, trained, _ = _fake_run(tmp_path, monkeypatch)
    with pytest.raises(RuntimeError, match="strategyqa--exgrpo starts from strategyqa--sft, which has not finished"):
        runs.train_one(ctx, "strategyqa", "exgrpo", 0)
    warmup = ctx.layout.train_dir("strategyqa--sft")
    warmup.mkdir(parents=True)
    (warmup / "sft_summary.json").write_text(json.dumps({"final": "model:strategyqa--sft"}))
    runs.train_one(ctx, "strategyqa", "exgrpo", 0)
    assert trained[-1][:3] == ("rl", "strategyqa--exgrpo", "model:strategyqa--sft")


def test_a_job_that_could_not_train_is_recorded_as_skipped_with_its_reason(tmp_path):
    """``train_cli method`` ends a job with no training rows with "not trained: ..."; the record then
    says why as the inline path does, not only that the job failed."""
    from exgrpo_utils.experiments.jobs import failure_reason

    log = tmp_path / "job.log"
    log.write_text("loading\nnot trained: no training rows: no question has a probe the dialogues may use\n")
    assert failure_reason(str(log)) == f"skipped: no training rows: no question has a probe the dialogues may use (log {log})"
    log.write_text("not trained: skipped: on-policy distillation needs one tokenizer\n\nlauncher: exit status 1\n")
    assert failure_reason(str(log)).startswith("skipped: on-policy distillation needs one tokenizer (log ")
    log.write_text("Traceback (most recent call last):\nRuntimeError: CUDA out of memory\n")
    assert failure_reason(str(log)) == "" and failure_reason(str(tmp_path / "missing.log")) == ""
