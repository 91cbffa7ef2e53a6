"""Fault injection for tests of the worker error paths (an env_factory for make_envs), a
simulator-free stand-in for the Meta-World environments (for tests of what drives them), and
helpers that watch processes.

It lives in the package rather than under tests/ because worker processes unpickle the factory
by reference, which needs a module every process can import.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass

import numpy as np

from envs.config import EnvConfig
from envs.specs import EnvSpec
from envs.task_env import TaskEnv
from envs.tasks import ACTION_DIM, RAW_OBS_DIM, task_names
from envs.tempdirs import pid_alive as alive
from envs.vector import MultiTaskVectorEnv

__all__ = ["FAULT_MODES", "FaultyEnvFactory", "ScriptedTaskEnv", "alive", "descendants", "make_scripted_envs", "wait_gone"]

FAULT_MODES = ("raise", "exit", "raise_on_build", "sleep", "busy", "sleep_on_build")


@dataclass(frozen=True)
class FaultyEnvFactory:
    """Builds TaskEnvs; the environments of `task` misbehave from their `at_step`-th step on.

    modes: "raise" (ValueError in step), "exit" (os._exit(exit_code) in step, as a crash would),
    "raise_on_build" (RuntimeError in the constructor), "sleep" (every step sleeps `seconds`),
    "busy" (every step spends `seconds` of CPU time, which, unlike a sleep, stops while the
    process is stopped), "sleep_on_build" (the constructor sleeps `seconds`, as a slow build would).
    """

    task: str
    mode: str
    at_step: int = 1
    exit_code: int = 3
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in FAULT_MODES:
            raise ValueError(f"mode={self.mode!r} is not one of {', '.join(FAULT_MODES)}")

    def __call__(self, spec: EnvSpec) -> TaskEnv:
        if spec.task_name != self.task:
            return TaskEnv(spec)
        if self.mode == "raise_on_build":
            raise RuntimeError(f"injected failure building {spec.task_name}")
        if self.mode == "sleep_on_build":
            time.sleep(self.seconds)
            return TaskEnv(spec)
        return _FaultyTaskEnv(spec, self)


class _FaultyTaskEnv(TaskEnv):
    def __init__(self, spec: EnvSpec, fault: FaultyEnvFactory) -> None:
        super().__init__(spec)
        self.fault = fault
        self.steps_taken = 0

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, bool]:
        self.steps_taken += 1
        if self.steps_taken >= self.fault.at_step:
            if self.fault.mode == "raise":
                raise ValueError(f"injected failure at step {self.steps_taken}")
            if self.fault.mode == "exit":
                os._exit(self.fault.exit_code)
            if self.fault.mode == "sleep":
                time.sleep(self.fault.seconds)
            if self.fault.mode == "busy":
                start = time.process_time()
                while time.process_time() - start < self.fault.seconds:
                    pass
        return super().step(action)


class ScriptedTaskEnv:
    """A TaskEnv without a simulator: a point that the actions move towards a goal near the origin.

    Observations are Meta-World's shape ([39]); the first 4 numbers are the point, the rest fixed
    noise. The reward is minus the distance to the goal, a success is being within 0.5 of it. Its
    one generator draws the start of every episode and is saved and restored as TaskEnv's are (the
    state at the start of the current episode), so runs on it resume exactly.
    """

    def __init__(self, spec: EnvSpec) -> None:
        self.spec = spec
        self.terminate_on_success = spec.terminate_on_success
        self.rng = np.random.default_rng(spec.seed)
        self.goal = np.full(ACTION_DIM, 0.1 * (spec.task_index + 1))  # [4]
        self.state = np.zeros(RAW_OBS_DIM)  # [39]
        self.episode_step = 0
        self._episode_start_rng: dict | None = None

    def reset(self) -> np.ndarray:
        self._episode_start_rng = self.rng.bit_generator.state
        self.state = self.rng.uniform(-1.0, 1.0, RAW_OBS_DIM)
        self.episode_step = 0
        return self.state.copy()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, bool]:
        self.state[:ACTION_DIM] += 0.2 * np.clip(action, -1.0, 1.0)
        self.episode_step += 1
        distance = float(np.linalg.norm(self.state[:ACTION_DIM] - self.goal))
        success = distance < 0.5
        truncated = self.episode_step >= self.spec.max_episode_steps
        return self.state.copy(), -distance, self.terminate_on_success and success, truncated, success

    def get_rng_state(self) -> dict:
        state = self._episode_start_rng if self._episode_start_rng is not None else self.rng.bit_generator.state
        return {"rng": state, "episode_step": self.episode_step}

    def set_rng_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self._episode_start_rng = None

    def close(self) -> None:
        pass


def make_scripted_envs(config: EnvConfig, seed: int) -> MultiTaskVectorEnv:
    """``make_envs(config, seed)`` with :class:`ScriptedTaskEnv` s: no Meta-World goals, no simulator."""
    specs = [
        EnvSpec(
            env_index=task_index * config.envs_per_task + copy_index,
            task_index=task_index,
            task_name=name,
            copy_index=copy_index,
            goals=(),
            seed=seed + task_index * config.envs_per_task + copy_index,
            max_episode_steps=config.max_episode_steps,
            reward_function_version=config.reward_function_version,
            terminate_on_success=config.terminate_on_success,
        )
        for task_index, name in enumerate(task_names(config.benchmark))
        for copy_index in range(config.envs_per_task)
    ]
    return MultiTaskVectorEnv(config, specs, env_factory=ScriptedTaskEnv)


def wait_gone(pids: list[int], timeout_s: float = 5.0) -> list[int]:
    """The pids still alive (alive: exists and is no zombie) after up to timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def default_sigint() -> None:
    """A ``preexec_fn`` that gives a child process the default SIGINT action.

    A shell starts background jobs with SIGINT ignored, children inherit that, and a Python started
    with SIGINT ignored never raises KeyboardInterrupt: a test that interrupts its own child needs
    the default whatever the test run was started from.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_or_dump(process: subprocess.Popen, timeout_s: float) -> int:
    """``process.wait(timeout_s)``; past it, an AssertionError with the Python stacks of ``process`` and its descendants.

    The processes must run with faulthandler on (``PYTHONFAULTHANDLER=1`` in their environment):
    SIGABRT then makes each write its threads' stacks to its stderr before it dies. Used where a
    process should end by itself soon, so that a hang says where it hung.
    """
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        below = descendants(process.pid)
        for pid in [process.pid, *below]:
            try:
                os.kill(pid, signal.SIGABRT)
            except ProcessLookupError:
                pass
        try:
            _, stderr = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
        raise AssertionError(
            f"process {process.pid} (descendants {below}) still running after {timeout_s} s; its stderr:\n{stderr}"
        ) from None


def descendants(pid: int) -> list[int]:
    """The processes below `pid` (children, their children, ...), from /proc; Linux only."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found
