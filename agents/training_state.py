"""The checkpointable state every agent shares: modules, optimizers, schedules, generator, update count."""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Stateful(Protocol):
    """An optimizer, a learning-rate scheduler or anything else with torch's state-dict protocol."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> Any: ...


class TrainingStateMixin:
    """``training_state()`` / ``load_training_state()`` for an ``nn.Module`` agent.

    The agent lists its optimizers and schedules in :meth:`stateful_parts`; its modules (networks,
    targets, temperatures, balancers, normalisers) come with ``state_dict()``, and it owns
    :attr:`generator` and :attr:`num_updates`.
    """

    generator: torch.Generator
    num_updates: int

    def stateful_parts(self) -> dict[str, Stateful]:
        """Optimizers and schedules by name (restored after the modules, optimizers before schedules)."""
        raise NotImplementedError

    def training_state(self) -> dict[str, Any]:
        """Everything a checkpoint needs to continue exactly."""
        return {
            "modules": self.state_dict(),  # type: ignore[attr-defined]
            **{name: part.state_dict() for name, part in self.stateful_parts().items()},
            "generator": self.generator.get_state(),
            "num_updates": self.num_updates,
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["modules"])  # type: ignore[attr-defined]
        for name, part in self.stateful_parts().items():
            part.load_state_dict(state[name])
        self.generator.set_state(state["generator"])
        self.num_updates = int(state["num_updates"])
