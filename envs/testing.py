"""Fault injection for tests of the worker error paths (an env_factory for make_envs).

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

FAULT_MODES = ("raise", "exit", "raise_on_build", "sleep")


@dataclass(frozen=True)
class FaultyEnvFactory:
    """Builds TaskEnvs; the environments of `task` misbehave from their `at_step`-th step on.

    modes: "raise" (ValueError in step), "exit" (os._exit(exit_code) in step, as a crash would),
    "raise_on_build" (RuntimeError in the constructor), "sleep" (every step sleeps `seconds`).
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
        return super().step(action)
