"""``mtrl-bench-learning``: argument validation before any work, and one tiny end-to-end run."""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path

import pytest

from benchmarks import learning as bench_learning
from benchmarks.learning import PARTS, main
from mtrl.balancers import BALANCERS

ALLOWED_PARTS = "smoke, multitask, sb3, ppo-smoke, ppo-multitask, ppo-sb3"
ALLOWED_BALANCERS = ", ".join(BALANCERS)
POSITIVE_FLAGS = (
    "--steps-per-task",
    "--sb3-steps",
    "--ppo-steps-per-task",
    "--ppo-sb3-steps",
    "--ppo-envs-per-task",
    "--ppo-rollout-steps",
    "--ppo-epochs",
    "--ppo-minibatches",
    "--torch-threads",
)


class WorkStarted(Exception):
    """Raised in place of the temporary directory: the arguments passed validation and work began."""


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the first step of the real work (the temporary run directory) raise :class:`WorkStarted`."""

    def temporary_directory(*args: object, **kwargs: object) -> None:
        raise WorkStarted

    monkeypatch.setattr(bench_learning, "tempfile", types.SimpleNamespace(TemporaryDirectory=temporary_directory))


def _rejected(argv: list[str]) -> str:
    """The message ``main`` exits with for ``argv``."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert isinstance(exc.value.code, str)
    return exc.value.code


def test_the_documented_parts_are_the_allowed_ones() -> None:
    assert ", ".join(PARTS) == ALLOWED_PARTS


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--parts", "multi-task"], f"--parts: unknown part 'multi-task'; allowed: {ALLOWED_PARTS}"),
        (["--parts", "multitask,sbb3"], f"--parts: unknown part 'sbb3'; allowed: {ALLOWED_PARTS}"),
        (["--parts", "multitask,"], f"--parts: unknown part ''; allowed: {ALLOWED_PARTS}"),
        (["--parts", ""], f"--parts: no part given; allowed: {ALLOWED_PARTS}"),
        (["--balancers", "mean,cagrd"], f"--balancers: unknown balancer 'cagrd'; allowed: {ALLOWED_BALANCERS}"),
        (["--balancers", "CAGrad"], f"--balancers: unknown balancer 'CAGrad'; allowed: {ALLOWED_BALANCERS}"),
        (["--balancers", " "], f"--balancers: no balancer given; allowed: {ALLOWED_BALANCERS}"),
        (["--balancers", "mean,cagrad,mean"], "--balancers: balancer 'mean' is given twice"),
        (
            ["--ppo-rollout-steps", "10", "--ppo-envs-per-task", "2", "--ppo-minibatches", "21"],
            "PPO sizes: ppo.minibatches must be <= ppo.rollout_steps * env.envs_per_task = 20, got 21",
        ),
        (["--hidden", "16", "0"], "--hidden sizes must be >= 1, got 16 0"),
        (["--hidden", "-3"], "--hidden sizes must be >= 1, got -3"),
        *[([flag, "0"], f"{flag} must be >= 1, got 0") for flag in POSITIVE_FLAGS],
        (["--steps-per-task", "-5"], "--steps-per-task must be >= 1, got -5"),
    ],
)
def test_bad_arguments_exit_before_any_work(argv: list[str], message: str, tmp_path: Path, no_work: None) -> None:
    out = tmp_path / "report.json"
    assert _rejected([*argv, "--out", str(out)]) == message
    assert list(tmp_path.iterdir()) == []


def test_out_must_not_be_a_directory(tmp_path: Path, no_work: None) -> None:
    assert _rejected(["--out", str(tmp_path)]) == f"--out: {tmp_path} is a directory; give a file path for the JSON report"
    assert list(tmp_path.iterdir()) == []


def test_out_directory_must_exist(tmp_path: Path, no_work: None) -> None:
    missing = tmp_path / "missing"
    assert _rejected(["--out", str(missing / "report.json")]) == f"--out: {missing} is not an existing directory"
    assert list(tmp_path.iterdir()) == []


