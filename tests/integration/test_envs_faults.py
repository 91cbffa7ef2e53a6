"""Faults a long run meets: hung and killed workers, scheduler signals, killed learners' temp dirs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from envs import EnvConfig, EnvWorkerError, make_envs
from envs.buffers import BufferLayout
from envs.specs import env_specs
from envs.tasks import ACTION_DIM, RAW_OBS_DIM
from envs.tempdirs import PREFIX, owner_tag
from envs.testing import FaultyEnvFactory, alive, descendants, default_sigint, wait_gone, wait_or_dump
from envs.worker import WorkerPool, one_line

TASKS = "reach-v3,drawer-close-v3"
REPO = Path(__file__).resolve().parents[2]


def worker_of(envs: object, env_index: int) -> int:
    """The worker that owns env `env_index`."""
    blocks = envs._backend.blocks  # type: ignore[attr-defined]
    return next(w for w, block in enumerate(blocks) if any(s.env_index == env_index for s in block))


def start_learner(script: str, tmp_path: Path, limit_s: float = 60.0) -> subprocess.Popen[str]:
    """A learner process running `script`; killed after limit_s, so that no read waits forever."""
    path = tmp_path / "learner.py"
    path.write_text(textwrap.dedent(script))
    learner = subprocess.Popen(
        [sys.executable, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONFAULTHANDLER": "1"},  # stacks on SIGABRT: see wait_or_dump
        start_new_session=True,  # its own process group, as a Slurm job step
        preexec_fn=default_sigint,  # SIGINT not ignored, even in a test run started in the background
    )
    watchdog = threading.Timer(limit_s, lambda: learner.poll() is None and learner.kill())
    watchdog.daemon = True
    watchdog.start()
    return learner


def read_line(learner: subprocess.Popen[str]) -> str:
    line = learner.stdout.readline()  # type: ignore[union-attr]
    if not line:
        learner.wait(timeout=10)
        stderr = learner.stderr.read()  # type: ignore[union-attr]
        pytest.fail(f"the learner ended (rc {learner.returncode}): {stderr}")
    return line


# hung, killed and failing workers


@pytest.mark.slow
def test_a_stopped_worker_is_killed_after_worker_timeout_s() -> None:
    envs = make_envs(EnvConfig(benchmark=TASKS, num_workers=2, worker_timeout_s=2), seed=0)
    try:
        pids = envs.worker_pids
        envs.reset()
        w = worker_of(envs, 1)
        os.kill(pids[w], signal.SIGSTOP)  # a hung simulator, as the learner sees it
        start = time.monotonic()
        with pytest.raises(EnvWorkerError) as info:
            envs.step(np.zeros((2, 4)))
        assert 1.9 <= time.monotonic() - start < 4.5
    finally:
        envs.close()
    error = info.value
    assert (error.kind, error.worker, error.command) == ("timeout", w, "step")
    assert (error.env_index, error.task) == (1, "drawer-close-v3")
    assert str(error) == error.summary == (
        f"environment worker {w} made no progress for 2 s (worker_timeout_s) during 'step' "
        "while running env 1 (task 'drawer-close-v3'); it was killed"
    )
    assert envs.closed and wait_gone(pids) == []


@pytest.mark.slow
def test_the_deadline_bounds_one_environment_not_a_whole_share() -> None:
    # 3 environments of 0.8 s each: a 2.4 s step, but each environment well within 1.5 s
    factory = FaultyEnvFactory(task="reach-v3", mode="sleep", seconds=0.8)
    config = EnvConfig(benchmark="reach-v3", envs_per_task=3, num_workers=1, worker_timeout_s=1.5)
    with make_envs(config, seed=0, env_factory=factory) as envs:
        envs.reset()
        start = time.monotonic()
        envs.step(np.zeros((3, 4)))
        assert time.monotonic() - start >= 2.4


@pytest.mark.slow
def test_building_has_its_own_larger_deadline() -> None:
    factory = FaultyEnvFactory(task="reach-v3", mode="sleep_on_build", seconds=2.0)
    config = EnvConfig(benchmark="reach-v3", num_workers=1, worker_timeout_s=1)
    with make_envs(config, seed=0, env_factory=factory) as envs:  # builds in 2 s > worker_timeout_s
        envs.reset()
    hung = FaultyEnvFactory(task="reach-v3", mode="sleep_on_build", seconds=30.0)
    layout = BufferLayout(1, RAW_OBS_DIM + 1, ACTION_DIM, 1)
    start = time.monotonic()
    with pytest.raises(EnvWorkerError) as info:
        WorkerPool(env_specs(config, 0), layout, 1, hung, timeout_s=1, build_timeout_s=1)
    assert time.monotonic() - start < 5.0
    assert (info.value.kind, info.value.command, info.value.task) == ("timeout", "start", "reach-v3")
    assert "made no progress for 1 s (the build deadline) during 'start'" in str(info.value)


@pytest.mark.slow
def test_a_killed_worker_gives_a_one_line_error_naming_its_task() -> None:
    envs = make_envs(EnvConfig(benchmark=TASKS, num_workers=2), seed=0)
    pids = envs.worker_pids
    envs.reset()
    w = worker_of(envs, 1)
    os.kill(pids[w], signal.SIGKILL)  # the OOM killer, say
    with pytest.raises(EnvWorkerError) as info:
        envs.step(np.zeros((2, 4)))
    error = info.value
    assert str(error) == error.summary == (
        f"environment worker {w} died (killed by SIGKILL) during 'step' while running env 1 "
        "(task 'drawer-close-v3')"
    )
    assert (error.kind, error.exitcode) == ("died", -signal.SIGKILL)
    assert (error.task, error.tasks) == ("drawer-close-v3", ("drawer-close-v3",))
    assert wait_gone(pids) == []


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_raising_environment_gives_a_one_line_first_line_and_keeps_the_traceback(num_workers: int) -> None:
    fault = FaultyEnvFactory(task="drawer-close-v3", mode="raise", at_step=1)
    with make_envs(EnvConfig(benchmark=TASKS, num_workers=num_workers), seed=0, env_factory=fault) as envs:
        envs.reset()
        with pytest.raises(EnvWorkerError) as info:
            envs.step(np.zeros((2, 4)))
    error = info.value
    assert (error.kind, error.env_index, error.task, error.command) == ("raised", 1, "drawer-close-v3", "step")
    assert error.tasks == ("reach-v3", "drawer-close-v3")
    assert error.summary == str(error).splitlines()[0]
    assert error.summary.startswith("env 1 (task 'drawer-close-v3') raised")
    assert error.summary.endswith("during step: ValueError: injected failure at step 1")
    if num_workers:
        assert error.worker == 0 and "in environment worker 0" in error.summary
        assert "Traceback" in error.worker_traceback and "injected failure" in error.worker_traceback
        assert error.worker_traceback in str(error)  # after the first line, for an uncaught error
    else:
        assert error.worker is None and error.worker_traceback is None
        assert isinstance(error.__cause__, ValueError)


def test_one_line_collapses_a_multi_line_message() -> None:
    assert one_line("ValueError: first\n  second\tthird ") == "ValueError: first second third"
    assert one_line("x" * 500) == "x" * 297 + "..."


# signals


@pytest.mark.slow
def test_sigterm_does_not_stop_a_worker() -> None:
    with make_envs(EnvConfig(benchmark=TASKS, num_workers=2), seed=0) as envs:
        envs.reset()
        for pid in envs.worker_pids:
            os.kill(pid, signal.SIGTERM)
        time.sleep(0.3)
        for _ in range(3):
            envs.step(np.zeros((2, 4)))
        assert all(alive(pid) for pid in envs.worker_pids)


SIGTERMED_LEARNER = """
    import signal
    import numpy as np
    from envs import EnvConfig, make_envs
    stop = []
    signal.signal(signal.SIGTERM, lambda number, frame: stop.append(number))
    envs = make_envs(EnvConfig(benchmark="reach-v3,drawer-close-v3", num_workers=2), seed=0)
    print(*envs.worker_pids, flush=True)
    envs.reset()
    while not stop:
        envs.step(np.zeros((2, 4)))
    for _ in range(20):  # finish the episode, checkpoint, ...
        envs.step(np.zeros((2, 4)))
    envs.close()
    print("closed after SIGTERM", flush=True)
