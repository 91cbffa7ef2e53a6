"""Network building blocks for multi-task agents: an MLP trunk and batched per-task heads.

Every batch is task-first (``[T, B, ...]``, see docs/ARCHITECTURE.md). Per-task layers hold one
weight per task in a leading task axis (``[T, in, out]``) and apply all of them in one batched
matmul, as in the mixture-of-experts layers of Sodhani et al. 2021 ("Multi-Task Reinforcement
Learning with Context-based Representations", facebookresearch/mtrl ``moe_layer.py``). The same
modules also run on one task's slice inside ``torch.func.vmap`` over the task axis, which is how
:mod:`mtrl.gradients` gets per-task gradients of the shared trunk in one vmapped backward.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def bf16_autocast(enabled: bool, device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast for a forward pass when ``enabled`` (CUDA only), else nothing.

    Wrap only the networks' forward passes: what follows (losses, per-task gradients, the balancer's
    Gramian and solve) then runs in float32. Raises ValueError off CUDA, where it is not supported.
    """
    if not enabled:
        return contextlib.nullcontext()
    if device.type != "cuda":
        raise ValueError(f"bf16 autocast needs a CUDA device, got {device.type!r}; leave bf16 off on the CPU")
    return torch.autocast("cuda", dtype=torch.bfloat16)


class BatchedLinear(nn.Module):
    """``T`` independent affine maps applied in one batched matmul.

    ``weight: [T, in, out]`` and ``bias: [T, out]``; each task's slice is initialised like
    :class:`torch.nn.Linear` (uniform in ``±1/sqrt(in)`` for weight and bias).

    ``forward(x)`` maps ``x: [T, B, in] -> [T, B, out]``. Called inside ``torch.func.vmap`` over the
    task axis (weight seen as ``[in, out]``, bias as ``[out]``, ``x`` as ``[B, in]``) it maps
    ``[B, in] -> [B, out]`` for that task; the same expression serves both cases.
    """

    def __init__(self, num_tasks: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(num_tasks, in_features, out_features))  # [T, in, out]
        self.bias = nn.Parameter(torch.empty(num_tasks, out_features))  # [T, out]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform in ``±1/sqrt(in_features)``: the distribution ``nn.Linear`` gives each entry."""
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        # [T, B, in] @ [T, in, out] -> [T, B, out]; under vmap: [B, in] @ [in, out] -> [B, out]
        return torch.matmul(x, self.weight) + self.bias.unsqueeze(-2)

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, in_features={self.in_features}, out_features={self.out_features}"


class MLP(nn.Sequential):
    """``Linear -> activation`` for every hidden size, then an optional output ``Linear``.

    With ``out_dim=None`` the network ends with the last hidden activation (a trunk); with no
    hidden sizes and ``out_dim=None`` it is the identity. Works on any leading batch shape.
    ``layer_norm=True`` puts a :class:`torch.nn.LayerNorm` (learned scale and shift) between every
    hidden ``Linear`` and its activation, ``Linear -> LayerNorm -> activation``: the critic of Ball et
    al. 2023 ("Efficient Online Reinforcement Learning with Offline Data", ICML) and the layer of
    Nauman et al. 2024's BroNet (:mod:`mtrl.bronet`); the output ``Linear`` is never normalised.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int],
        out_dim: int | None = None,
        activation: type[nn.Module] = nn.ReLU,
        layer_norm: bool = False,
    ) -> None:
        layers: list[nn.Module] = []
        width = in_dim
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), *([nn.LayerNorm(hidden)] if layer_norm else []), activation()]
            width = hidden
        if out_dim is not None:
            layers.append(nn.Linear(width, out_dim))
        super().__init__(*layers)
        self.in_dim = in_dim
        self.out_dim = width if out_dim is None else out_dim


class MultiTaskMLP(nn.Module):
    """A shared MLP trunk and either one head per task or one shared head.

    ``forward(x)`` maps ``x: [T, B, in] -> [T, B, out]``. Every hidden layer is in the trunk and is
    shared by all tasks; the head is a :class:`BatchedLinear` (``per_task_head=True``) or an
    ``nn.Linear`` shared by all tasks. With a per-task head the module also runs on one task's
    slice under ``torch.func.vmap`` (``x: [B, in] -> [B, out]``).

    :meth:`shared_parameters` and :meth:`task_parameters` split the parameters by name for
    :func:`mtrl.gradients.per_task_gradients`: shared ones are vmapped with ``in_dims=None``,
    per-task ones (a leading ``T`` axis, slice ``t`` used only by task ``t``) with ``in_dims=0``.
    ``layer_norm`` normalises every hidden layer of the trunk (:class:`MLP`); the LayerNorm's scale
    and shift are shared parameters.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int],
        out_dim: int,
        num_tasks: int,
        per_task_head: bool = True,
        activation: type[nn.Module] = nn.ReLU,
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.per_task_head = per_task_head
        self.trunk = MLP(in_dim, hidden_dims, None, activation, layer_norm)
        width = self.trunk.out_dim
        self.head: nn.Module = BatchedLinear(num_tasks, width, out_dim) if per_task_head else nn.Linear(width, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.trunk(x))  # [T, B, in] -> [T, B, hidden] -> [T, B, out]

    def task_parameters(self) -> dict[str, nn.Parameter]:
        """Per-task parameters by name (leading task axis); empty with a shared head."""
        if not self.per_task_head:
            return {}
        return {f"head.{name}": param for name, param in self.head.named_parameters()}

    def shared_parameters(self) -> dict[str, nn.Parameter]:
        """Parameters shared by every task, by name, in ``named_parameters()`` order."""
        task_names = self.task_parameters().keys()
        return {name: param for name, param in self.named_parameters() if name not in task_names}
