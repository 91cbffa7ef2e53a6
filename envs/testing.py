"""Fault injection for tests of the worker error paths (an env_factory for make_envs), and
helpers that watch processes.

It lives in the package rather than under tests/ because worker processes unpickle the factory
by reference, which needs a module every process can import.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from envs.specs import EnvSpec
from envs.task_env import TaskEnv
from envs.tempdirs import pid_alive as alive

__all__ = ["FAULT_MODES", "FaultyEnvFactory", "alive", "descendants", "wait_gone"]

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


def wait_gone(pids: list[int], timeout_s: float = 5.0) -> list[int]:
    """The pids still alive (alive: exists and is no zombie) after up to timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


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
