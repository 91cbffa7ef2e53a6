"""mtrl-bench-overlap: a tiny run on simulator-free environments reports the documented numbers; bad input is refused."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from benchmarks.overlap import KINDS, PHASES, TARGET_RATIO, Args, main, measure_run, run
from envs.testing import make_scripted_envs

TASKS = "reach-v3,drawer-close-v3"
TINY = Args(
    benchmarks=(TASKS,),
    workers=(1, 2),
    steps=4,
    warmup=1,
    block=2,
    fill_steps=2,
    hidden=(16, 16),
    batch_size=8,
    compile_gradients=False,
    compile_solver=False,
    malloc_tuning=False,
    device="cpu",
)


@pytest.mark.slow
def test_tiny_run_reports_the_ratios_from_its_medians(tmp_path: Path) -> None:
    report = run(TINY, build_envs=make_scripted_envs)
    json.dumps(report)  # JSON-ready
    assert report["target_ratio"] == TARGET_RATIO and report["torch_threads"] == 1
    assert report["machine"]["cpu_count"] >= 1 and set(report["machine"]["load_average"]) == {"before", "after"}
    result = report["benchmarks"][TASKS]
    assert result["preset"] == "mt10" and result["num_tasks"] == 2 and result["hidden"] == [16, 16]
    assert result["update_graph"] == "off" and result["batch_size_per_task"] == 8
    assert [r["num_workers"] for r in result["runs"]] == [1, 2]
    for r in result["runs"]:
        assert r["num_envs"] == 2 and r["cores_needed"] == r["num_workers"] + 1
        assert r["enough_cores"] == (r["available_cores"] >= r["cores_needed"])
        assert r["torch_threads"] == 1 and set(r["load_average"]) == {"before", "after"}
        for kind in KINDS:
            assert r[kind]["median_s"] > 0 and r[kind]["mean_s"] > 0, kind
        assert set(r["iteration_phases"]) == set(PHASES)
        env_step, update, iteration = (r[kind]["median_s"] for kind in KINDS)
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0
        assert math.isfinite(r["ratio_to_sum"]) and r["ratio_to_sum"] > 0
        assert r["ratio"] == pytest.approx(iteration / max(env_step, update), rel=1e-3)
        assert r["ratio_to_sum"] == pytest.approx(iteration / (env_step + update), rel=1e-3)
        assert r["hidden_fraction"] == pytest.approx((env_step + update - iteration) / min(env_step, update), rel=1e-3, abs=1e-3)
        assert r["meets_target"] == (r["ratio"] <= TARGET_RATIO) and r["target"] == TARGET_RATIO
        assert r["env_steps_per_s"]["env_step"] == pytest.approx(2 / env_step, rel=1e-3)
        assert r["env_steps_per_s"]["iteration"] == pytest.approx(2 / iteration, rel=1e-3)
        assert r["learner_cpu_fraction"] >= 0 and r["worker_cpu_fraction"] >= 0


@pytest.mark.slow
def test_the_trainers_iteration_is_timed_after_its_warm_up_fills_the_replay() -> None:
    """The fill is the trainer's warm-up (no update); each update alone and each iteration is one update."""
    state: dict = {}
    run_report = measure_run(TINY, TASKS, 1, make_scripted_envs, state)
    assert state["agent"].num_updates == 2 * (TINY.warmup + TINY.steps)
    assert run_report["iteration_phases"].keys() == set(PHASES)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workers", "0", "2"], r"--workers: every value must be >= 1 .*got \[0, 2\]"),
        (["--steps", "0"], "--steps must be >= 1, got 0"),
        (["--benchmarks", "MT11"], "--benchmarks: unknown benchmark or task 'MT11'"),
        (["--hidden", "16", "0"], r"--hidden: every value must be >= 1, got \[16, 0\]"),
    ],
)
def test_bad_arguments_end_with_one_line_and_status_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "overlap.json"
    assert main([*argv, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mtrl-bench-overlap: error: "), captured.err
    assert re.search(message, lines[0]), lines[0]
    assert captured.out == "" and not out.exists()


def test_run_refuses_bad_arguments_too() -> None:
    with pytest.raises(SystemExit, match="--steps must be >= 1"):
        run(Args(steps=0), build_envs=make_scripted_envs)
