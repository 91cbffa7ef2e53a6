"""Worker processes: same results as in-process, non-blocking steps, failures become clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from envs import EnvConfig, EnvWorkerError, MultiTaskVectorEnv, make_envs
from envs.tempdirs import remove_orphaned_temp_dirs
from envs.testing import FaultyEnvFactory, alive, default_sigint, wait_gone, wait_or_dump

pytestmark = pytest.mark.slow  # every test starts worker processes or a learner

TASKS = "reach-v3,push-v3"
REPO = Path(__file__).resolve().parents[2]


def run_steps(envs: MultiTaskVectorEnv, actions: np.ndarray) -> list[np.ndarray]:
    out = [envs.reset()]
    for a in actions:
        r = envs.step(a)
        out += [r.obs, r.final_obs, r.reward, r.terminated, r.truncated, r.success]
    return out


def test_workers_give_the_in_process_results() -> None:
    config = EnvConfig(benchmark=TASKS, envs_per_task=2, max_episode_steps=4)
    actions = np.random.default_rng(0).uniform(-1, 1, (9, 4, 4))
    results: dict[int, list[np.ndarray]] = {}
    saved = None
    for workers in (0, 3, 8):  # 8 is capped at the 4 environments
        with make_envs(config.replace(num_workers=workers), seed=0) as envs:
            assert envs.num_workers == min(workers, 4) and len(envs.worker_pids) == envs.num_workers
            results[workers] = run_steps(envs, actions)
            state = envs.get_rng_state()
            results[workers].append(np.array([s["rng"]["np_random"]["state"]["state"] for s in state]))
            # the in-process run's state reaches the same environments through any worker layout
            saved = saved or state
            envs.set_rng_state(saved)
            results[workers].append(envs.reset())
    for workers in (3, 8):
        for a, b in zip(results[0], results[workers], strict=True):
            np.testing.assert_array_equal(a, b)


def test_step_async_returns_before_the_simulators_finish() -> None:
    factory = FaultyEnvFactory(task="push-v3", mode="sleep", seconds=1.0)
    with make_envs(EnvConfig(benchmark=TASKS, num_workers=2), seed=0, env_factory=factory) as envs:
        envs.reset()
        start = time.monotonic()
        envs.step_async(np.zeros((2, 4)))
        returned = time.monotonic() - start
        envs.step_wait()
        waited = time.monotonic() - start
    assert returned < 0.5 <= 0.9 <= waited


@pytest.mark.parametrize(
    ("fault", "expected", "kind"),
    [
        (
            FaultyEnvFactory(task="push-v3", mode="raise", at_step=3),
            "ValueError: injected failure at step 3",
            "raised",
        ),
        (FaultyEnvFactory(task="push-v3", mode="exit", at_step=3, exit_code=3), "died (exit code 3)", "died"),
    ],
)
def test_a_failing_worker_becomes_a_clear_error_and_leaves_no_process(
    fault: FaultyEnvFactory, expected: str, kind: str
) -> None:
    config = EnvConfig(benchmark="reach-v3,push-v3,drawer-close-v3", num_workers=2)
    envs = make_envs(config, seed=0, env_factory=fault)
    pids = envs.worker_pids
    envs.reset()
    envs.step(np.zeros((3, 4)))
    envs.step(np.zeros((3, 4)))
    start = time.monotonic()
    with pytest.raises(EnvWorkerError) as info:
        envs.step(np.zeros((3, 4)))
    assert time.monotonic() - start < 5.0
    first_line = str(info.value).splitlines()[0]
    assert "env 1 (task 'push-v3')" in first_line and expected in first_line
    assert "environment worker" in first_line
    assert (info.value.kind, info.value.task, info.value.env_index) == (kind, "push-v3", 1)
    assert envs.closed
    assert wait_gone(pids) == []
    with pytest.raises(RuntimeError, match="closed"):
        envs.reset()
    envs.close()


def test_a_worker_that_cannot_build_its_environment_fails_make_envs() -> None:
    fault = FaultyEnvFactory(task="push-v3", mode="raise_on_build")
    with pytest.raises(EnvWorkerError, match=r"env 1 \(task 'push-v3'\) raised .* during build.*injected"):
        make_envs(EnvConfig(benchmark=TASKS, num_workers=2), seed=0, env_factory=fault)


def test_a_hung_worker_times_out() -> None:
    factory = FaultyEnvFactory(task="push-v3", mode="sleep", seconds=30.0)
    envs = make_envs(EnvConfig(benchmark=TASKS, num_workers=2), seed=0, env_factory=factory, timeout_s=3.0)
    pids = envs.worker_pids
    envs.reset()
    start = time.monotonic()
    with pytest.raises(
        EnvWorkerError,
        match=r"worker \d made no progress for 3 s \(worker_timeout_s\) during 'step' while running env 1 "
        r"\(task 'push-v3'\); it was killed",
    ) as info:
        envs.step(np.zeros((2, 4)))
    assert time.monotonic() - start < 6.0
    assert info.value.kind == "timeout"
    assert wait_gone(pids) == []


def test_close_stops_every_worker() -> None:
    envs = make_envs(EnvConfig(benchmark=TASKS, num_workers=2), seed=0)
    pids = envs.worker_pids
    assert all(alive(p) for p in pids)
    envs.reset()
    envs.step_async(np.zeros((2, 4)))  # closing in the middle of a step is fine too
    envs.close()
    assert wait_gone(pids) == []


LEARNER = textwrap.dedent(
    """
    import os
    import numpy as np
    from envs import EnvConfig, make_envs
    print("main module run in", os.getpid(), flush=True)
    if __name__ == "__main__":
        envs = make_envs(EnvConfig(benchmark="reach-v3,push-v3", num_workers=2), seed=0)
        print(*envs.worker_pids, flush=True)
        envs.reset()
        while True:
            envs.step(np.zeros((2, 4)))
    """
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_or_killed_learner_leaves_no_worker(sig: signal.Signals, tmp_path: Path) -> None:
    script = tmp_path / "learner.py"
    script.write_text(LEARNER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONFAULTHANDLER": "1"}  # stacks on SIGABRT: see wait_or_dump
    learner = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
        preexec_fn=default_sigint,  # SIGINT not ignored, even in a test run started in the background
    )
    try:
        assert learner.stdout.readline() == f"main module run in {learner.pid}\n"  # type: ignore[union-attr]
        line = learner.stdout.readline()  # type: ignore[union-attr]
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2, learner.stderr.read()  # type: ignore[union-attr]
        time.sleep(0.5)
        if sig == signal.SIGINT:
            os.killpg(learner.pid, sig)  # Ctrl-C in a terminal reaches the whole process group
        else:
            learner.send_signal(sig)
        wait_or_dump(learner, 10)
        assert wait_gone(pids) == []
        remove_orphaned_temp_dirs()  # what the next pool start would do after a SIGKILL
        out, err = learner.communicate(timeout=10)
        assert "main module" not in out  # workers do not re-run the learner's script
        if sig == signal.SIGINT:
            assert "KeyboardInterrupt" in err
    finally:
        if learner.poll() is None:
            learner.kill()
