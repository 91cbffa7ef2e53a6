"""Configuration of the multi-task Meta-World environments.

Defaults follow Meta-World v3 (McLean et al. 2025, "Meta-World+: An Improved, Standardized, RL
Benchmark"); the values used by the mtrl / CAGrad-era papers, which ran the original Meta-World
(Yu et al. 2019, "Meta-World: A Benchmark and Evaluation for Multi-Task and Meta Reinforcement
Learning"), are given next to each default.

| field                   | v3 default   | legacy (mtrl / CAGrad era)         |
|-------------------------|--------------|------------------------------------|
| max_episode_steps       | 500          | 150                                |
| reward_function_version | "v2"         | "v1"                               |
| goal_mode               | "resample"   | "fixed" (one goal per task)        |
| one_hot                 | True         | True                               |
| terminate_on_success    | False        | False                              |
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from envs.tasks import task_names

GOAL_MODES = ("resample", "fixed")
REWARD_FUNCTION_VERSIONS = ("v2", "v1")

MAX_EPISODE_STEPS_LIMIT = 10_000
"""Sanity bound on `max_episode_steps`; Meta-World's own horizon is 500."""

DEFAULT_WORKER_TIMEOUT_S = 30.0
"""Default of `EnvConfig.worker_timeout_s`: a wide margin over one environment's reset or step
(milliseconds), short enough that a hung simulator costs a long run seconds, not minutes."""


@dataclass(frozen=True)
class EnvConfig:
    """Which Meta-World tasks to run and how (everything that changes the environments' data)."""

    benchmark: str = "MT10"
    """"MT10", "MT25" or "MT50"; one task name such as "reach-v3" (MT1); or a comma-separated
    list of task names such as "reach-v3,push-v3" (tasks in the order given)."""

    envs_per_task: int = 1
    """Environments per task (PPO usually wants several). Environments are ordered by task:
    environment e runs task e // envs_per_task."""

    max_episode_steps: int = 500
    """Episode length; episodes end by truncation at this step. 500 in Meta-World v3, 150 in the
    mtrl / CAGrad-era protocol."""

    reward_function_version: str = "v2"
    """Meta-World reward functions: "v2" (v3 default) or "v1" (the legacy rewards)."""

    goal_mode: str = "resample"
    """"resample": a new goal drawn from the benchmark's 50 goals of the task at every reset
    (Meta-World v3). "fixed": one goal per task drawn once from those goals and kept for the
    whole run (legacy mtrl / CAGrad protocol)."""

    one_hot: bool = True
    """Append the one-hot task id (length num_tasks) to every observation."""

    terminate_on_success: bool = False
    """End an episode (terminated=True) at the first step whose success flag is set. Off for
    training in v3; evaluation turns it on for its own episodes."""

    num_workers: int = 0
    """0 steps the environments in this process (tests, debugging); N > 0 uses N worker
    processes, each stepping its share of the environments in turn (N may be smaller than the
    number of environments, and is capped at it)."""

    worker_timeout_s: float = DEFAULT_WORKER_TIMEOUT_S
    """Seconds a worker process may spend on one environment's part of a command (one reset or
    step) before it counts as hung: it is then killed and the learner gets an EnvWorkerError
    naming the environment and its task. The deadline restarts whenever the worker moves on to its
    next environment, so it does not grow with the number of environments per worker. Building
    the environments has its own, larger deadline (envs.worker.BUILD_TIMEOUT_S, or this value if
    larger). No effect with num_workers=0. Changes no data, so a resumed run may change it."""

    def __post_init__(self) -> None:
        _check_int("envs_per_task", self.envs_per_task, minimum=1)
        _check_int("max_episode_steps", self.max_episode_steps, minimum=1)
        if self.max_episode_steps > MAX_EPISODE_STEPS_LIMIT:
            raise ValueError(
                f"max_episode_steps={self.max_episode_steps} is larger than "
                f"{MAX_EPISODE_STEPS_LIMIT}; Meta-World uses 500 (v3) or 150 (legacy)"
            )
        _check_int("num_workers", self.num_workers, minimum=0)
        object.__setattr__(self, "worker_timeout_s", check_timeout("worker_timeout_s", self.worker_timeout_s))
        _check_choice("reward_function_version", self.reward_function_version, REWARD_FUNCTION_VERSIONS)
        _check_choice("goal_mode", self.goal_mode, GOAL_MODES)
        for name in ("one_hot", "terminate_on_success"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        task_names(self.benchmark)  # a clear error listing the valid names

    def replace(self, **changes: object) -> EnvConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_timeout(name: str, value: object) -> float:
    """`value` as a float number of seconds; a one-line error unless it is finite and > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={value!r} is not allowed; it must be a finite number of seconds > 0")
    return float(value)


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}")
