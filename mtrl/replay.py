"""Per-task ring buffers on the learner's device, sampled task-first as ``[T, B, ...]``.

Every vector step adds the same number of transitions to every task (``E`` environments per
task), so all T rings advance in lockstep and their write position and fill level are plain
Python ints: adding and sampling never read a tensor back to the host.

``done`` is Meta-World's ``terminated`` only: episodes that end by the time limit (truncation)
are bootstrapped through, and the stored ``next_obs`` is the real final observation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.checks import check_positive_int


@dataclass(frozen=True)
class TransitionBatch:
    """A task-grouped batch of transitions: every field has the task axis first."""

    obs: Tensor  # [T, B, obs_dim]
    action: Tensor  # [T, B, action_dim]
    reward: Tensor  # [T, B]
    next_obs: Tensor  # [T, B, obs_dim]
    done: Tensor  # [T, B], 1.0 where the episode terminated (not truncated)


_FIELDS = ("obs", "action", "reward", "next_obs", "done")


class MultiTaskReplay:
    """Ring buffers of ``capacity`` transitions per task, stored as ``[T, capacity, ...]`` tensors."""

    def __init__(
        self,
        num_tasks: int,
        capacity: int,
        obs_dim: int,
        action_dim: int,
        device: torch.device | str = "cpu",
    ) -> None:
        self.num_tasks = check_positive_int("num_tasks", num_tasks)
        self.capacity = check_positive_int("capacity", capacity)
        self.device = torch.device(device)
        shape = (num_tasks, capacity)
        self.storage: dict[str, Tensor] = {
            "obs": torch.zeros(*shape, obs_dim, device=self.device),  # [T, C, obs_dim]
            "action": torch.zeros(*shape, action_dim, device=self.device),  # [T, C, action_dim]
            "reward": torch.zeros(*shape, device=self.device),  # [T, C]
            "next_obs": torch.zeros(*shape, obs_dim, device=self.device),  # [T, C, obs_dim]
            "done": torch.zeros(*shape, device=self.device),  # [T, C]
        }
        self.position = 0  # next write index, the same for every task
        self.size = 0  # transitions stored per task

    def __len__(self) -> int:
        """Transitions stored per task."""
        return self.size

    def add(self, obs: Tensor, action: Tensor, reward: Tensor, next_obs: Tensor, terminated: Tensor) -> None:
        """Store one vector step: every argument is ``[T, E, ...]`` (E environments per task)."""
        per_task = obs.shape[1]
        if obs.shape[0] != self.num_tasks or per_task > self.capacity:
            raise ValueError(
                f"expected obs of shape [num_tasks={self.num_tasks}, E <= capacity={self.capacity}, ...], "
                f"got {tuple(obs.shape)}"
            )
        rows = torch.arange(self.position, self.position + per_task, device=self.device) % self.capacity  # [E]
        values = {"obs": obs, "action": action, "reward": reward, "next_obs": next_obs, "done": terminated}
        for name, value in values.items():
            self.storage[name][:, rows] = value.to(self.device, self.storage[name].dtype)
        self.position = (self.position + per_task) % self.capacity
        self.size = min(self.size + per_task, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> TransitionBatch:
        """``batch_size`` transitions per task, drawn uniformly with replacement from each task's ring."""
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        index = torch.randint(
            0, self.size, (self.num_tasks, batch_size), device=self.device, generator=generator
        )  # [T, B]
        tasks = torch.arange(self.num_tasks, device=self.device)[:, None]  # [T, 1]
        return TransitionBatch(**{name: self.storage[name][tasks, index] for name in _FIELDS})

    def state_dict(self) -> dict:
        """The stored transitions (only the filled part) and the ring position."""
        return {
            "position": self.position,
            "size": self.size,
            "capacity": self.capacity,
            "storage": {name: value[:, : self.size].clone() for name, value in self.storage.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(f"checkpoint replay capacity {state['capacity']} != configured {self.capacity}")
        self.position, self.size = int(state["position"]), int(state["size"])
        for name, value in state["storage"].items():
            self.storage[name][:, : self.size] = value.to(self.device)
