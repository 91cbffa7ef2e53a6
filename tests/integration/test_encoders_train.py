"""Tiny end-to-end runs of ``mtrl-train`` with each encoder (two Meta-World tasks, tiny networks, a few hundred steps).

Each run trains, checkpoints and evaluates through the real command, SAC with its default compiled
per-task gradients; a SAC run with MOORE killed (SIGKILL) after a checkpoint resumes and ends exactly
as the same run uninterrupted.
"""

from __future__ import annotations

import json
import math
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
from tiny_runs import NO_COMPILE, PPO_TINY, TINY, training_records  # tests/integration/tiny_runs.py

ENCODERS = {
    "mlp-embedding": ("mlp", ["encoder.task-conditioning", "embedding", "encoder.task-embedding-dim", "4"], "task.weight"),
    "moore": ("moore", ["encoder.name", "moore", "encoder.num-experts", "2"], "task_code.table.weight"),
    "softmod": ("softmod", ["encoder.name", "softmod", "encoder.module-width", "8"], "task_code.table.weight"),
    "paco": ("paco", ["encoder.name", "paco", "encoder.num-parameter-sets", "3"], "task_code.table.weight"),
}
"""Each encoder's name, its options on the command line (under ``--sac.`` or ``--ppo.``) and a parameter only it has."""


def _encoder_args(algo: str, key: str) -> list[str]:
    options = ENCODERS[key][1]
    return [f"--{algo}.{item}" if i % 2 == 0 else item for i, item in enumerate(options)]


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["sac", "ppo"])
@pytest.mark.parametrize("key", sorted(ENCODERS))
def test_a_tiny_run_with_each_encoder_trains_checkpoints_and_evaluates(tmp_path, capsys, algo, key):
    run = tmp_path / "run"
    base = TINY if algo == "sac" else [*PPO_TINY, "--ppo.no-compile-gradients"]
    assert train_main([*base, *_encoder_args(algo, key), "--total-steps", "400", "--run-dir", str(run)]) == 0, capsys.readouterr().err
    saved = json.loads((run / "config.json").read_text())[algo]["encoder"]
    assert saved["name"] == ENCODERS[key][0]
    payload = load_latest(run / "checkpoints")[1]
    assert payload["global_step"] == 400
    modules = payload["agent"]["modules"]
    parameter = ENCODERS[key][2]
    assert any(name.startswith("actor.") and name.endswith(parameter) for name in modules)
    assert any(name.startswith("critic.") and name.endswith(parameter) for name in modules)
    assert all(torch.isfinite(value).all() for value in modules.values() if value.is_floating_point())
    losses = [value for record in read_metrics(run / "metrics.jsonl") for tag, value in record.items() if tag.startswith("losses/")]
    assert losses and all(math.isfinite(v) for value in losses for v in (value if isinstance(value, list) else [value]))
    assert (run / "eval" / "final.json").exists()
    capsys.readouterr()
    assert eval_main([str(run), "--episodes", "1", "--num-workers", "0"]) == 0  # mtrl-eval rebuilds the same networks


@pytest.mark.slow
@pytest.mark.parametrize("key", ["moore", "paco"])
def test_a_killed_run_resumes_exactly_as_the_uninterrupted_one(tmp_path, key):
    """SIGKILL (no chance to checkpoint) after the first checkpoint; the resumed run ends as the straight one.

    PaCo's parameter sets take the factored per-task gradients (CAGrad, the smoke preset's balancer).
    """
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    common = [*TINY, *NO_COMPILE, *_encoder_args("sac", key), "--sac.update-graph", "off", "--env.num-workers", "1"]
    command = [sys.executable, "-m", "launch.train", *common, "--total-steps", "100000", "--run-dir", str(killed)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            metrics = killed / "metrics.jsonl"
            if list_checkpoints(killed / "checkpoints") and metrics.exists() and any(r["step"] >= 300 for r in read_metrics(metrics, partial=True)):
                break
            time.sleep(0.1)
        assert process.poll() is None, process.communicate()[1]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    step = load_latest(killed / "checkpoints")[1]["global_step"]
    assert step >= 200
    total = step + 200
    assert train_main(["--resume", str(killed), "--total-steps", str(total)]) == 0
    assert train_main([*common, "--total-steps", str(total), "--run-dir", str(straight)]) == 0
    params_a = load_latest(straight / "checkpoints")[1]["agent"]["modules"]
    params_b = load_latest(killed / "checkpoints")[1]["agent"]["modules"]
    assert any("task_code" in name for name in params_a)
    assert params_a.keys() == params_b.keys() and all(torch.equal(params_a[k], params_b[k]) for k in params_a)
    assert training_records(straight) == training_records(killed)
