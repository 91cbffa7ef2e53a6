"""Per-task reward normalisation by the range of each task's discounted returns (BRC's scheme).

BRC (Nauman, Cygan, Sferrazza, Kumar & Abbeel 2025, "Bigger, Regularized, Categorical: High-Capacity
Value Functions are Efficient Multi-Task Learners", arXiv:2505.23150; their ``jaxrl/normalizer.py``)
divides every task's rewards by a scale of that task's soft returns, so that every task's values
fit the same categorical support ``[-v_max, v_max]`` and no task dominates the shared critic by its
reward scale. For task ``t``:

- after every finished episode ``r_0 .. r_{n-1}`` of one of its environments, the discounted return
  from every step, backwards, ``G_k = r_k + gamma G_{k+1}``, with ``G_n = H * mean(r)`` when the
  episode was truncated (the mean reward continued for the effective horizon ``H = 1 / (1 - gamma)``)
  and ``G_n = 0`` when it terminated;
- ``M_t`` the largest ``|G_k|`` over every such step of every finished episode of the task so far
  (BRC keeps the running maximum and minimum and takes ``max(G_max, |G_min|)``, the same number);
- in the update, each sampled reward of task ``t`` is divided by

      d_t = (M_t - alpha_t * H * target_entropy / 2) / v_max,

  where ``alpha_t`` is the task's current temperature and ``target_entropy`` the agent's (negative:
  the term adds the scale of the entropy bonus to that of the returns, so the soft returns, not
  only the rewards' returns, stay within about ``±v_max``).

Deviations: BRC keeps one temperature, here the task's own is used (with one shared temperature it is
BRC's formula); a task with no finished episode yet has ``d_t = 1`` (BRC divides by an infinite scale
then, which zeroes the rewards; its runs never update before every task has finished one); ``d_t`` is
kept at least :data:`MIN_SCALE` so a task whose returns are all zero is not divided by zero.

The work is split in two. :class:`EpisodeReturns` runs on the host beside the training loop: it
keeps the rewards of every environment's running episode (from the host arrays the loop already
holds) and, when episodes end, gives each task's largest ``|G_k|`` over them. :class:`RewardScale` is
the agent's module: ``M_t`` and the count of finished episodes are buffers (in the agent's
``state_dict``, hence the checkpoint), merged with :meth:`RewardScale.update`, and ``forward``
normalises a sampled ``[T, B]`` reward batch on the device. Both depend only on the task's own
rewards, so one task's normalisation never depends on another's rewards.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

MIN_SCALE = 1e-6
"""Smallest divisor ``d_t`` (see the module docstring)."""


def effective_horizon(gamma: float) -> float:
    """``H = 1 / (1 - gamma)``; a ValueError for ``gamma >= 1`` (no finite horizon to scale by)."""
    if not gamma < 1.0:
        raise ValueError(f"per-task reward normalisation needs gamma < 1, got {gamma!r}")
    return 1.0 / (1.0 - gamma)


class RewardScale(nn.Module):
    """Each task's return scale ``M_t`` and the division of sampled rewards by ``d_t`` (module docstring).

    Buffers: ``max_abs_return [T]`` (``M_t``, 0 before any finished episode) and ``episodes [T]`` (finished
    episodes taken in), both float32.
    """

    max_abs_return: Tensor
    episodes: Tensor

    def __init__(self, num_tasks: int, gamma: float, target_entropy: float, v_max: float) -> None:
        super().__init__()
        if not v_max > 0:
            raise ValueError(f"per-task reward normalisation needs v_max > 0, got {v_max!r}")
        self.horizon = effective_horizon(gamma)
        self.target_entropy, self.v_max = float(target_entropy), float(v_max)
        self.register_buffer("max_abs_return", torch.zeros(num_tasks))  # [T]
        self.register_buffer("episodes", torch.zeros(num_tasks))  # [T]

    @torch.no_grad()
    def update(self, max_abs_return: Tensor, episodes: Tensor) -> None:
        """Take in finished episodes: per task the largest ``|G_k|`` over them (``[T]``) and how many there were (``[T]``)."""
        max_abs_return, episodes = max_abs_return.to(self.max_abs_return), episodes.to(self.episodes)
        finished = episodes > 0  # [T]
        self.max_abs_return.copy_(torch.where(finished, torch.maximum(self.max_abs_return, max_abs_return), self.max_abs_return))
        self.episodes.add_(episodes)

    def scale(self, alpha: Tensor) -> Tensor:
        """``d_t`` for every task ``[T]`` given the temperatures ``alpha: [T]`` (1 for a task without a finished episode)."""
        soft_scale = (self.max_abs_return - alpha * self.horizon * self.target_entropy / 2) / self.v_max  # [T]
        return torch.where(self.episodes > 0, soft_scale.clamp_min(MIN_SCALE), torch.ones_like(soft_scale))

    def forward(self, reward: Tensor, alpha: Tensor) -> Tensor:
        """``reward: [T, B]`` divided by each task's ``d_t`` (``alpha: [T]``): ``[T, B]``."""
        return reward / self.scale(alpha).unsqueeze(-1)


