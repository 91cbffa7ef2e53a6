"""On-policy rollouts: their storage, their collection and their advantages (GAE).

A rollout is time first, ``[S, T, E, ...]`` (S steps, T tasks, E environments per task): that is
the order it is written in, and GAE runs backwards over the first axis. :class:`RolloutBuffer`
holds one rollout in preallocated tensors on the learner's device; :class:`RolloutCollector`
fills it from a policy one vector step at a time and owns what a step needs besides the
environments' output: the sampled action and its log-probability, the value, the truncation
bootstrap and the value after the last step.

Truncation. Meta-World episodes end by their time limit. A truncated step bootstraps from the
value of the real final observation (``final_obs`` of the vector environment), a terminated one
from zero, and in both cases the advantage recursion stops at the episode end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor


def gae(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    ended: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimates and lambda-returns (Schulman et al. 2016), time first.

    Every input is ``[S, ...]`` (time first, any trailing shape such as ``[T, E]``):

    - ``rewards[t]``: reward of step ``t``;
    - ``values[t]``: ``V(s_t)``, the value of the observation the action was taken in;
    - ``next_values[t]``: ``V(s'_t)``, the value of the observation the action led to; where an
      episode ended this is the real final observation (bootstrapping through truncation), after
      the last step of the rollout the next observation of the unfinished episode;
    - ``terminated[t]``: the episode truly ended at step ``t`` (its bootstrap is zero);
    - ``ended[t]``: the episode ended at step ``t``, terminated or truncated (the recursion stops).

    ``delta_t = r_t + gamma (1 - terminated_t) V(s'_t) - V(s_t)`` and
    ``A_t = delta_t + gamma lam (1 - ended_t) A_{t+1}``, with ``A_S = 0``.

    Returns:
        ``(advantages, returns)``, each ``[S, ...]``; ``returns = advantages + values``.
    """
    not_terminated = 1.0 - terminated.to(rewards.dtype)  # [S, ...]
    continues = gamma * lam * (1.0 - ended.to(rewards.dtype))  # [S, ...]
    deltas = rewards + gamma * not_terminated * next_values - values  # [S, ...]
    advantages = torch.empty_like(deltas)
    running = torch.zeros_like(deltas[0])  # [...]
    for t in range(deltas.shape[0] - 1, -1, -1):
        running = deltas[t] + continues[t] * running
        advantages[t] = running
    return advantages, advantages + values


@dataclass(frozen=True)
class Rollout:
    """One rollout of every environment, time first: every field is ``[S, T, E, ...]``."""

    obs: Tensor  # [S, T, E, obs_dim] raw observations the actions were taken in
    action: Tensor  # [S, T, E, A] the sampled actions, before clipping to the action box
    log_prob: Tensor  # [S, T, E] log-probability of the action when it was sampled
    value: Tensor  # [S, T, E] V(obs) when the action was sampled
    reward: Tensor  # [S, T, E]
    terminated: Tensor  # [S, T, E] 1.0 where the episode truly ended
    ended: Tensor  # [S, T, E] 1.0 where the episode ended (terminated or truncated)
    next_value: Tensor  # [S, T, E] V of the real next observation (final one where an episode ended)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(S, T, E)``."""
        return tuple(self.reward.shape)  # type: ignore[return-value]


