"""The plain multi-task baseline: the average of the task gradients."""

from __future__ import annotations

import torch
from torch import Tensor

from mtrl.balancers.base import Balancer


class Mean(Balancer):
    """Uniform weights ``1/T``: the gradient of the mean of the task losses."""

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        return torch.full((self.num_tasks,), 1.0 / self.num_tasks, dtype=gram.dtype, device=gram.device)
