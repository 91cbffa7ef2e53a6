"""What every multi-task agent shares: its set-up checks and its checkpointable state."""

from __future__ import annotations

from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from mtrl.balancers import Balancer
from mtrl.nn import bf16_autocast
from mtrl.optim import set_peak_learning_rate


class Stateful(Protocol):
    """An optimizer, a learning-rate scheduler or anything else with torch's state-dict protocol."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> Any: ...


class MultiTaskAgent(nn.Module):
    """Base of the agents: the common set-up and ``training_state()`` / ``load_training_state()``.

    A subclass lists its optimizers and schedules in :meth:`stateful_parts`; its modules (networks,
    targets, temperatures, balancers, normalisers) come with ``state_dict()``, and it owns
    :attr:`generator` and :attr:`num_updates`.
    """

    generator: torch.Generator
    num_updates: int

    def __init__(
        self,
        num_tasks: int,
        action_dim: int,
        config: Any,
        critic_balancer: Balancer,
        actor_balancer: Balancer,
        device: torch.device | str,
    ) -> None:
        super().__init__()
        if critic_balancer is actor_balancer:
            raise ValueError("the critic and the actor need separate balancer objects (each keeps its own state)")
        self.config, self.num_tasks, self.action_dim = config, num_tasks, action_dim
        self.device = torch.device(device)
        bf16_autocast(config.bf16, self.device)  # refuses bf16 off CUDA
        self.critic_balancer, self.actor_balancer = critic_balancer, actor_balancer

    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        """Actions ``[T, E, A]`` for task-grouped observations ``[T, E, obs_dim]``."""
        raise NotImplementedError

    def numpy_policy(self, deterministic: bool = True) -> Callable[[np.ndarray], np.ndarray]:
        """The agent as ``numpy obs [N, obs_dim] -> numpy actions [N, A]`` (environments ordered by task)."""

        def policy(obs: np.ndarray) -> np.ndarray:
            obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device).reshape(self.num_tasks, -1, obs.shape[-1])
            return self.act(obs_t, deterministic=deterministic).reshape(obs.shape[0], -1).cpu().numpy()

        return policy

    def stateful_parts(self) -> dict[str, Stateful]:
        """Optimizers and schedules by name (restored after the modules, optimizers before schedules)."""
        raise NotImplementedError

    def learning_rates(self) -> list[tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR | None, float]]:
        """Every optimizer with its schedule (or None) and the peak learning rate its config asks for."""
        raise NotImplementedError

    def training_state(self) -> dict[str, Any]:
        """Everything a checkpoint needs to continue exactly."""
        return {
            "modules": self.state_dict(),
            **{name: part.state_dict() for name, part in self.stateful_parts().items()},
            "generator": self.generator.get_state(),
            "num_updates": self.num_updates,
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["modules"])
        for name, part in self.stateful_parts().items():
            part.load_state_dict(state[name])
        self.generator.set_state(state["generator"])
        self.num_updates = int(state["num_updates"])
        for optimizer, schedule, lr in self.learning_rates():  # a resumed run may have been given new rates
            set_peak_learning_rate(optimizer, lr, schedule)
