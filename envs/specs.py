"""The goals and seeds of every environment: what one environment needs, as plain data.

Goals and seeds follow Meta-World v3's own gymnasium entry points (McLean et al. 2025), so that
with one environment per task a seed gives exactly the environments
`gymnasium.make_vec("Meta-World/...", seed=seed)` gives:

- "MT10" / "MT25" / "MT50": the 50 goals of every task come from `metaworld.MT10(seed=seed)`
  (resp. MT25, MT50) and every task's environment is seeded with `seed` ("Meta-World/MT10").
- a list of task names (one name is MT1): task i gets its 50 goals from
  `metaworld.MT1(name_i, seed=seed + i)` and is seeded with `seed + i`
  ("Meta-World/custom-mt-envs" and "Meta-World/MT1"; deviation: Meta-World leaves the
  environments unseeded when seed == 0, here seed 0 is a seed like any other).

Copy j > 0 of a task (envs_per_task > 1) is seeded from `SeedSequence(seed, spawn_key=(task, j))`,
so copies are independent streams over the same goal set.
"""

from __future__ import annotations

import functools
import pickle
from dataclasses import dataclass

import metaworld
import numpy as np
from gymnasium.utils import seeding
from metaworld.types import Task

from envs.config import EnvConfig
from envs.tasks import BENCHMARKS, task_names


@dataclass(frozen=True)
class EnvSpec:
    """Everything needed to build one environment, as picklable plain data (sent to workers)."""

    env_index: int
    """Position in the vector environment."""
    task_index: int
    """Position of the task in the benchmark."""
    task_name: str
    """Meta-World task name, e.g. "reach-v3"."""
    copy_index: int
    """Which of the envs_per_task copies of the task this is."""
    goals: tuple[Task, ...]
    """The goals a reset may draw from (50 for goal_mode="resample", 1 for "fixed")."""
    seed: int
    """Seed of the environment's random generators."""
    max_episode_steps: int
    """Truncate episodes after this many steps."""
    reward_function_version: str
    """Meta-World reward functions, "v2" or "v1"."""
    terminate_on_success: bool
    """End episodes at the first success (at start; evaluation toggles it)."""


def env_specs(config: EnvConfig, seed: int) -> list[EnvSpec]:
    """The specification of every environment of `config` for `seed`, ordered by task."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    seed = int(seed)
    names = task_names(config.benchmark)
    goals_per_task = benchmark_goals(config.benchmark, seed)
    specs = []
    for task_index, name in enumerate(names):
        base_seed = seed if config.benchmark in BENCHMARKS else seed + task_index
        goals = goals_per_task[name]
        if config.goal_mode == "fixed":
            goals = (goals[_first_goal_index(base_seed, len(goals))],)
        for copy_index in range(config.envs_per_task):
            specs.append(
                EnvSpec(
                    env_index=len(specs),
                    task_index=task_index,
                    task_name=name,
                    copy_index=copy_index,
                    goals=goals,
                    seed=base_seed if copy_index == 0 else _copy_seed(seed, task_index, copy_index),
                    max_episode_steps=config.max_episode_steps,
                    reward_function_version=config.reward_function_version,
                    terminate_on_success=config.terminate_on_success,
                )
            )
    return specs


def _first_goal_index(env_seed: int, num_goals: int) -> int:
    """The goal the first reset of an environment seeded with `env_seed` draws (see TaskEnv.reset):
    the fixed goal of goal_mode="fixed", so its first episode equals the resample mode's."""
    rng, _ = seeding.np_random(env_seed)
    return int(rng.choice(num_goals))


def _copy_seed(seed: int, task_index: int, copy_index: int) -> int:
    sequence = np.random.SeedSequence(seed, spawn_key=(task_index, copy_index))
    return int(sequence.generate_state(1, dtype=np.uint32)[0])


def benchmark_goals(benchmark: str, seed: int) -> dict[str, tuple[Task, ...]]:
    """The 50 goals (Meta-World `Task`s) of every task of `benchmark` for `seed`.

    Generating them resets every task 50 times (about 8 s for MT10, 40 s for MT50), so results
    are cached per process: training and evaluation environments built with one seed share them.
    """
    names = task_names(benchmark)
    if benchmark in BENCHMARKS:
        return dict(_benchmark_goals(benchmark, seed))
    return {name: _single_task_goals(name, seed + i) for i, name in enumerate(names)}


@functools.lru_cache(maxsize=8)
def _benchmark_goals(benchmark: str, seed: int) -> tuple[tuple[str, tuple[Task, ...]], ...]:
    suite = getattr(metaworld, benchmark)(seed=seed)
    return tuple(
        (name, tuple(task for task in suite.train_tasks if task.env_name == name))
        for name in BENCHMARKS[benchmark]
    )


@functools.lru_cache(maxsize=256)
def _single_task_goals(name: str, seed: int) -> tuple[Task, ...]:
    return tuple(metaworld.MT1(name, seed=seed).train_tasks)


def goal_position(goal: Task) -> np.ndarray:
    """The goal position [3] of a Meta-World task (the last 3 entries of its random vector)."""
    return np.asarray(pickle.loads(goal.data)["rand_vec"][-3:], dtype=np.float64)
