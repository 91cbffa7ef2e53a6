"""What every multi-task agent shares: its set-up checks, its action box, its checkpointable state and its update paths."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Callable, ClassVar, Literal, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from mtrl.balanced_step import BalancedStep, StepResult
from mtrl.balancers import MGDA, Balancer, CAGrad, CAGradFast, GradNorm, Mean, PCGrad
from mtrl.nn import bf16_autocast
from mtrl.optim import GraphGroup, NetworkOptimizer, OptimizerConfig
from mtrl.schedules import ScheduleConfig

UpdateGraph = Literal["auto", "off", "compiled", "cuda-graph"]
UPDATE_GRAPHS: tuple[str, ...] = ("auto", "off", "compiled", "cuda-graph")

GraphGroups = dict[str, list[GraphGroup]]
"""The optimizers' groups a compiled update steps on, by optimizer name (critic, actor, temperature)."""


class Stateful(Protocol):
    """A balanced step, an optimizer or anything else with torch's state-dict protocol."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> Any: ...


def check_balancers(balancers: Mapping[str, Balancer], networks: tuple[str, ...]) -> dict[str, Balancer]:
    """``balancers`` as a dict if it has exactly one balancer object per network in ``networks``, else a one-line ValueError."""
    if set(balancers) != set(networks):
        raise ValueError(f"balancers must be keyed by {', '.join(networks)}; got {', '.join(map(str, balancers)) or 'none'}")
    if len({id(balancer) for balancer in balancers.values()}) < len(networks):
        raise ValueError(f"the {', '.join(networks)} need separate balancer objects (each keeps its own state)")
    return {name: balancers[name] for name in networks}


def check_action_box(action_low: np.ndarray, action_high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The box as float32 ``[A]`` arrays if both are finite, of one shape, with ``low < high``, else a one-line ValueError."""
    low, high = np.asarray(action_low, dtype=np.float32), np.asarray(action_high, dtype=np.float32)
    if low.ndim != 1 or low.shape != high.shape or low.size == 0:
        raise ValueError(f"the action box needs low and high of one shape [A], got {low.shape} and {high.shape}")
    if not (np.isfinite(low).all() and np.isfinite(high).all() and (low < high).all()):
        raise ValueError(f"the action box needs finite low < high, got low={low.tolist()}, high={high.tolist()}")
    return low, high


AUTO_COMPILED_MIN_UPDATES = 50_000
"""A SAC run of at least this many updates compiles its whole update on the CPU under ``auto``.

On this project's CPU the whole compiled SAC update with CAGrad measured 0.964x (T = 10) and
0.988x (T = 50) the step-by-step one with compiled per-task gradients, but compiles about 80 s
longer (README): it pays for itself after some 5,000-10,000 updates, so from 50,000 on the
compile is at most a fifth of what it saves.
"""

AUTO_COMPILED_BALANCERS: tuple[type[Balancer], ...] = (CAGrad, CAGradFast, GradNorm, Mean, MGDA, PCGrad)
"""The balancers whose whole compiled SAC update measured at least as fast as the step-by-step one
at T = 10 (0.95-1.00x, README). Nash-MTL's measured 1.04x; FAMO's (and Mean's without statistics:
the loss-weighted path, one ordinary backward) 1.6x, so auto keeps them step by step."""


def sac_auto_update_graph(device: torch.device, total_updates: int | None, balancers: Iterable[Balancer]) -> str:
    """What ``sac.update_graph auto`` means on ``device`` for a run of ``total_updates`` updates (None: unknown).

    compiled on the CPU for a run of at least :data:`AUTO_COMPILED_MIN_UPDATES` updates when every
    balancer is one of :data:`AUTO_COMPILED_BALANCERS` and forms per-task gradients, else off. On
    CUDA it is off until the CUDA-graph path has been measured on a GPU (none was lent to this
    project yet); this is the place to choose cuda-graph there once it has.
    """
    long_run = total_updates is not None and total_updates >= AUTO_COMPILED_MIN_UPDATES
    pays = all(isinstance(balancer, AUTO_COMPILED_BALANCERS) and balancer.requires_grads for balancer in balancers)
    return "compiled" if device.type == "cpu" and long_run and pays else "off"


def resolve_update_graph(field: str, asked: str, device: torch.device, not_capable: list[str], auto: str = "off") -> str:
    """The update path ``asked`` (the config field ``field``, e.g. ``sac.update_graph``) gives on ``device``.

    One of off, compiled or cuda-graph; a one-line ValueError naming ``field`` when impossible.
    ``not_capable`` names the optimizers that are neither Adam nor AdamW (the compiled step's
    optimizers); ``auto`` is the agent's choice for ``auto`` (:func:`sac_auto_update_graph`; PPO's
    compiled minibatch update has not been measured, so its auto is off), which falls back to off
    with such an optimizer.
    """
    if asked == "auto":
        return "off" if not_capable else auto
    if asked == "cuda-graph" and device.type != "cuda":
        raise ValueError(f"{field} cuda-graph needs a CUDA device, got {device.type!r}; use compiled or off on the CPU")
    if asked != "off" and not_capable:
        raise ValueError(f"{field} {asked} needs Adam or AdamW optimizers; the {', '.join(not_capable)} optimizer is not (use off)")
    return asked


