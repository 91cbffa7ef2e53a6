"""What every multi-task agent shares: its set-up checks, its action box, its checkpointable state and its update paths."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, ClassVar, Literal, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from mtrl.balanced_step import BalancedStep
from mtrl.balancers import Balancer
from mtrl.compile import compile_static
from mtrl.gramian import resolve_gradient_path
from mtrl.nn import bf16_autocast
from mtrl.optim import NetworkOptimizer, OptimizerConfig
from mtrl.schedules import ScheduleConfig

UpdateGraph = Literal["auto", "off", "compiled", "cuda-graph"]
UPDATE_GRAPHS: tuple[str, ...] = ("auto", "off", "compiled", "cuda-graph")


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


def resolve_update_graph(field: str, asked: str, device: torch.device, not_capable: list[str], auto: str = "off") -> str:
    """The update path ``asked`` (the config field ``field``, e.g. ``sac.update_graph``) gives on ``device``.

    One of off, compiled or cuda-graph; a one-line ValueError naming ``field`` when impossible.
    ``not_capable`` names the optimizers that are neither Adam nor AdamW (the compiled step's
    optimizers); ``auto`` is what ``auto`` means for this run, chosen where the run is composed
    (:func:`launch.update_path.auto_update_graph`; ``off`` for an agent built on its own), and
    falls back to off with such an optimizer.
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
    changes it). An agent writes its update once, as tensor operations (its balanced steps'
    :meth:`~mtrl.balanced_step.BalancedStep.step` and other optimizers'
    :meth:`~mtrl.optim.NetworkOptimizer.apply`), resolves its ``update_graph`` with
    :func:`resolve_update_graph` and :meth:`_optimizers_not_compilable`, wraps the update
    with :meth:`_update_function` and steps the schedules after each call.
    """

    BALANCED_NETWORKS: ClassVar[tuple[str, ...]]
    #: The agent's section of the run's config (``sac``, ``ppo``): the prefix of its fields in messages.
    CONFIG_SECTION: ClassVar[str]
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
        samples_per_task: int | None = None,
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
        self.samples_per_task = samples_per_task  # of one balanced update; None: unknown (gradient_path auto then goes by memory)

    def _balanced_step(
        self, name: str, module: nn.Module, optimizer: OptimizerConfig, schedule: ScheduleConfig, total_updates: int | None
    ) -> BalancedStep:
        """The balanced step of network ``name`` with its balancer and its gradient path, registered in :attr:`balanced_steps`."""
        balancer = self._balancers[name]
        field = f"{self.CONFIG_SECTION}.gradient_path"
        path = resolve_gradient_path(field, self.config.gradient_path, module, self.num_tasks, balancer, self.samples_per_task)  # type: ignore[arg-type]
        step = BalancedStep.build(name, module, balancer, optimizer, schedule, total_updates, self.config.compile_gradients, path)
        self.balanced_steps[name] = step
        return step

    def _resolve_update_graph(self, asked: str, auto: str) -> str:
        """:func:`resolve_update_graph` for this agent's ``update_graph`` field, once its balanced steps are built.

        A balanced step on the Gramian path cannot be traced as one graph (its module hooks and
        autograd taps, :mod:`mtrl.gramian`): ``auto`` is then off and compiled or cuda-graph are refused.
        """
        field = f"{self.CONFIG_SECTION}.update_graph"
        gramian = any(step.takes_gramian_path for step in self.balanced_steps.values())
        if gramian and asked in ("compiled", "cuda-graph"):
            raise ValueError(
                f"{field} {asked} cannot trace the Gramian path ({self.CONFIG_SECTION}.gradient_path resolved to gramian); "
                f"use {field} off or auto, or {self.CONFIG_SECTION}.gradient_path materialised"
            )
        return resolve_update_graph(field, asked, self.device, self._optimizers_not_compilable(), auto="off" if gramian else auto)

    @property
    def needs_second_batch(self) -> bool:
        """Whether a balanced network's balancer takes a second, independent batch per update (SDMGrad)."""
        return any(step.needs_second_batch for step in self.balanced_steps.values())

    def _optimizers_not_compilable(self) -> list[str]:
        """The parts of :meth:`optimizers` whose optimizer a compiled update cannot step (neither Adam nor AdamW)."""
        names = []
        for name, part in self.optimizers().items():
            optimizer = part.optimizer if isinstance(part, BalancedStep) else part
            if not (isinstance(optimizer, NetworkOptimizer) and optimizer.compilable):
                names.append(name)
        return names

    def _update_function(self, update: Callable[..., dict[str, Tensor]]) -> Callable[..., dict[str, Tensor]]:
        """``update`` as :attr:`update_graph` runs it: as it is (off), compiled as one function, or replayed as CUDA graphs.

        A CUDA-graph replay overwrites its outputs at the next replay, so its metrics are cloned.
        """
        if self.update_graph == "off":
            return update
        compiled = compile_static(update, mode="reduce-overhead" if self.update_graph == "cuda-graph" else None)
        if self.update_graph == "compiled":
            return compiled

        def replayed(*args: Any) -> dict[str, Tensor]:
            return {key: value.clone() for key, value in compiled(*args).items()}

        return replayed

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
