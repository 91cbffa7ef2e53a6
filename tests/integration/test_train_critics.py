"""End-to-end runs of ``mtrl-train`` with the new critics and normalisations on two Meta-World tasks.

SAC with BRC's categorical critic and per-task reward normalisation, PPO with PopArt and a LayerNorm
critic, each on the materialised and on the Gramian gradient path: each trains a few hundred steps
with tiny networks, and a run killed (SIGKILL, mid-run, after its first checkpoint) and resumed ends
exactly as the uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from launch.evaluate import main as eval_main
from launch.train import main as train_main
from mtrl.checkpoint import list_checkpoints, load_latest
from mtrl.logging import read_metrics
from tiny_runs import PPO_TINY, TINY, training_records  # tests/integration/tiny_runs.py

SAC_BRC = [
    *TINY,
    "--sac.critic", "brc", "--sac.critic-width", "32", "--sac.critic-blocks", "2", "--sac.num-bins", "21",
    "--sac.reward-normalization", "per-task",
    "--sac.no-compile-gradients", "--balancer.no-compile-solver",
]
PPO_POPART = [
    *PPO_TINY,
    "--ppo.value-normalization", "popart", "--ppo.critic-layer-norm",
    "--ppo.no-compile-gradients", "--balancer.no-compile-solver",
]


def _killed_after_first_checkpoint(argv: list[str], run: Path) -> None:
    """Start ``mtrl-train`` in a process of its own and SIGKILL it (and its workers) once its first checkpoint exists."""
    command = [sys.executable, "-m", "launch.train", *argv, "--run-dir", str(run)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list_checkpoints(run / "checkpoints") and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        _, err = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, err.decode()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("argv", "statistics"),
    [
        pytest.param(SAC_BRC, ("reward_scale.max_abs_return", "reward_scale.episodes"), id="sac-brc-reward-normalisation"),
        pytest.param(PPO_POPART, ("critic.popart.first_moment", "critic.popart.second_moment"), id="ppo-popart-layer-norm"),
        pytest.param(
            [*SAC_BRC, "--sac.gradient-path", "gramian"],
            ("reward_scale.max_abs_return", "reward_scale.episodes"),
            id="sac-brc-gramian-path",
        ),
        pytest.param(
            [*PPO_POPART, "--ppo.gradient-path", "gramian"],
            ("critic.popart.first_moment", "critic.popart.second_moment"),
            id="ppo-popart-gramian-path",
        ),
    ],
)
def test_a_run_trains_and_resumed_after_a_kill_ends_exactly_as_the_uninterrupted_run(tmp_path, argv, statistics):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert train_main([*argv, "--total-steps", "400", "--run-dir", str(straight)]) == 0
    records = read_metrics(straight / "metrics.jsonl")
    loss = "losses/qf_loss" if "smoke" in argv else "losses/value_loss"
    losses = [r[loss] for r in records if loss in r]
    assert len(losses) >= 2 and all(math.isfinite(value) for value in losses)
    state = load_latest(straight / "checkpoints")[1]["agent"]["modules"]
    for name in statistics:
        assert name in state and state[name].abs().sum() > 0, name  # the normaliser's statistics moved and were saved
    assert eval_main([str(straight), "--checkpoint", "step_000000000200", "--episodes", "1"]) == 0  # mtrl-eval builds the same agent

    _killed_after_first_checkpoint([*argv, "--total-steps", "400"], killed)
    newest = load_latest(killed / "checkpoints")[1]["global_step"]
    assert newest < 400  # killed mid-run
    assert train_main(["--resume", str(killed)]) == 0

    params_a = load_latest(straight / "checkpoints")[1]["agent"]["modules"]
    params_b = load_latest(killed / "checkpoints")[1]["agent"]["modules"]
    assert params_a.keys() == params_b.keys()
    assert all(torch.equal(params_a[k], params_b[k]) for k in params_a)
    assert training_records(straight) == training_records(killed)  # a resume drops what was logged past its checkpoint
    assert json.loads((straight / "eval" / "final.json").read_text()) == json.loads((killed / "eval" / "final.json").read_text())