class MultiTaskAgent(nn.Module):
    """Base of the agents: the common set-up and ``training_state()`` / ``load_training_state()``.

    A subclass lists its balanced networks in :attr:`BALANCED_NETWORKS` and gets one balancer per
    network, keyed by name; it builds one :class:`~mtrl.balanced_step.BalancedStep` per network with
    :meth:`_balanced_step` (kept in :attr:`balanced_steps`) and adds any other optimizer to
    :meth:`optimizers`. Its modules (networks, targets, temperatures, normalisers) come with
    ``state_dict()``, and it owns :attr:`generator` and :attr:`num_updates`. The environments'
    action box (``action_low``, ``action_high``: ``[A]``) is kept on the device as
    :attr:`action_low` and :attr:`action_high`; it is not part of the state (a checkpoint never
    changes it). An agent whose update can run as one compiled function resolves its
    ``update_graph`` with :func:`resolve_update_graph` and :meth:`_optimizer_names_not_graph_capable`,
    and runs each balanced step through :meth:`_balanced` (eager, or tensor-only on the optimizers'
    groups).
    """

    BALANCED_NETWORKS: ClassVar[tuple[str, ...]]
    generator: torch.Generator
    num_updates: int

    def __init__(
        self,
        num_tasks: int,
        action_low: np.ndarray,
        action_high: np.ndarray,
        config: Any,
        balancers: Mapping[str, Balancer],
        device: torch.device | str,
    ) -> None:
        super().__init__()
        self._balancers = check_balancers(balancers, self.BALANCED_NETWORKS)
        low, high = check_action_box(action_low, action_high)
        self.config, self.num_tasks, self.action_dim = config, num_tasks, low.shape[0]
        self.device = torch.device(device)
        bf16_autocast(config.bf16, self.device)  # refuses bf16 off CUDA
        self.action_low = torch.as_tensor(low, device=self.device)  # [A]
        self.action_high = torch.as_tensor(high, device=self.device)  # [A]
        self.balanced_steps: dict[str, BalancedStep] = {}

    def _balanced_step(
        self, name: str, module: nn.Module, optimizer: OptimizerConfig, schedule: ScheduleConfig, total_updates: int | None
    ) -> BalancedStep:
        """The balanced step of network ``name`` with its balancer, registered in :attr:`balanced_steps`."""
        step = BalancedStep.build(name, module, self._balancers[name], optimizer, schedule, total_updates, self.config.compile_gradients)
        self.balanced_steps[name] = step
        return step

    def _optimizer_names_not_graph_capable(self) -> list[str]:
        """The parts of :meth:`optimizers` whose optimizer a compiled update cannot step (neither Adam nor AdamW)."""
        names = []
        for name, part in self.optimizers().items():
            optimizer = part.optimizer if isinstance(part, BalancedStep) else part
            if not (isinstance(optimizer, NetworkOptimizer) and optimizer.graph_capable):
                names.append(name)
        return names

    @staticmethod
    def _balanced(
        step: BalancedStep, task_loss: Callable[..., Any], inputs: tuple, groups: GraphGroups | None, has_aux: bool = False
    ) -> StepResult:
        """``step``'s eager step without ``groups``, its tensor-only step on ``groups[step.name]`` (inside a compiled update)."""
        if groups is None:
            return step.step(task_loss, inputs, has_aux=has_aux)
        return step.graph_step(task_loss, inputs, groups[step.name], has_aux=has_aux)

    def clip_action(self, action: Tensor) -> Tensor:
        """``action: [..., A]`` clipped to the action box."""
        return torch.clamp(action, self.action_low, self.action_high)

    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        """Actions ``[T, E, A]`` in the action box for task-grouped observations ``[T, E, obs_dim]``."""
        raise NotImplementedError

    def numpy_policy(self, deterministic: bool = True) -> Callable[[np.ndarray], np.ndarray]:
        """The agent as ``numpy obs [N, obs_dim] -> numpy actions [N, A]`` (environments ordered by task)."""

        def policy(obs: np.ndarray) -> np.ndarray:
            obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device).reshape(self.num_tasks, -1, obs.shape[-1])
            return self.act(obs_t, deterministic=deterministic).reshape(obs.shape[0], -1).cpu().numpy()

        return policy

    def optimizers(self) -> dict[str, Stateful]:
        """Every network's optimizing part by network name: its balanced step, or another optimizer (SAC's temperature)."""
        return dict(self.balanced_steps)

    def training_state(self) -> dict[str, Any]:
        """Everything a checkpoint needs to continue exactly.

        ``modules`` is :meth:`state_dict`; each part of :meth:`optimizers` adds its state's entries as
        ``<network>_<entry>`` (``critic_optimizer``, ``critic_schedule``, ``critic_balancer``, ...).
        """
        return {
            "modules": self.state_dict(),
            **{f"{name}_{key}": value for name, part in self.optimizers().items() for key, value in part.state_dict().items()},
            "generator": self.generator.get_state(),
            "num_updates": self.num_updates,
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["modules"])
        for name, part in self.optimizers().items():
            part.load_state_dict({key: state[f"{name}_{key}"] for key in part.state_dict()})
        self.generator.set_state(state["generator"])
        self.num_updates = int(state["num_updates"])
