"""Tests for benchmarks.toy: the CAGrad paper's two-objective toy with the registered balancers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks.toy import METHODS, STARTS, Args, available_methods, main, pareto_gap, run_all, toy_gradients, toy_losses, write_outputs

STEPS = 30  # enough for CAGrad to lower the average loss by several times the 1e-3 the test asks for


def test_toy_gradients_match_the_jacobian() -> None:
    for start in STARTS:
        x = torch.tensor(start, dtype=torch.float64)
        losses, grads = toy_gradients(x)
        torch.testing.assert_close(losses, toy_losses(x))
        torch.testing.assert_close(grads, torch.func.jacrev(toy_losses)(x))


def test_pareto_gap() -> None:
    assert pareto_gap(torch.tensor([[1.0, 0.0], [-2.0, 0.0]])) == pytest.approx(0.0, abs=1e-12)
    assert pareto_gap(torch.tensor([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(math.sqrt(0.5))
    assert pareto_gap(torch.tensor([[3.0, 4.0], [3.0, 4.0]])) == pytest.approx(5.0)


@pytest.fixture(scope="module")
def report() -> dict:
    return run_all(Args(steps=STEPS, workers=1, methods=(*METHODS, "no_such_method")))


def test_every_available_method_runs_from_every_start(report: dict) -> None:
    present, _ = available_methods(METHODS)
    assert list(report["methods"]) == present
    assert report["skipped"] == {"no_such_method": "not in mtrl.balancers"}
    for runs in report["methods"].values():
        assert [tuple(run["start"]) for run in runs] == list(STARTS)
        for run in runs:
            assert run["steps"] == STEPS
            values = [*run["final"], run["f1"], run["f2"], run["mean_loss"], run["pareto_gap"]]
            assert all(math.isfinite(v) for v in values)
            assert run["final"] != run["start"]


def test_cagrad_decreases_the_average_loss_from_every_start(report: dict) -> None:
    if "cagrad" not in report["methods"]:
        pytest.skip("CAGrad is not registered")
    for run in report["methods"]["cagrad"]:
        start_loss = float(toy_losses(torch.tensor(run["start"])).mean())
        assert run["mean_loss"] < start_loss - 1e-3


def test_average_minimum_lies_on_the_pareto_segment(report: dict) -> None:
    x1, x2 = report["average_minimum"]
    assert abs(x1) < 1e-3 and -9.0 < x2 < -8.0
    _, grads = toy_gradients(torch.tensor([x1, x2], dtype=torch.float64))
    assert pareto_gap(grads) < 1e-4


def test_outputs_are_written(report: dict, tmp_path: Path) -> None:
    write_outputs(report, tmp_path)
    assert (tmp_path / "toy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "toy.json").read_text())
    assert saved["steps"] == STEPS
    assert all("path" not in run for runs in saved["methods"].values() for run in runs)
    first = next(iter(saved["methods"].values()))[0]
    assert set(first) >= {"start", "final", "f1", "f2", "mean_loss", "steps"}


def test_command_line(tmp_path: Path) -> None:
    main(["--out", str(tmp_path / "toy"), "--steps", "20", "--workers", "1", "--methods", "mean", "pcgrad"])
    saved = json.loads((tmp_path / "toy" / "toy.json").read_text())
    assert set(saved["methods"]) <= {"mean", "pcgrad"} and saved["steps"] == 20
    assert (tmp_path / "toy" / "toy.png").is_file()
