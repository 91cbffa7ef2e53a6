"""What every encoder network shares: the parameter split by task and the output layer.

A network maps ``x: [T, B, in] -> [T, B, out]`` and, inside ``torch.func.vmap`` over the task axis
(per-task parameters seen without their task axis), one task's slice ``[B, in] -> [B, out]``, with
one expression for both, as :class:`mtrl.nn.BatchedLinear` does. :meth:`MultiTaskNetwork.task_parameters`
are those with a leading task axis whose slice ``t`` only task ``t`` reads;
:meth:`MultiTaskNetwork.shared_parameters` are all the others (their per-task gradients go to the
balancer). Its output layer is :attr:`head` (``weight`` and ``bias``), which PPO's actor rescales.
"""

from __future__ import annotations

from torch import nn

from mtrl.nn import BatchedLinear


class MultiTaskNetwork(nn.Module):
    """Base of the encoder networks: subclasses name their per-task parameters in :meth:`task_parameter_names`."""

    head: nn.Module

    def task_parameter_names(self) -> tuple[str, ...]:
        """Full names of the per-task parameters (leading task axis)."""
        raise NotImplementedError

    def task_parameters(self) -> dict[str, nn.Parameter]:
        """Per-task parameters by name (leading task axis), in ``named_parameters()`` order."""
        names = set(self.task_parameter_names())
        return {name: param for name, param in self.named_parameters() if name in names}

    def shared_parameters(self) -> dict[str, nn.Parameter]:
        """Parameters shared by every task, by name, in ``named_parameters()`` order."""
        names = set(self.task_parameter_names())
        return {name: param for name, param in self.named_parameters() if name not in names}


def output_layer(num_tasks: int, width: int, out_dim: int, per_task_head: bool) -> nn.Module:
    """The last layer: one affine map per task (:class:`BatchedLinear`) or one shared ``nn.Linear``."""
    return BatchedLinear(num_tasks, width, out_dim) if per_task_head else nn.Linear(width, out_dim)


def head_parameter_names(per_task_head: bool) -> tuple[str, ...]:
    """The per-task parameters of :func:`output_layer` as the attribute ``head``."""
    return ("head.weight", "head.bias") if per_task_head else ()
