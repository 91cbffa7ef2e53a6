"""Tiny runs trained once per test session and shared by the end-to-end tests that start from a finished run.

A test that changes a run (resumes it, breaks a checkpoint, evaluates into it) works on its own copy
(:meth:`FinishedRun.copy_to`); the shared directory itself is never written after its run ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import shutil
from pathlib import Path

import pytest

from launch.train import main as train_main
from tiny_runs import PPO_TINY, TINY  # tests/integration/tiny_runs.py


@dataclasses.dataclass(frozen=True)
class FinishedRun:
    """A finished ``mtrl-train`` run: its directory (read only) and what the command printed."""

    path: Path
    out: str
    err: str

    def copy_to(self, destination: Path) -> Path:
        """A private copy of the run at ``destination`` (a run directory may move between its start and a resume)."""
        shutil.copytree(self.path, destination, symlinks=True)
        return destination


def _train_once(tmp_path_factory: pytest.TempPathFactory, name: str, argv: list[str]) -> FinishedRun:
    run = tmp_path_factory.mktemp(name) / "run"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = train_main([*argv, "--run-dir", str(run)])
    assert code == 0, err.getvalue()
    return FinishedRun(run, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def sac_run_400(tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    """``TINY`` for 400 steps: checkpoints at 200 and 400, the default (compiled) per-task gradients."""
    return _train_once(tmp_path_factory, "sac_run_400", [*TINY, "--total-steps", "400"])


@pytest.fixture(scope="session")
def sac_run_200(tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    """``TINY`` for 200 steps: one checkpoint, at 200."""
    return _train_once(tmp_path_factory, "sac_run_200", [*TINY, "--total-steps", "200"])


@pytest.fixture(scope="session")
def ppo_run_400(tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    """``PPO_TINY`` for 400 steps: four rollouts, checkpoints at 200 and 400."""
    return _train_once(tmp_path_factory, "ppo_run_400", [*PPO_TINY, "--total-steps", "400"])