def test_out_directory_must_be_a_directory(tmp_path: Path, no_work: None) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert _rejected(["--out", str(a_file / "report.json")]) == f"--out: {a_file} is not an existing directory"
    assert [p.name for p in tmp_path.iterdir()] == ["a_file"]


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--parts", ",".join(PARTS), "--balancers", ",".join(BALANCERS)],
        ["--parts", "sb3", "--hidden", "1", *[a for f in POSITIVE_FLAGS for a in (f, "1")]],
    ],
)
def test_good_arguments_reach_the_work(argv: list[str], tmp_path: Path, no_work: None) -> None:
    with pytest.raises(WorkStarted):
        main([*argv, "--out", str(tmp_path / "report.json")])


def test_an_existing_report_may_be_overwritten(tmp_path: Path, no_work: None) -> None:
    out = tmp_path / "report.json"
    out.write_text("{}\n")
    with pytest.raises(WorkStarted):
        main(["--out", str(out)])


def _check_curve(curve: list[dict], steps: list[int]) -> None:
    assert [point["step"] for point in curve] == steps
    assert all(0.0 <= point["success_rate"] <= 1.0 for point in curve)


def _check_run(run: dict, curve_steps: list[int], tasks: list[str]) -> None:
    assert run["train_sps"] > 0 and run["wall_seconds"] > 0
    assert 0.0 <= run["final_success_rate"] <= 1.0
    assert sorted(run["final_per_task_success"]) == sorted(tasks)
    _check_curve(run["curve"], curve_steps)
    assert all(sorted(point["per_task_success"]) == sorted(tasks) for point in run["curve"])


@pytest.mark.slow
def test_multitask_and_sb3_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Both parts, each trainer run just past its 1500-steps-per-task warm-up so that it also updates.

    To fit a test's budget, evaluations are cut to one episode per task (the benchmark's 50 final
    episodes of untrained policies would take most of a minute) and neither CAGrad's solver nor the
    per-task gradients are compiled (some seconds each); everything else is the benchmark's own configuration.
    """
    learning_config = bench_learning.learning_config

    def quick_config(*args: object, **kwargs: object) -> bench_learning.TrainConfig:
        config = learning_config(*args, **kwargs)
        balancer = dataclasses.replace(config.balancer, compile_solver=False)
        sac = dataclasses.replace(config.sac, compile_gradients=False)
        return dataclasses.replace(config, eval_episodes=1, final_eval_episodes=1, balancer=balancer, sac=sac)

    monkeypatch.setattr(bench_learning, "learning_config", quick_config)
    out = tmp_path / "report.json"
    out.write_text("stale\n")  # an existing report is overwritten
    steps = 1600
    argv = ["--parts", "multitask,sb3", "--balancers", "mean,cagrad", "--steps-per-task", str(steps)]
    argv += ["--sb3-steps", str(steps), "--hidden", "16", "--torch-threads", "1", "--out", str(out)]
    assert main(argv) == 0

    report = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == report
    assert sorted(report) == ["multitask", "sb3"]

    multitask = report["multitask"]
    tasks = bench_learning.EASY_TASKS.split(",")
    assert multitask["tasks"] == tasks and multitask["steps_per_task"] == steps and multitask["hidden_dims"] == [16]
    assert sorted(multitask["runs"]) == ["cagrad", "mean"]
    for run in multitask["runs"].values():
        _check_run(run, [1500, 3000, 4500], tasks)  # every (vector) episode of 3 x 500 steps, of 4800 steps

    sb3 = report["sb3"]
    assert (sb3["task"], sb3["steps"], sb3["hidden_dims"], sb3["torch_threads"]) == ("reach-v3", steps, [16], 1)
    _check_run(sb3["mtrl"], [500, 1000, 1500], ["reach-v3"])
    theirs = sb3["stable_baselines3"]
    assert theirs["train_sps"] > 0 and 0.0 <= theirs["final_success_rate"] <= 1.0
    _check_curve(theirs["curve"], [500, 1000, 1500, 1600])  # stable-baselines3's last point is its final evaluation
    assert theirs["curve"][-1]["success_rate"] == theirs["final_success_rate"]
    assert sb3["sps_ratio_mtrl_over_sb3"] == pytest.approx(sb3["mtrl"]["train_sps"] / theirs["train_sps"], abs=0.006)