"""


@pytest.mark.slow
def test_sigterm_to_the_whole_job_leaves_the_learner_in_charge(tmp_path: Path) -> None:
    learner = start_learner(SIGTERMED_LEARNER, tmp_path)
    try:
        pids = [int(p) for p in read_line(learner).split()]
        time.sleep(0.3)
        os.killpg(learner.pid, signal.SIGTERM)  # what Slurm does: the learner, its forkserver, its workers
        assert read_line(learner) == "closed after SIGTERM\n"
        assert learner.wait(timeout=10) == 0, learner.stderr.read()  # type: ignore[union-attr]
        assert wait_gone(pids) == []
    finally:
        if learner.poll() is None:
            learner.kill()


STOPPED_LEARNER = """
    import numpy as np
    from envs import EnvConfig, make_envs
    from envs.testing import FaultyEnvFactory
    factory = FaultyEnvFactory(task="drawer-close-v3", mode="busy", seconds=0.2)
    config = EnvConfig(benchmark="reach-v3,drawer-close-v3", num_workers=2, worker_timeout_s=1.5)
    envs = make_envs(config, seed=0, env_factory=factory)
    print(*envs.worker_pids, flush=True)
    envs.reset()
    while True:
        envs.step(np.zeros((2, 4)))
        print("step", flush=True)
