"""BroNet: the wide residual network with LayerNorm of BRO and BRC, as a multi-task trunk with per-task heads.

Nauman, Ostaszewski, Jankowski, Miłoś & Cygan 2024, "Bigger, Regularized, Optimistic: scaling for
compute and sample-efficient continuous control" (NeurIPS), Figure 2 / their ``BroNet``: an input
layer ``x -> ReLU(LN(W_in x + b_in))`` to the width ``w``, then ``N`` residual blocks

    h -> h + LN_2(W_2 ReLU(LN_1(W_1 h + b_1)) + b_2),

each of two ``w x w`` linear layers, then an output layer. BRC (Nauman, Cygan, Sferrazza, Kumar &
Abbeel 2025, "Bigger, Regularized, Categorical: High-Capacity Value Functions are Efficient
Multi-Task Learners", arXiv:2505.23150) uses it
as the critic with 2 blocks, a width of 512 in its agent's defaults (4096 in its multi-task runs) and
a categorical output of 101 logits (:mod:`mtrl.categorical`).

Every linear layer of the trunk starts orthogonal with gain ``sqrt(2)`` and zero bias, as in the
authors' code (flax ``orthogonal(sqrt(2))`` kernels, zero biases); the LayerNorms start at scale 1,
shift 0. Deviation: the output layer is per task (a :class:`mtrl.nn.BatchedLinear`, one ``[w, out]``
weight per task, also orthogonal with gain ``sqrt(2)``) or shared, as mtrl's other networks, where BRC
has one output layer and tells the tasks apart by a learned task embedding in the input (here the
observation carries the one-hot task id).

The modules work on a whole ``[T, B, in]`` batch and on one task's slice ``[B, in]`` under
``torch.func.vmap`` over tasks (the LayerNorms act on the last axis only), so the per-task gradients
of :mod:`mtrl.gradients` flow through them as through :class:`mtrl.nn.MultiTaskMLP`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mtrl.checks import check_positive_int
from mtrl.nn import BatchedLinear, MultiTaskMLP

ORTHOGONAL_GAIN = math.sqrt(2.0)
"""Gain of the orthogonal initialisation of every linear layer (the BRO and BRC code's ``default_init``)."""


def _orthogonal_linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    nn.init.orthogonal_(layer.weight, ORTHOGONAL_GAIN)
    nn.init.zeros_(layer.bias)
    return layer


class BroNetBlock(nn.Module):
    """``h -> h + LN_2(W_2 ReLU(LN_1(W_1 h + b_1)) + b_2)`` at width ``w``: ``[..., w] -> [..., w]``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear1, self.norm1 = _orthogonal_linear(width, width), nn.LayerNorm(width)
        self.linear2, self.norm2 = _orthogonal_linear(width, width), nn.LayerNorm(width)

    def forward(self, h: Tensor) -> Tensor:
        residual = self.norm2(self.linear2(torch.relu(self.norm1(self.linear1(h)))))  # [..., w]
        return h + residual


class BroNet(nn.Module):
    """The trunk: ``x -> ReLU(LN(W_in x + b_in))`` then ``blocks`` :class:`BroNetBlock`: ``[..., in] -> [..., w]``."""

    def __init__(self, in_dim: int, width: int, blocks: int) -> None:
        super().__init__()
        check_positive_int("width", width)
        check_positive_int("blocks", blocks, minimum=0)
        self.in_dim, self.out_dim = in_dim, width
        self.input, self.input_norm = _orthogonal_linear(in_dim, width), nn.LayerNorm(width)
        self.blocks = nn.Sequential(*(BroNetBlock(width) for _ in range(blocks)))

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(torch.relu(self.input_norm(self.input(x))))  # [..., w]


class MultiTaskBroNet(nn.Module):
    """A :class:`BroNet` trunk shared by every task and an output layer per task (or shared): ``[T, B, in] -> [T, B, out]``.

    The output layer is a :class:`mtrl.nn.MultiTaskMLP` without hidden layers (``output``), so the
    split into :meth:`shared_parameters` and :meth:`task_parameters` is the MLP's: with per-task
    heads the head's weight and bias are per task, everything else (trunk, LayerNorms) is shared.
    """

    def __init__(self, in_dim: int, width: int, blocks: int, out_dim: int, num_tasks: int, per_task_head: bool = True) -> None:
        super().__init__()
        self.trunk = BroNet(in_dim, width, blocks)
        self.output = MultiTaskMLP(width, (), out_dim, num_tasks, per_task_head)
        head = self.output.head
        with torch.no_grad():
            if isinstance(head, BatchedLinear):
                for task_weight in head.weight:  # [w, out] each
                    nn.init.orthogonal_(task_weight, ORTHOGONAL_GAIN)
            else:
                nn.init.orthogonal_(head.weight, ORTHOGONAL_GAIN)
            nn.init.zeros_(head.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.output(self.trunk(x))  # [T, B, in] -> [T, B, w] -> [T, B, out]

    def task_parameters(self) -> dict[str, nn.Parameter]:
        """Per-task parameters by name (the output layer's, with a per-task head)."""
        return {f"output.{name}": param for name, param in self.output.task_parameters().items()}

    def shared_parameters(self) -> dict[str, nn.Parameter]:
        """Parameters shared by every task, by name, in ``named_parameters()`` order."""
        task_names = self.task_parameters().keys()
        return {name: param for name, param in self.named_parameters() if name not in task_names}