class RolloutBuffer:
    """Preallocated storage for one rollout of ``steps`` vector steps, filled one step at a time."""

    def __init__(
        self,
        steps: int,
        num_tasks: int,
        envs_per_task: int,
        obs_dim: int,
        action_dim: int,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (steps, num_tasks, envs_per_task)
        zeros = lambda *trailing: torch.zeros(*shape, *trailing, device=device)  # noqa: E731
        self.storage: dict[str, Tensor] = {
            "obs": zeros(obs_dim),  # [S, T, E, obs_dim]
            "action": zeros(action_dim),  # [S, T, E, A]
            "log_prob": zeros(),  # [S, T, E]
            "value": zeros(),  # [S, T, E]
            "reward": zeros(),  # [S, T, E]
            "terminated": zeros(),  # [S, T, E]
            "ended": zeros(),  # [S, T, E]
            "final_value": zeros(),  # [S, T, E] V(final observation), used where ended
        }
        self.steps = steps
        self.position = 0

    @property
    def full(self) -> bool:
        return self.position == self.steps

    def add(self, **step: Tensor) -> None:
        """Store one vector step: every field of :attr:`storage` as a ``[T, E, ...]`` tensor."""
        if self.full:
            raise RuntimeError(f"the rollout buffer holds {self.steps} steps already; call finish() first")
        if step.keys() != self.storage.keys():
            raise KeyError(f"add() needs exactly {sorted(self.storage)}, got {sorted(step)}")
        for name, value in step.items():
            self.storage[name][self.position].copy_(value)
        self.position += 1

    def state_dict(self) -> dict[str, Any]:
        """The steps stored so far (a checkpoint taken at an episode boundary inside a rollout)."""
        return {"position": self.position, **{name: value[: self.position].clone() for name, value in self.storage.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        position = int(state["position"])
        if not 0 <= position <= self.steps:
            raise ValueError(f"a saved rollout of {position} steps does not fit a buffer of {self.steps}")
        for name, value in self.storage.items():
            value[:position].copy_(state[name])
        self.position = position

    def finish(self, last_value: Tensor) -> Rollout:
        """The rollout, given ``V`` of the observation after its last step (``[T, E]``); empties the buffer."""
        if not self.full:
            raise RuntimeError(f"the rollout holds {self.position} of {self.steps} steps")
        s = self.storage
        following = torch.cat([s["value"][1:], last_value.unsqueeze(0)])  # [S, T, E] V(s_{t+1})
        next_value = torch.where(s["ended"].bool(), s["final_value"], following)  # [S, T, E]
        self.position = 0
        fields = {name: s[name].clone() for name in ("obs", "action", "log_prob", "value", "reward", "terminated", "ended")}
        return Rollout(**fields, next_value=next_value)


class RolloutSample(NamedTuple):
    """What a policy gives for one vector step of a rollout (task-grouped, ``[T, E, ...]``)."""

    env_action: Tensor  # [T, E, A] the action for the environments, inside their action box
    action: Tensor  # [T, E, A] the raw sample (what the log-probability is of)
    log_prob: Tensor  # [T, E]
    value: Tensor  # [T, E] V(obs)


class RolloutPolicy(Protocol):
    """A stochastic policy with a value function, as :class:`RolloutCollector` uses it."""

    def explore(self, obs: Tensor) -> RolloutSample: ...

    def value(self, obs: Tensor) -> Tensor: ...


class RolloutCollector:
    """Fills a :class:`RolloutBuffer` from ``policy``: :meth:`act`, step the environments, :meth:`record`.

    After the last step, :meth:`finish` adds the value of the next observation and hands the
    rollout over. Where an episode ended, the value of its real final observation is stored for
    the truncation bootstrap; when no episode ended in a step the policy's critic is not run on
    it (the caller says so from the host, or :meth:`record` reads one flag back from the device).
    The checkpointable state is the buffer's (the steps recorded so far): between :meth:`record`
    and the next :meth:`act` nothing else is pending.
    """

    def __init__(self, policy: RolloutPolicy, buffer: RolloutBuffer) -> None:
        self.policy, self.buffer = policy, buffer
        self._pending: tuple[Tensor, RolloutSample] | None = None

    @property
    def full(self) -> bool:
        return self.buffer.full

    def act(self, obs: Tensor) -> Tensor:
        """The actions ``[T, E, A]`` (in the action box) to step the environments with, for ``obs: [T, E, obs_dim]``."""
        if self._pending is not None:
            raise RuntimeError("act() twice without record(): every sampled step must be recorded")
        sample = self.policy.explore(obs)
        self._pending = (obs, sample)
        return sample.env_action

    def record(
        self, reward: Tensor, terminated: Tensor, truncated: Tensor, final_obs: Tensor, any_ended: bool | None = None
    ) -> None:
        """Store the step :meth:`act` sampled: ``reward``, ``terminated``, ``truncated`` ``[T, E]``, ``final_obs [T, E, obs_dim]``.

        ``terminated`` and ``truncated`` are 0/1 floats; ``final_obs`` is the observation each
        action really led to (the last one of an episode that ended). ``any_ended`` says whether
        any episode ended in this step, for a caller that knows it on the host (the training loop
        has the environments' flags there); None reads it from the device.
        """
        if self._pending is None:
            raise RuntimeError("record() without act(): there is no sampled step to store")
        (obs, sample), self._pending = self._pending, None
        ended = torch.maximum(terminated, truncated)  # [T, E]
        if any_ended is None:
            any_ended = bool(ended.any())
        final_value = self.policy.value(final_obs) if any_ended else torch.zeros_like(sample.value)  # [T, E]
        self.buffer.add(
            obs=obs,
            action=sample.action,
            log_prob=sample.log_prob,
            value=sample.value,
            reward=reward,
            terminated=terminated,
            ended=ended,
            final_value=final_value,
        )

    def finish(self, next_obs: Tensor) -> Rollout:
        """The full rollout, bootstrapped after its last step from ``V(next_obs)`` (``[T, E, obs_dim]``); empties the buffer."""
        return self.buffer.finish(self.policy.value(next_obs))

    def state_dict(self) -> dict[str, Any]:
        return self.buffer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = None
        self.buffer.load_state_dict(state)
