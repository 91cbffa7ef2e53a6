"""A balanced step of one network: its balancer, optimizer, learning-rate schedule and clipping as one unit.

One step is ``balanced_gradients -> clip_by_global_norm -> optimizer.apply``: the per-task gradients
of the network's shared parameters go to its balancer (:func:`mtrl.gradients.balanced_gradients`, or
only their Gramian on the Gramian path, :func:`mtrl.gramian.gramian_gradients`,
gradient balancing of the shared trunk as in Liu et al. 2021, CAGrad), each per-task head gets its
own task's gradient, the global norm of the combined direction is clipped (after balancing: the
balanced direction is what the optimizer steps on) and the optimizer steps once. The schedule
steps after the update, on the host (:meth:`mtrl.optim.NetworkOptimizer.step_schedule`).

The step is tensor operations only: nothing is read back to the host, nothing branches on a
tensor's value, the gradients are passed as tensors. The same code runs eagerly or traced into an
update compiled as one function (or replayed as a CUDA graph).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from mtrl.balancers import Balancer
from mtrl.checks import check_non_negative
from mtrl.gradients import balanced_gradients
from mtrl.gramian import gramian_gradients
from mtrl.optim import NetworkOptimizer, OptimizerConfig, clip_by_global_norm
from mtrl.schedules import ScheduleConfig


class BalancedStepResult(NamedTuple):
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
        gradient_path: str = "materialised",
    ) -> None:
        self.name, self.module, self.optimizer = name, module, optimizer
        if gradient_path not in ("materialised", "gramian"):
            raise ValueError(f"{name} gradient_path must be materialised or gramian (resolved), got {gradient_path!r}")
        self.gradient_path = gradient_path
        self.balancer = balancer.to(next(module.parameters()).device)
        self.max_grad_norm = check_non_negative(f"{name} max_grad_norm", max_grad_norm)
        self.compiled = compiled
        names = {id(param): key for key, param in {**module.shared_parameters(), **module.task_parameters()}.items()}
        if any(id(param) not in names for param in optimizer.params):
            raise ValueError(f"the {name} optimizer holds parameters that are neither shared nor per-task parameters of its module")
        self._param_names = [names[id(param)] for param in optimizer.params]  # the balanced gradients' names, in the optimizer's order

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
        gradient_path: str = "materialised",
    ) -> BalancedStep:
        """The optimizer ``optimizer`` names over ``module``, its ``schedule`` and its clipping (``optimizer.max_grad_norm``)."""
        network_optimizer = NetworkOptimizer.build(module, optimizer, schedule, total_updates)
        return cls(name, module, balancer, network_optimizer, optimizer.max_grad_norm, compiled, gradient_path)

    @property
    def takes_gramian_path(self) -> bool:
        """Whether a step forms the Gramian layer by layer (the Gramian path and a balancer that reads per-task gradients)."""
        return self.gradient_path == "gramian" and self.balancer.requires_grads

    def step(
        self, task_loss: Callable[..., Any], inputs: Sequence[Any], has_aux: bool = False, second_inputs: Sequence[Any] | None = None
    ) -> BalancedStepResult:
        """One balanced update on task-grouped ``inputs`` (``[T, B, ...]`` each), the schedule left to the caller.

        ``task_loss(forward, *input_slices)`` is one task's loss, or ``(loss, aux)`` with
        ``has_aux`` (see :func:`mtrl.gradients.balanced_gradients`). Inside a compiled update the
        per-task gradients are traced into the enclosing graph rather than compiled on their own.
        ``second_inputs``: the same inputs from an independent second batch, for a balancer that
        :attr:`~mtrl.balancers.Balancer.requires_second_batch` (:attr:`needs_second_batch`); without
        them such a balancer sees the first batch twice. With ``gradient_path`` gramian (and a
        balancer that reads per-task gradients of one batch) the balancer gets the Gramian formed
        layer by layer instead (:mod:`mtrl.gramian`).
        """
        if self.takes_gramian_path:
            result = gramian_gradients(self.module, task_loss, inputs, self.balancer, has_aux=has_aux)
        else:
            compiled = self.compiled and not torch.compiler.is_compiling()
            result = balanced_gradients(
                self.module, task_loss, inputs, self.balancer, has_aux=has_aux, compiled=compiled, second_inputs=second_inputs
            )
        grads = [result.grads[name] for name in self._param_names]
        grads = [torch.zeros_like(param) if grad is None else grad for param, grad in zip(self.optimizer.params, grads)]
        clipped, grad_norm = clip_by_global_norm(grads, self.max_grad_norm)
        self.optimizer.apply(clipped)
        return BalancedStepResult(result.losses, result.aux, grad_norm)

    @property
    def needs_second_batch(self) -> bool:
        """Whether the balancer's weights come from two independent batches (``second_inputs`` of :meth:`step`)."""
        return self.balancer.requires_grads and self.balancer.requires_second_batch

    def metrics(self) -> dict[str, Tensor]:
        """The balancer's diagnostics of the last step, tagged ``balancer/<name>/...``."""
        return self.balancer.metrics(self.name)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict() | {"balancer": self.balancer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.balancer.load_state_dict(state["balancer"])
        self.optimizer.load_state_dict({key: value for key, value in state.items() if key != "balancer"})
