"""End-to-end runs of ``mtrl-train`` / ``mtrl-eval`` on two Meta-World tasks with tiny networks.

The finished runs that several tests start from are trained once (``conftest.py``: ``sac_run_400``,
``sac_run_200``, ``ppo_run_400``); a test that changes one works on its own copy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from launch.evaluate import main as eval_main
from launch.train import main as train_main
from mtrl.checkpoint import list_checkpoints, load_latest
from mtrl.logging import read_metrics
from tiny_runs import EPISODE, NO_COMPILE, PPO_TINY, TINY, training_records  # tests/integration/tiny_runs.py

pytestmark = pytest.mark.xdist_group("tiny_runs")  # one worker trains the shared runs once (conftest.py)


def _train(*args: str) -> int:
    return train_main([*TINY, *args])


def _train_ppo(*args: str) -> int:
    return train_main([*PPO_TINY, *args])


@pytest.mark.slow
def test_smoke_run_writes_logs_checkpoints_and_evaluation(tmp_path, capsys, sac_run_400):
    run = sac_run_400.copy_to(tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    assert config["env"]["benchmark"] == "reach-v3,drawer-close-v3" and config["balancer"]["name"] == "cagrad"
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_000000000200", "step_000000000400"]
    assert list(run.glob("events.out.tfevents.*"))
    tags = set().union(*(r.keys() for r in read_metrics(run / "metrics.jsonl")))
    for tag in (
        "charts/SPS",
        "charts/episodic_return",
        "losses/qf_loss",
        "losses/actor_loss",
        "losses/alpha/reach-v3",
        "balancer/critic/weights/drawer-close-v3",
        "balancer/critic/conflicting_pairs",
        "balancer/actor/mean_cosine",
        "eval/success_rate",
        "eval/reach-v3/success_rate",
    ):
        assert tag in tags, tag
    final = json.loads((run / "eval" / "final.json").read_text())
    assert final["step"] == 400 and set(final["per_task_success"]) == {"reach-v3", "drawer-close-v3"}
    assert config["sac"]["compile_gradients"] is True  # the default path: the compiled per-task gradients
    assert "the first updates compile the per-task gradients" in sac_run_400.err

    # mtrl-eval on the same run: a table with one row per task and the mean, and its JSON
    assert eval_main([str(run), "--checkpoint", "step_000000000200", "--episodes", "1"]) == 0
    table = capsys.readouterr().out
    assert "reach-v3" in table and "drawer-close-v3" in table and "\nmean " in table
    written = json.loads((run / "eval" / "mtrl-eval_step_000000000200_1.json").read_text())
    assert written["step"] == 200 and written["episodes_per_task"] == 1
    assert eval_main([str(run), "--checkpoint", "step_000000000999"]) == 2
    assert eval_main([str(tmp_path), "--episodes", "1"]) == 2
    assert "no checkpoint 'step_000000000999'" in capsys.readouterr().err


@pytest.mark.slow
def test_resumed_run_matches_the_uninterrupted_run_exactly(tmp_path, sac_run_400, sac_run_200):
    straight, interrupted = sac_run_400.path, sac_run_200.copy_to(tmp_path / "interrupted")
    assert train_main(["--resume", str(interrupted), "--total-steps", "400"]) == 0

    params_a = load_latest(straight / "checkpoints")[1]["agent"]["modules"]
    params_b = load_latest(interrupted / "checkpoints")[1]["agent"]["modules"]
    names = [p.name for p in list_checkpoints(straight / "checkpoints")]
    assert names == [p.name for p in list_checkpoints(interrupted / "checkpoints")]  # the same checkpoint schedule
    assert params_a.keys() == params_b.keys()
    assert all(torch.equal(params_a[k], params_b[k]) for k in params_a)
    # the interrupted run also evaluated at its first end (step 200); apart from that the logs agree
    records_b = [r for r in training_records(interrupted) if not (r["step"] == 200 and "eval/success_rate" in r)]
    assert training_records(straight) == records_b
    assert json.loads((straight / "eval" / "final.json").read_text()) == json.loads(
        (interrupted / "eval" / "final.json").read_text()
    )


def test_existing_run_dir_is_refused_and_left_untouched(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("keep me")
    assert _train("--total-steps", "200", "--run-dir", str(run)) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in run.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--balancer.c", "-1"], "c must be"),
        (["--balancer.name", "cagrad_fast", "--balancer.num-sampled", "5"], "num_sampled"),
        (["--resume", "MISSING"], "no such run directory"),
        (["--device", "cpu", "--sac.bf16"], "sac.bf16 needs CUDA"),
        (["--balancer.name", "gradnorm", "--balancer.alpha", "-1"], "alpha must be"),
    ],
)
def test_bad_arguments_fail_with_one_line_and_create_nothing(tmp_path, capsys, args, message):
    args = [a.replace("MISSING", str(tmp_path / "missing")) for a in args]
    code = train_main(args if args[0] == "--resume" else [*TINY, "--run-dir", str(tmp_path / "run"), *args])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "base, args, message",
    [
        (TINY, ["--env.benchmark", "MT11"], "unknown benchmark or task 'MT11'"),
        (TINY, ["--balancer.name", "foo"], "foo"),
        (TINY, ["--total-steps", "-5"], "total_steps must be > 0"),
        (TINY, ["--ppo.epochs", "2"], "--ppo.epochs"),  # a SAC run has no PPO section
        (PPO_TINY, ["--ppo.rollout-steps", "30", "--ppo.minibatches", "2"], "ppo.rollout_steps must be a multiple of"),
        (PPO_TINY, ["--ppo.clip-coef", "0"], "ppo.clip_coef must be > 0"),
        (PPO_TINY, ["--replay.warmup-steps", "10"], "--replay.warmup-steps"),  # a PPO run has no replay section
        (TINY, ["--sac.warmup-steps", "10"], "--sac.warmup-steps"),  # the loop's fields are under --replay
        (TINY, ["--sac.encoder.name", "resnet"], "resnet"),
        (TINY, ["--sac.encoder.name", "moore", "--sac.encoder.num-experts", "0"], "encoder.num_experts must be an integer >= 1, got 0"),
        (PPO_TINY, ["--ppo.encoder.name", "mlp", "--ppo.encoder.num-experts", "3"], "encoder.num_experts is not an option of encoder 'mlp'"),
        (TINY, ["--sac.hidden-dims", "0", "4"], "sac.hidden_dims must be a non-empty list of positive sizes, got (0, 4)"),
        (TINY, ["--sac.critic", "brc", "--sac.critic-width", "0"], "critic_width"),
        (TINY, ["--sac.critic", "brc", "--sac.v-min", "5", "--sac.v-max", "1"], "sac.v_min must be < sac.v_max, got v_min=5.0, v_max=1.0"),
    ],
)
def test_bad_values_rejected_by_the_command_line_parser(tmp_path, capsys, base, args, message):
    with pytest.raises(SystemExit) as exit_info:
        train_main([*base, "--run-dir", str(tmp_path / "run"), *args])
    assert exit_info.value.code == 2
    assert message in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_command_exits_2_on_a_value_the_parser_refuses(tmp_path):
    """``python -m launch.train`` itself: the parser's refusal is its exit status (the cases above run in-process)."""
    result = subprocess.run(
        [sys.executable, "-m", "launch.train", *TINY, "--run-dir", str(tmp_path / "run"), "--total-steps", "-5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "total_steps must be > 0" in " ".join(result.stderr.split()) and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_corrupt_newest_checkpoint_is_reported_and_the_previous_one_used(tmp_path, capsys, sac_run_400):
    run = sac_run_400.copy_to(tmp_path / "run")
    newest = list_checkpoints(run / "checkpoints")[-1]
    state = newest / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    assert train_main(["--resume", str(run), "--total-steps", "400"]) == 0
    err = capsys.readouterr().err
    assert "skipping checkpoint step_000000000400" in err and "from step_000000000200" in err
    assert (run / "checkpoints" / "broken_step_000000000400").is_dir()
    assert load_latest(run / "checkpoints")[1]["global_step"] == 400


@pytest.mark.slow
def test_sigkill_loses_at_most_the_steps_since_the_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "launch.train", *TINY, *NO_COMPILE, "--total-steps", "100000", "--run-dir", str(run)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while len(list_checkpoints(run / "checkpoints")) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)  # the trainer and any worker processes, mid-run
    finally:
        process.wait(timeout=30)
    path, payload = load_latest(run / "checkpoints")
    assert payload["global_step"] >= 200
    assert train_main(["--resume", str(run), "--total-steps", str(payload["global_step"] + 200)]) == 0
    assert load_latest(run / "checkpoints")[1]["global_step"] == payload["global_step"] + 200


@pytest.mark.slow
def test_ppo_smoke_run_writes_logs_checkpoints_and_evaluation(tmp_path, capsys, ppo_run_400):
    run = ppo_run_400.copy_to(tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    assert config["algo"] == "ppo" and config["ppo"]["rollout_steps"] == EPISODE
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_000000000200", "step_000000000400"]
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records if "losses/policy_loss" in r] == [100, 200, 300, 400]  # after every rollout
    tags = set().union(*(r.keys() for r in records))
    for tag in (
        "charts/SPS",
        "charts/episodic_return",
        "losses/policy_loss",
        "losses/value_loss/reach-v3",
        "losses/approx_kl",
        "losses/explained_variance",
        "balancer/actor/weights/drawer-close-v3",
        "balancer/critic/conflicting_pairs",
        "eval/success_rate",
        "eval/reach-v3/success_rate",
    ):
        assert tag in tags, tag
    assert json.loads((run / "eval" / "final.json").read_text())["step"] == 400
    assert eval_main([str(run), "--checkpoint", "step_000000000200", "--episodes", "1"]) == 0
    assert "drawer-close-v3" in capsys.readouterr().out


@pytest.mark.slow
def test_resumed_ppo_run_matches_the_uninterrupted_run_exactly(tmp_path, ppo_run_400):
    straight, interrupted = ppo_run_400.path, tmp_path / "interrupted"
    assert _train_ppo("--total-steps", "200", "--run-dir", str(interrupted)) == 0
    assert train_main(["--resume", str(interrupted), "--total-steps", "400"]) == 0

    state_a = load_latest(straight / "checkpoints")[1]["agent"]
    state_b = load_latest(interrupted / "checkpoints")[1]["agent"]
    params_a, params_b = state_a["modules"], state_b["modules"]
    assert params_a.keys() == params_b.keys() and "obs_normalizer.mean" in params_a
    assert all(torch.equal(params_a[k], params_b[k]) for k in params_a)
    assert torch.equal(state_a["generator"], state_b["generator"])
    records_b = [r for r in training_records(interrupted) if not (r["step"] == 200 and "eval/success_rate" in r)]
    assert training_records(straight) == records_b
    assert json.loads((straight / "eval" / "final.json").read_text()) == json.loads(
        (interrupted / "eval" / "final.json").read_text()
    )

