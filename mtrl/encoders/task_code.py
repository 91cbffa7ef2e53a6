"""How a network is told its task: a per-task vector, from the task's one-hot or from a learned embedding.

Every batch is task-first (``[T, B, ...]``), so a network knows each row's task from its position:
a per-task parameter (leading task axis ``T``) holds what depends on the task, and
:func:`mtrl.gradients.per_task_gradients` gives each task's slice its own task's gradient (never
balanced), as it does for the per-task heads. Under ``torch.func.vmap`` over the task axis the
module sees its task's slice only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mtrl.encoders.config import TaskConditioning


class TaskEmbedding(nn.Module):
    """One learned vector per task: ``weight: [T, dim]``.

    ``forward()`` returns ``[T, dim]``, or the task's ``[dim]`` under ``vmap`` over tasks. Initialised
    from ``N(0, 1)`` like ``nn.Embedding``, or uniform in ``±bound`` when ``bound`` is given.
    """

    def __init__(self, num_tasks: int, dim: int, bound: float | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_tasks, dim))  # [T, dim]
        if bound is None:
            nn.init.normal_(self.weight)
        else:
            nn.init.uniform_(self.weight, -bound, bound)

    def forward(self) -> Tensor:
        return self.weight  # [T, dim]; under vmap [dim]


class TaskCode(nn.Module):
    """Task ``t``'s vector ``c_t`` of ``dim`` entries, which a network reads its task-specific choices from.

    ``onehot``: ``c_t = W z_t`` for the task's one-hot ``z_t``, i.e. column ``t`` of ``W``, held as the
    per-task parameter ``table.weight: [T, dim]`` (a bias-free linear layer on the one-hot, the papers'
    task encoder, with the same function for one-hot inputs; its columns are each a task's own
    parameters, so they get their task's own gradient instead of being balanced). Initialised uniform
    in ``±bound`` (default ``1/sqrt(T)``, ``nn.Linear``'s bound for ``T`` inputs).

    ``embedding``: ``c_t = A e_t`` with a learned task embedding ``e_t`` (``table.weight: [T, d]``,
    per task) and ``A`` a shared bias-free linear map ``d -> dim`` (``project``).

    ``forward()`` returns ``[T, dim]``, or ``[dim]`` under ``vmap`` over tasks.
    """

    def __init__(
        self, num_tasks: int, dim: int, conditioning: TaskConditioning, embedding_dim: int, bound: float | None = None
    ) -> None:
        super().__init__()
        if conditioning == "onehot":
            self.table = TaskEmbedding(num_tasks, dim, 1.0 / math.sqrt(num_tasks) if bound is None else bound)
            self.project: nn.Module = nn.Identity()
        else:
            self.table = TaskEmbedding(num_tasks, embedding_dim)
            self.project = nn.Linear(embedding_dim, dim, bias=False)

    def forward(self) -> Tensor:
        return self.project(self.table())  # [T, dim]; under vmap [dim]

    def task_parameter_names(self) -> tuple[str, ...]:
        """Names (relative to this module) of its per-task parameters."""
        return ("table.weight",)