"""


@pytest.mark.slow
def test_a_stopped_job_does_not_count_its_workers_as_hung(tmp_path: Path) -> None:
    learner = start_learner(STOPPED_LEARNER, tmp_path)
    try:
        pids = [int(p) for p in read_line(learner).split()]
        read_line(learner)
        # Ctrl-Z, or a suspended Slurm job, for longer than worker_timeout_s; the workers' steps
        # spend CPU time, so they are still busy when all resume
        os.killpg(learner.pid, signal.SIGSTOP)
        time.sleep(3.0)
        os.killpg(learner.pid, signal.SIGCONT)
        for _ in range(3):
            assert read_line(learner) == "step\n"
        learner.send_signal(signal.SIGINT)
        wait_or_dump(learner, 10)
        assert wait_gone(pids) == []
    finally:
        if learner.poll() is None:
            learner.kill()


# multiprocessing's temp dir of killed learners


SLEEPING_LEARNER = """
    import multiprocessing.util, time
    from envs import EnvConfig, make_envs
    envs = make_envs(EnvConfig(benchmark="reach-v3,drawer-close-v3", num_workers=2), seed=0)
    print(multiprocessing.util.get_temp_dir(), *envs.worker_pids, flush=True)
    time.sleep(60)
"""


@pytest.mark.slow
def test_a_killed_learners_temp_dir_is_removed_by_the_next_pool(tmp_path: Path) -> None:
    base = Path(tempfile.gettempdir())
    tag = owner_tag()
    keeper = subprocess.Popen(["sleep", "60"])
    other_tag = "0" * 6 if tag != "0" * 6 else "1" * 6
    learner = start_learner(SLEEPING_LEARNER, tmp_path)
    kept = []
    try:
        temp_dir, *pids = read_line(learner).split()
        temp_dir = Path(temp_dir)
        assert temp_dir.parent == base and temp_dir.name.startswith(f"{PREFIX}{learner.pid}-{tag}-")
        assert len(str(temp_dir / "listener-12345678")) < 100  # the forkserver's socket fits AF_UNIX
        assert any(p.name.startswith("listener-") for p in temp_dir.iterdir())
        family = descendants(learner.pid)  # forkserver, resource tracker, workers
        assert {int(p) for p in pids} <= set(family)
        learner.kill()
        learner.wait(timeout=10)
        assert temp_dir.is_dir()  # SIGKILL: nobody cleaned up
        # what a pool start must leave alone: a live process's directory, another host's or
        # PID namespace's, and names that are not ours
        kept = [
            base / f"{PREFIX}{keeper.pid}-{tag}-livetest",
            base / f"{PREFIX}{learner.pid}-{other_tag}-elsewhere",
            base / f"pymp-mtrltest{learner.pid}",
        ]
        for path in kept:
            path.mkdir()
        with make_envs(EnvConfig(benchmark=TASKS, num_workers=1), seed=0) as envs:
            envs.reset()
        assert not temp_dir.exists()
        assert all(path.is_dir() for path in kept)
        assert wait_gone(family) == []
    finally:
        for path in kept:
            if path.is_dir():
                path.rmdir()
        keeper.kill()
        keeper.wait()
        if learner.poll() is None:
            learner.kill()
