"""A balanced step of one network: its balancer, optimizer, learning-rate schedule and clipping as one unit.

One step is ``zero_grad -> balanced_backward -> clip_gradients -> optimizer.step ->
schedule.step``: the per-task gradients of the network's shared parameters go to its balancer
(:func:`mtrl.gradients.balanced_backward`, gradient balancing of the shared trunk as in Liu et al.
2021, CAGrad), each per-task head gets its own task's gradient, the global norm of the combined
direction is clipped (after balancing: the balanced direction is what the optimizer steps on) and
the optimizer and its schedule step once.

Nothing in :meth:`BalancedStep.step` reads a tensor back to the host or branches on a tensor's
value: the losses, the aux values and the pre-clip gradient norm come back as device tensors.
:meth:`BalancedStep.graph_step` is the same step as tensor operations only, for a whole update
compiled as one function (or replayed as a CUDA graph): the gradients never go through ``.grad``,
the clipping is functional and the optimizer step is :func:`mtrl.optim.adam_graph_step` on the
optimizer's own state and a tensor learning rate (:meth:`NetworkOptimizer.graph_groups`, taken
before the compiled call); the schedule steps after it, on the host.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from mtrl.balancers import Balancer
from mtrl.checks import check_non_negative
from mtrl.gradients import balanced_backward, balanced_gradients
from mtrl.optim import GraphGroup, NetworkOptimizer, OptimizerConfig, clip_by_global_norm, clip_gradients
from mtrl.schedules import ScheduleConfig


class StepResult(NamedTuple):
    """What one balanced step gives back, every tensor on the network's device."""

    losses: Tensor  # [T] the detached per-task losses
    aux: Any  # the loss function's aux, stacked over tasks ([T, ...] each); None without has_aux
    grad_norm: Tensor  # [] global L2 norm of the balanced gradient before clipping


class BalancedStep:
    """The balanced update of one network (``name``: ``"critic"``, ``"actor"``), checkpointed as a whole.

    ``module`` has ``shared_parameters()`` and ``task_parameters()`` (see
    :class:`mtrl.gradients.MultiTaskModule`); ``balancer`` is moved to its device. ``state_dict()``
    holds the optimizer's, the schedule's and the balancer's state (``optimizer``, ``schedule``,
    ``balancer``); :meth:`load_state_dict` restores them and re-applies the configured peak
    learning rate (:class:`mtrl.optim.NetworkOptimizer`), so a resumed run may be given a new rate.
    """

    def __init__(
        self,
        name: str,
        module: nn.Module,
        balancer: Balancer,
        optimizer: NetworkOptimizer,
        max_grad_norm: float = 0.0,
        compiled: bool = False,
    ) -> None:
        self.name, self.module, self.optimizer = name, module, optimizer
        self.balancer = balancer.to(next(module.parameters()).device)
        self.max_grad_norm = check_non_negative(f"{name} max_grad_norm", max_grad_norm)
        self.compiled = compiled
        names = {id(param): key for key, param in {**module.shared_parameters(), **module.task_parameters()}.items()}
        # the optimizer's parameters by group, as names of the balanced gradients (None: not one of them)
        self._group_names = [[names.get(id(param)) for param in group["params"]] for group in optimizer.optimizer.param_groups]

    @classmethod
    def build(
        cls,
        name: str,
        module: nn.Module,
        balancer: Balancer,
        optimizer: OptimizerConfig,
        schedule: ScheduleConfig,
        total_updates: int | None = None,
        compiled: bool = False,
    ) -> BalancedStep:
        """The optimizer ``optimizer`` names over ``module``, its ``schedule`` and its clipping (``optimizer.max_grad_norm``)."""
        network_optimizer = NetworkOptimizer.build(module, optimizer, schedule, total_updates)
        return cls(name, module, balancer, network_optimizer, optimizer.max_grad_norm, compiled)

    def step(self, task_loss: Callable[..., Any], inputs: Sequence[Any], has_aux: bool = False) -> StepResult:
        """One balanced update on task-grouped ``inputs`` (``[T, B, ...]`` each).

        ``task_loss(forward, *input_slices)`` is one task's loss, or ``(loss, aux)`` with
        ``has_aux`` (see :func:`mtrl.gradients.balanced_backward`).
        """
        self.optimizer.zero_grad()
        out = balanced_backward(self.module, task_loss, inputs, self.balancer, has_aux=has_aux, compiled=self.compiled)
        losses, aux = out if has_aux else (out, None)
        grad_norm = clip_gradients(self.module, self.max_grad_norm)
        self.optimizer.step()
        return StepResult(losses, aux, grad_norm)  # type: ignore[arg-type]

    def graph_step(self, task_loss: Callable[..., Any], inputs: Sequence[Any], groups: list[GraphGroup], has_aux: bool = False) -> StepResult:
        """:meth:`step` as tensor operations only, on ``groups = self.optimizer.graph_groups()``.

        For a compiled whole update: the per-task gradients are traced into the enclosing graph
        (not compiled on their own), the balanced gradients go straight to the optimizer's
        :meth:`~mtrl.optim.NetworkOptimizer.graph_step`, and the caller steps the schedule
        afterwards (:meth:`~mtrl.optim.NetworkOptimizer.after_graph_step`).
        """
        if any(name is None for names in self._group_names for name in names):
            raise ValueError(f"the {self.name} optimizer holds parameters that are neither shared nor per-task parameters of its module")
        result = balanced_gradients(self.module, task_loss, inputs, self.balancer, has_aux=has_aux)
        params = [param for group in groups for param in group.params]
        flat = [result.grads[name] for names in self._group_names for name in names]
        flat = [torch.zeros_like(param) if grad is None else grad for param, grad in zip(params, flat)]
        clipped, grad_norm = clip_by_global_norm(flat, self.max_grad_norm)
        sizes = [len(names) for names in self._group_names]
        per_group = [clipped[sum(sizes[:i]) : sum(sizes[: i + 1])] for i in range(len(sizes))]
        self.optimizer.graph_step(groups, per_group)
        return StepResult(result.losses, result.aux, grad_norm)

    def metrics(self) -> dict[str, Tensor]:
        """The balancer's diagnostics of the last step, tagged ``balancer/<name>/...``."""
        return self.balancer.metrics(self.name)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict() | {"balancer": self.balancer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.balancer.load_state_dict(state["balancer"])
        self.optimizer.load_state_dict({key: value for key, value in state.items() if key != "balancer"})