class EpisodeReturns:
    """The rewards of every environment's running episode, and each task's largest ``|G_k|`` as episodes end.

    ``task_of_env[i]`` is the task of environment ``i`` (``[N]``). :meth:`step` takes one vector step's
    host arrays; the rewards are kept in float64, in a ``[N, capacity]`` array that grows when an
    episode outlasts it. :meth:`state_dict` holds the running episodes (nothing at an episode
    boundary, where checkpoints are taken).
    """

    def __init__(self, task_of_env: np.ndarray, gamma: float, capacity: int = 500) -> None:
        self.task_of_env = np.asarray(task_of_env, dtype=np.int64)  # [N]
        self.num_tasks = int(self.task_of_env.max()) + 1
        self.gamma, self.horizon = float(gamma), effective_horizon(gamma)
        self.rewards = np.zeros((len(self.task_of_env), max(int(capacity), 1)))  # [N, capacity]
        self.lengths = np.zeros(len(self.task_of_env), dtype=np.int64)  # [N]

    def step(self, reward: np.ndarray, terminated: np.ndarray, truncated: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Record one step (``[N]`` each); where episodes ended, ``(max |G_k| [T], finished episodes [T])``, else None."""
        if (self.lengths >= self.rewards.shape[1]).any():
            self.rewards = np.concatenate([self.rewards, np.zeros_like(self.rewards)], axis=1)
        envs = np.arange(len(self.lengths))
        self.rewards[envs, self.lengths] = reward
        self.lengths += 1
        ended = np.asarray(terminated, dtype=bool) | np.asarray(truncated, dtype=bool)  # [N]
        if not ended.any():
            return None
        (done,) = ended.nonzero()
        largest = self._largest_abs_return(self.rewards[done], self.lengths[done], np.asarray(truncated, dtype=bool)[done])
        max_abs_return = np.zeros(self.num_tasks)
        np.maximum.at(max_abs_return, self.task_of_env[done], largest)
        episodes = np.bincount(self.task_of_env[done], minlength=self.num_tasks).astype(np.float64)
        self.rewards[done] = 0.0
        self.lengths[done] = 0
        return max_abs_return, episodes

    def _largest_abs_return(self, rewards: np.ndarray, lengths: np.ndarray, truncated: np.ndarray) -> np.ndarray:
        """``max_k |G_k|`` of each episode: ``rewards [n, L]`` (the first ``lengths[i]`` valid) -> ``[n]``."""
        # a running sum, left to right: the same number whatever the array's width (a resumed run's may differ)
        mean_reward = np.cumsum(rewards, axis=1)[np.arange(len(lengths)), lengths - 1] / lengths  # [n]
        following = np.where(truncated, self.horizon * mean_reward, 0.0)  # G_n: [n]
        largest = np.zeros(len(lengths))
        for k in reversed(range(int(lengths.max()))):
            inside = k < lengths  # [n]
            following = np.where(inside, rewards[:, k] + self.gamma * following, following)  # G_k where inside
            largest = np.where(inside, np.maximum(largest, np.abs(following)), largest)
        return largest

    def state_dict(self) -> dict[str, Any]:
        """The running episodes: their lengths ``[N]`` and rewards ``[N, max length]`` (float64 tensors)."""
        width = int(self.lengths.max())
        return {"lengths": torch.from_numpy(self.lengths.copy()), "rewards": torch.from_numpy(self.rewards[:, :width].copy())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        lengths, rewards = state["lengths"].numpy(), state["rewards"].numpy()
        if lengths.shape != self.lengths.shape:
            raise ValueError(f"episode returns of {lengths.shape[0]} environments given to a tracker of {self.lengths.shape[0]}")
        self.lengths = lengths.astype(np.int64).copy()
        self.rewards = np.zeros((len(lengths), max(self.rewards.shape[1], rewards.shape[1])))
        self.rewards[:, : rewards.shape[1]] = rewards
