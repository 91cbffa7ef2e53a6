"""A run that already has its final evaluation, resumed: nothing is trained, evaluated or logged again.

The end of a run is: final checkpoint, final evaluation (logged, then ``eval/final.json``), the
table, the figures. A run killed while it draws its figures (several seconds at the end of every
run), then resumed (by hand, or as a sweep's retried trial), must end as the uninterrupted run: one
final evaluation record. mtrl-train runs here on the simulator-free environments of envs.testing.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

import launch.train
from envs.testing import make_scripted_envs
from experiments.trial import trial_command
from launch.factory import make_trainer
from launch.train import main as train_main
from mtrl.logging import read_metrics

ARGS = [
    "smoke",
    "--env.benchmark", "reach-v3,drawer-close-v3",
    "--env.max-episode-steps", "5",
    "--env.num-workers", "0",
    "--sac.hidden-dims", "16",
    "--replay.warmup-steps", "20",
    "--replay.batch-size-per-task", "8",
    "--replay.buffer-capacity-per-task", "200",
    "--sac.no-compile-gradients",
    "--balancer.name", "mean",
    "--balancer.no-statistics",
    "--total-steps", "100",
    "--eval-every", "40",
    "--eval-episodes", "1",
    "--final-eval-episodes", "1",
    "--checkpoint-every", "25",
    "--log-every", "30",
    "--device", "cpu",
    "--no-progress",
]


class Killed(BaseException):
    """The process dying where it is raised (what follows in the run never happens)."""


@pytest.fixture(autouse=True)
def scripted_envs(monkeypatch):
    """mtrl-train builds its environments with envs.testing.make_scripted_envs."""
    monkeypatch.setattr(launch.train, "make_trainer", functools.partial(make_trainer, build_envs=make_scripted_envs))


def _plots(monkeypatch) -> list[Path]:
    """Record mtrl-train's figure drawing instead of drawing (matplotlib is not what is tested)."""
    drawn: list[Path] = []
    monkeypatch.setattr(launch.train, "_plot", drawn.append)
    return drawn


def _killed_while_plotting(run: Path, monkeypatch) -> None:
    def kill(run_dir: Path) -> None:
        raise Killed

    monkeypatch.setattr(launch.train, "_plot", kill)
    with pytest.raises(Killed):
        train_main([*ARGS, "--run-dir", str(run)])


def _files(run: Path) -> dict[str, bytes]:
    """Every file of the run (TensorBoard events, metrics, evaluations, checkpoints, config history) by path."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file() and p.name != ".lock"}


def _without_wall_clock(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("time", "charts/SPS")} for r in read_metrics(run / "metrics.jsonl")]


def _final_records(run: Path, step: int) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if r["step"] == step and "eval/success_rate" in r]


def test_a_run_killed_while_drawing_its_figures_resumes_to_the_same_logs_without_evaluating_again(tmp_path, monkeypatch, capsys):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _plots(monkeypatch)
    assert train_main([*ARGS, "--run-dir", str(straight)]) == 0
    _killed_while_plotting(killed, monkeypatch)
    left = _files(killed)
    capsys.readouterr()

    drawn = _plots(monkeypatch)
    assert train_main(["--resume", str(killed)]) == 0
    assert len(_final_records(killed, 100)) == 1
    assert _without_wall_clock(killed) == _without_wall_clock(straight)
    assert _files(killed) == left  # nothing logged, evaluated, checkpointed or recorded again
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [
        f"mtrl-train: {killed} is finished: step 100 of --total-steps 100, final evaluation written; "
        f"nothing to train or evaluate (to train it further, resume it with a larger --total-steps)"
    ]
    assert "final success rate" in out and drawn == [killed]  # the end of the run again: its table and figures

    # what a sweep's retried trial runs for it goes the same way
    assert trial_command(killed, []) == ["--resume", str(killed)]


def test_a_finished_run_trains_on_with_a_larger_total_steps_and_one_final_evaluation(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    _plots(monkeypatch)
    assert train_main([*ARGS, "--run-dir", str(run)]) == 0
    assert train_main(["--resume", str(run), "--total-steps", "150"]) == 0
    assert "is finished" not in capsys.readouterr().err
    assert len(_final_records(run, 100)) == 1 and len(_final_records(run, 150)) == 1
    assert (run / "checkpoints" / "step_000000000150").is_dir()
