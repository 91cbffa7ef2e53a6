"""mtrl-bench-gpu: refuses without CUDA in one line; on the CPU (--allow-cpu) every section is reported, CUDA-only parts
skipped with the reason; the budget skips rather than overruns; the training rate and its projection; the trainer's stop."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.gpu import STEPS_PER_TASK, main, train_argv, train_for, training_rate
from launch.train import parse_config

TINY = ["--tasks", "2", "--balancers", "mean", "--hidden", "8", "--batch-size", "4", "--repeats", "1", "--warmup", "1", "--train-seconds", "0",
        "--widths", "16", "--width-tasks", "2"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU behaviour on a machine without CUDA")


@NO_CUDA
def test_without_cuda_it_refuses_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gpu.json"
    assert main([*TINY, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err == "mtrl-bench-gpu: error: no CUDA device (torch.cuda.is_available() is False); this script measures the GPU path\n"
    assert captured.out == "" and not out.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--paths", "warp"], "--paths: unknown path 'warp'; allowed: eager, gradients, compiled, cuda-graph"),
        (["--balancers", "nope"], "--balancers: unknown balancer 'nope'; allowed: "),
        (["--repeats", "0"], "--repeats must be >= 1, got 0"),
        (["--tasks", "1"], "--tasks: every value must be >= 2, got [1]"),
        (["--train-seconds", "-1"], "--train-seconds must be >= 0 (0 skips the section), got -1.0"),
        (["--benchmark", "MT7"], "--benchmark: unknown benchmark or task 'MT7'"),
    ],
)
def test_a_bad_argument_is_refused_in_one_line_before_any_work(flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TINY, "--allow-cpu", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mtrl-bench-gpu: error: {message}") and err.count("\n") == 1


def test_an_unwritable_report_path_is_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TINY, "--allow-cpu", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"mtrl-bench-gpu: error: --out: {tmp_path} is a directory; give a file path for the JSON report\n"


@NO_CUDA
def test_on_the_cpu_every_section_is_reported_and_cuda_only_parts_are_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gpu.json"
    assert main([*TINY, "--allow-cpu", "--paths", "eager", "cuda-graph", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report == json.loads(capsys.readouterr().out)
    assert report["complete"] is True and not out.with_name("gpu.json.partial").exists()
    assert report["device"]["device"] == "cpu" and report["device"]["agent_parameters_on"] == ["cpu"]
    assert report["device"]["agent_on_device"] is True
    rows = report["updates"]["2"]
    assert rows["sac-plain"]["median_ms"] > 0
    assert rows["mean/eager"]["median_ms"] > 0 and rows["mean/eager"]["ratio_to_sac_plain"] > 0
    for name in ("mean/eager/bf16", "mean/cuda-graph", "mean/cuda-graph/bf16"):
        assert rows[name]["skipped"].startswith("skipped: needs CUDA (")
    assert set(report["no_sync"]["2"]) == {"mean/eager", "mean/eager/bf16", "mean/cuda-graph", "mean/cuda-graph/bf16"}
    assert report["no_sync"]["2"]["mean/eager"] == "skipped: needs CUDA (torch.cuda.set_sync_debug_mode)"
    assert report["training_mt10"] == {"skipped": "not asked for (--train-seconds 0)"}
    assert report["training_mt50"] == {"skipped": "not asked for (--mt50-seconds 0)"}
    assert report["projections"] == {"MT10": "not measured: no projection", "MT50": "not measured: no projection"}
    width = {row["variant"]: row for row in report["width"]}
    assert set(width) == {"plain", "materialised", "gramian"} and width["plain"]["width"] == 16
    assert width["gramian"]["time_s"] > 0 and width["gramian"]["peak_mib"] >= 0  # no ratio when a width-16 plain case rounds to 0 MiB


@NO_CUDA
def test_what_does_not_fit_in_the_budget_is_skipped_not_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TINY, "--allow-cpu", "--paths", "compiled", "--train-seconds", "60", "--budget-s", "30"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["training_mt10"]["skipped"].startswith("over the time budget (needs ~100 s, ")
    assert report["updates"]["2"]["mean/compiled"]["skipped"].startswith("skipped: over the time budget (needs ~120 s, ")
    assert report["wall_seconds"] < 30


def test_the_training_rate_is_taken_after_the_warm_up_and_projected_to_2m_steps_per_task() -> None:
    records = [
        {"step": 1000, "time": 0.0, "charts/SPS": 5000.0},  # warm-up: no updates yet
        {"step": 2000, "time": 100.0, "charts/SPS": 10.0},  # its interval holds the first update's compiling
        {"step": 4000, "time": 104.0, "charts/SPS": 500.0},
        {"step": 6000, "time": 108.0, "charts/SPS": 500.0},
    ]
    rate = training_rate(records, warmup_steps=1500, num_tasks=10)
    assert rate["steps_per_s_after_warmup"] == 500.0 and rate["measured_steps"] == 4000 and rate["last_step"] == 6000
    assert rate["projection"]["total_steps"] == STEPS_PER_TASK * 10
    assert rate["projection"]["hours"] == round(20_000_000 / 500 / 3600, 2)
    assert "projected" in rate["projection"]["note"]
    assert training_rate(records[:2], warmup_steps=1500, num_tasks=10) == {
        "failed": "fewer than two logs after the warm-up of 1500 steps (2 logs in all)"
    }


def test_the_training_command_is_one_mtrl_train_accepts() -> None:
    config = parse_config(train_argv("mt10", "reach-v3,drawer-close-v3", 15, torch.device("cpu")))
    assert config.env.num_workers == 15 and config.env.benchmark == "reach-v3,drawer-close-v3"
    assert config.device == "cpu" and config.eval_every == 0 and config.checkpoint_every == 0
    assert config.total_steps >= 10**12 and not config.progress and not config.tensorboard


def test_a_trainer_past_its_seconds_is_stopped_and_one_that_ends_first_gives_its_status(tmp_path: Path) -> None:
    started = time.monotonic()
    assert train_for([sys.executable, "-c", "import time; time.sleep(60)"], 0.5, tmp_path / "sleep.log") is None
    assert time.monotonic() - started < 15
    assert train_for([sys.executable, "-c", "print('usage'); raise SystemExit(2)"], 30, tmp_path / "fails.log") == 2
    assert (tmp_path / "fails.log").read_text() == "usage\n"
