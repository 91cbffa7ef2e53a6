"""mtrl-plot (launch/plot.py) on synthetic run directories written with the trainer's file layout and tag names."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from matplotlib.image import imread

from launch import plot
from launch.presets import PRESETS
from launch.train import _plot

TASKS = ("reach-v3", "drawer-close-v3")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _record(step: int, algo: str) -> dict[str, float]:
    """One log line as the trainer writes it (``launch.trainer.scalars``: a mean tag and one per task)."""
    losses = ("qf_loss", "actor_loss", "alpha") if algo == "sac" else ("policy_loss", "value_loss", "entropy")
    record: dict[str, float] = {"step": step, "time": 1.0e9 + step, "charts/SPS": 100.0, "losses/critic_grad_norm": 1.0}
    for i, loss in enumerate(losses):
        per_task = {task: 0.5 + 0.1 * i + 0.01 * t + 1e-4 * step for t, task in enumerate(TASKS)}
        record[f"losses/{loss}"] = sum(per_task.values()) / len(per_task)
        record |= {f"losses/{loss}/{task}": value for task, value in per_task.items()}
    for network in ("critic", "actor"):
        weights = {task: 0.5 + (0.1 if t else -0.1) * (step % 3) for t, task in enumerate(TASKS)}
        record[f"balancer/{network}/weights"] = sum(weights.values()) / len(weights)
        record |= {f"balancer/{network}/weights/{task}": value for task, value in weights.items()}
        record[f"balancer/{network}/mean_cosine"] = -0.1 + 1e-5 * step
        record[f"balancer/{network}/conflicting_pairs"] = float(step % 2)
    return record


def _evaluation(step: int, episodes: int, rates: tuple[float, float]) -> dict[str, object]:
    per_task = dict(zip(TASKS, rates))
    return {
        "step": step,
        "episodes_per_task": episodes,
        "success_rate": sum(rates) / len(rates),
        "per_task_success": per_task,
        "per_task_return": {task: 100.0 * rate for task, rate in per_task.items()},
    }


def make_run(root: Path, algo: str = "sac", evaluations: bool = True) -> Path:
    """A run directory as mtrl-train leaves it while training: config, metrics (last line torn), evaluations."""
    preset = "smoke" if algo == "sac" else "ppo-smoke"
    config = PRESETS[preset][1]
    config = dataclasses.replace(config, env=dataclasses.replace(config.env, benchmark=",".join(TASKS)), run_dir=root)
    root.mkdir()
    (root / "config.json").write_text(json.dumps(config.to_plain()))
    lines = []
    for step in range(100, 1100, 100):
        lines.append(json.dumps({"step": step, "time": 1.0e9, "charts/episodic_return": step / 10, "charts/episodic_success": 0.5}))
        lines.append(json.dumps(_record(step, algo)))
    torn = json.dumps(_record(1100, algo))[:57]
    (root / "metrics.jsonl").write_text("\n".join(lines) + "\n" + torn)
    if evaluations:
        (root / "eval").mkdir()
        for step, rates in ((400, (0.0, 0.5)), (800, (0.5, 1.0))):
            (root / "eval" / f"step_{step:012d}.json").write_text(json.dumps(_evaluation(step, 10, rates)))
        (root / "eval" / "final.json").write_text(json.dumps(_evaluation(1000, 50, (0.6, 1.0))))
        (root / "eval" / "mtrl-eval_step_000000000400_1.json").write_text("{not json")  # another program's file
    return root


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    height, width = imread(path).shape[:2]
    assert height > 100 and width > 100


def test_every_figure_of_a_sac_run_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path / "run")
    assert plot.main([str(run)]) == 0
    for name in plot.FIGURES:
        _assert_png(run / "plots" / f"{name}.png")
    out = capsys.readouterr().out.strip()
    assert out == f"plots in {run / 'plots'}: " + ", ".join(f"{name}.png" for name in plot.FIGURES)


def test_the_run_is_read_as_written_so_far(tmp_path: Path) -> None:
    data = plot.load_run(make_run(tmp_path / "run"))
    assert data.tasks == list(TASKS) and data.algo == "sac"
    assert [r["step"] for r in data.records if "losses/qf_loss" in r][-1] == 1000  # the torn line is skipped
    assert [e.step for e in data.evaluations] == [400, 800] and data.final is not None and data.final.episodes_per_task == 50
    assert plot.loss_tags(data) == [
        "losses/actor_loss", "losses/critic_grad_norm", "losses/qf_loss"
    ]  # temperatures have their own figure, per-task tags join their mean's panel
    assert data.per_task_tags("losses/alpha") == {task: f"losses/alpha/{task}" for task in TASKS}
    assert plot.balanced_networks(data, "weights") == ["critic", "actor"]


def test_a_run_without_evaluations_skips_the_success_figure_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path / "run", evaluations=False)
    assert plot.main([str(run)]) == 0
    assert not (run / "plots" / "success.png").exists()
    for name in set(plot.FIGURES) - {"success"}:
        _assert_png(run / "plots" / f"{name}.png")
    assert "skipped success.png (no evaluations yet)" in capsys.readouterr().out


def test_a_ppo_run_has_no_temperatures(tmp_path: Path) -> None:
    result = plot.plot_run(make_run(tmp_path / "run", algo="ppo"))
    assert set(result.skipped) == {"temperatures"} and "ppo run" in result.skipped["temperatures"]
    assert {path.stem for path in result.written} == set(plot.FIGURES) - {"temperatures"}


def test_a_run_that_has_only_started_skips_every_figure(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", evaluations=False)
    (run / "metrics.jsonl").write_text('{"step": 10')  # the first line, half written
    result = plot.plot_run(run, tmp_path / "figures")
    assert result.written == [] and set(result.skipped) == set(plot.FIGURES)
    assert result.out == tmp_path / "figures"


@pytest.mark.parametrize("make", [lambda tmp: tmp / "missing", lambda tmp: tmp, lambda tmp: _file(tmp / "file")])
def test_not_a_run_directory_is_one_line_and_exit_2(make, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert plot.main([str(make(tmp_path))]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and captured.err.startswith("mtrl-plot: error: ")


def test_an_unwritable_output_place_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path / "run")
    assert plot.main([str(run), "--out", str(_file(tmp_path / "file") / "plots")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_failing_plot_is_one_warning_line_at_the_end_of_a_run(tmp_path: Path, monkeypatch, capsys) -> None:
    def broken(run_dir: Path) -> None:
        raise RuntimeError("no font\ntraceback ...")

    monkeypatch.setattr(plot, "plot_run", broken)
    _plot(tmp_path)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "mtrl-train: warning: no plots: no font\n"


def _file(path: Path) -> Path:
    path.write_text("")
    return path
