"""Success-rate evaluation with Meta-World v3's protocol (McLean et al. 2025).

As `metaworld.evaluation.evaluation`: episodes end at the first success (terminate_on_success is
turned on for the evaluation and restored afterwards), an episode counts as a success if the
success flag was set at any step, the first `episodes_per_task` episodes of every task count (with
several environments per task, split over them by `episode_quota`, so exactly that many count),
and the mean success rate is the mean of the per-task rates. Returns are those episodes' returns (up
to the first success). With the same seed and the same deterministic policy the numbers equal
Meta-World's own (tests/integration/test_envs_evaluation.py checks this).

Evaluation resets the environments it is given and leaves them mid-episode: give it environments
of its own (`make_envs(config, seed)` a second time; goals are cached, so this is cheap), never the
training environments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from envs.vector import MultiTaskVectorEnv

Policy = Callable[[np.ndarray], np.ndarray]
"""Deterministic policy: observations [N, obs_dim] float32 -> actions [N, 4]."""


@dataclass(frozen=True)
class EvalResult:
    """Success rates and returns of one evaluation."""

    success_rate: float
    """Mean over tasks of the per-task success rates."""
    per_task_success: dict[str, float]
    """Task name -> fraction of its episodes with the success flag set at some step."""
    per_task_return: dict[str, float]
    """Task name -> mean episode return (episodes end at the first success)."""
    episodes_per_task: int
    """Episodes counted for every task."""

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-serialisable dict."""
        return asdict(self)


def episode_quota(envs: MultiTaskVectorEnv, episodes_per_task: int) -> np.ndarray:
    """[N] episodes each environment contributes: a task's episodes split over its copies
    (the first copies take one more when they do not divide evenly)."""
    base, extra = divmod(episodes_per_task, envs.envs_per_task)
    return base + (envs.copy_index < extra).astype(np.int64)


def evaluate(policy: Policy, envs: MultiTaskVectorEnv, episodes_per_task: int = 50) -> EvalResult:
    """Run `policy` until every task has `episodes_per_task` finished episodes; see module doc."""
    if isinstance(episodes_per_task, bool) or not isinstance(episodes_per_task, int) or episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be an int >= 1, got {episodes_per_task!r}")
    quota = episode_quota(envs, episodes_per_task)  # [N]
    finished = np.zeros(envs.num_envs, dtype=np.int64)  # [N]
    successes = np.zeros(envs.num_tasks, dtype=np.int64)  # [T]
    returns = np.zeros(envs.num_tasks, dtype=np.float64)  # [T]
    previous = envs.terminate_on_success
    envs.set_terminate_on_success(True)
    try:
        obs = envs.reset()
        while (finished < quota).any():
            result = envs.step(np.asarray(policy(obs)))
            counted = result.done & (finished < quota)  # [N]
            np.add.at(successes, envs.task_index[counted], result.episode_success[counted])
            np.add.at(returns, envs.task_index[counted], result.episode_return[counted])
            finished += result.done
            obs = result.obs
    finally:
        if not envs.closed:
            envs.set_terminate_on_success(previous)
    rates = successes / episodes_per_task  # [T]
    return EvalResult(
        success_rate=float(rates.mean()),
        per_task_success={name: float(rate) for name, rate in zip(envs.task_names, rates, strict=True)},
        per_task_return={
            name: float(r / episodes_per_task) for name, r in zip(envs.task_names, returns, strict=True)
        },
        episodes_per_task=episodes_per_task,
    )
