"""The plain multi-task baseline: the average of the task gradients."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.balancers.base import Balancer
from mtrl.balancers.options import BalancerOptions


class Mean(Balancer):
    """Uniform weights ``1/T``: the gradient of the mean of the task losses.

    With ``statistics`` (the default) the trainer still forms the per-task gradients, only to log the
    conflict statistics (conflicting pairs, mean cosine) of the plain baseline, at the cost of the
    per-task gradients (docs/benchmarks.md). Without it, or with a single task (no pairs to compare), ``requires_grads``
    is False: the trainer backpropagates the mean loss once, like a plain multi-task update, and only
    the weights are recorded.
    """

    @dataclass(frozen=True, kw_only=True)
    class Options(BalancerOptions):
        statistics: bool = True
        """Still form the per-task gradients, only to log the conflict statistics (their cost: docs/benchmarks.md)."""

        def __post_init__(self) -> None:
            self._set("statistics", bool(self.statistics))

    def __init__(self, num_tasks: int, options: Options = Options()) -> None:
        super().__init__(num_tasks, options)

    @property
    def requires_grads(self) -> bool:  # type: ignore[override]
        return self.options.statistics and self.num_tasks > 1

    def weights(self, gram: Tensor | None, losses: Tensor | None = None) -> Tensor:
        like = gram if gram is not None else losses
        if like is None:
            raise ValueError("Mean needs the Gramian or the per-task losses (for their dtype and device)")
        return torch.full((self.num_tasks,), 1.0 / self.num_tasks, dtype=like.dtype, device=like.device)
