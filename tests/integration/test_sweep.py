"""mtrl-sweep end to end on a local Ray limited to this machine's 2 cores, with tiny two-task trials.

A trial killed mid-run (SIGKILL) is retried and resumes from its checkpoint, ending exactly as an
uninterrupted trial of the same seed; a rerun skips finished trials; Ctrl-C or SIGTERM (which
Ray's driver would otherwise take) stops every trial with a checkpoint and leaves no process behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from envs.testing import descendants, wait_gone
from experiments.sweep import main as sweep_main
from mtrl.checkpoint import load_latest
from tiny_runs import EPISODE, training_records  # tests/integration/tiny_runs.py

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one worker, one local Ray for the module
ray = pytest.importorskip("ray")

SETTINGS = [
    f"env.max-episode-steps={EPISODE}", "sac.hidden-dims=32,32", "replay.warmup-steps=100",
    "replay.batch-size-per-task=16", "log-every=100", "checkpoint-every=200", "final-eval-episodes=1",
    "torch-threads=1", "sac.compile-gradients=false", "balancer.compile-solver=false",
]


def _sweep_args(total_steps: int, out: Path, *more: str) -> list[str]:
    """A sweep of tiny SAC trials on two tasks (the tests' mtrl-train runs), ``total_steps`` each."""
    return ["smoke", "--benchmarks", "reach-v3,drawer-close-v3", "--set", *SETTINGS, f"total-steps={total_steps}",
            "--no-progress", "--out", str(out), *more]
# keep_checkpoints changes nothing a run computes: its two values give two trials that must end identically
TWINS = ["--seeds", "1", "--vary", "keep-checkpoints=3|4"]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """Ray in this process for the in-process sweeps; then the SIGTERM and SIGINT handlers found before it.

    ``ray.init`` installs the driver's own SIGTERM handler and ``ray.shutdown`` does not put the old
    one back: left in place, a SIGTERM to pytest would end whichever test runs next, not the run.
    """
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        for sig, handler in handlers.items():
            if handler is not None:  # None: a handler not installed from Python, which Python cannot put back
                signal.signal(sig, handler)


def _manifest(out: Path) -> dict:
    return json.loads((out / "sweep.json").read_text())


def _kill_when_checkpointed(run_dir: Path, killed: list[int], timeout_s: float = 240.0) -> None:
    """SIGKILL the trial's mtrl-train process (its pid is in the run's lock file) once its first checkpoint exists."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (run_dir / "checkpoints" / "step_000000000200").is_dir() and (run_dir / ".lock").is_file():
            pid = int((run_dir / ".lock").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.05)


def test_a_killed_trial_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = _sweep_args(400, out, *TWINS)
    victim, twin = out / "trials" / "cagrad__keep_checkpoints=3__seed1", out / "trials" / "cagrad__keep_checkpoints=4__seed1"
    killed: list[int] = []
    killer = threading.Thread(target=_kill_when_checkpointed, args=(victim, killed), daemon=True)
    killer.start()
    assert sweep_main(args) == 0
    killer.join()
    assert killed, "the trial finished before it could be killed"
    trials = {t["name"]: t for t in _manifest(out)["trials"]}
    assert trials[victim.name]["status"] == trials[twin.name]["status"] == "finished"
    assert (trials[victim.name]["attempts"], trials[twin.name]["attempts"]) == (2, 1)
    assert f"--resume {victim.resolve()}" in (out / "logs" / f"{victim.name}.log").read_text()  # resumed, not restarted
    err = capsys.readouterr().err  # a status line when each attempt's process starts, not when it is queued
    assert err.count(f"{victim.name} started (attempt 1)") == err.count(f"{victim.name} started (attempt 2)") == 1
    assert err.count(f"{twin.name} started (attempt 1)") == 1

    assert json.loads((victim / "eval" / "final.json").read_text()) == json.loads((twin / "eval" / "final.json").read_text())
    assert training_records(victim) == training_records(twin)
    params_a, params_b = (load_latest(run / "checkpoints")[1]["agent"]["modules"] for run in (victim, twin))
    assert params_a.keys() == params_b.keys() and all(torch.equal(params_a[k], params_b[k]) for k in params_a)

    log_before = (out / "logs" / f"{victim.name}.log").read_text()
    assert sweep_main(args) == 0  # the same command again: everything finished, nothing runs
    assert (out / "logs" / f"{victim.name}.log").read_text() == log_before
    assert [t["status"] for t in _manifest(out)["trials"]] == ["finished", "finished"]


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_signal_stops_every_trial_with_a_checkpoint_and_leaves_no_process(tmp_path, stop_signal):
    out = tmp_path / "sweep"
    args = _sweep_args(100_000, out, "--seeds", "1", "2", "--num-cpus", "2")
    driver = subprocess.Popen([sys.executable, "-m", "experiments.sweep", *args], stderr=subprocess.PIPE, text=True)
    runs = [out / "trials" / f"cagrad__seed{seed}" for seed in (1, 2)]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not all((run / "checkpoints" / "step_000000000200").is_dir() for run in runs):
        time.sleep(0.2)
    assert all((run / "checkpoints").is_dir() for run in runs), "the trials did not start training"
    processes = descendants(driver.pid)
    trainers = [int((run / ".lock").read_text().split()[0]) for run in runs]
    assert set(trainers) <= set(processes)
    driver.send_signal(stop_signal)
    _, err = driver.communicate(timeout=240)
    assert driver.returncode == 0, err
    assert f"{stop_signal.name} received: stopping every trial at its next episode boundary" in err
    assert f"continue with: mtrl-sweep --resume {out}" in err
    assert [t["status"] for t in _manifest(out)["trials"]] == ["stopped", "stopped"]
    for run in runs:  # each trial checkpointed where it stopped, past its first checkpoint
        assert load_latest(run / "checkpoints")[1]["global_step"] > 200
    assert wait_gone(processes, timeout_s=30) == []
