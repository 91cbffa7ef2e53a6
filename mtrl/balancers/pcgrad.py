"""PCGrad: Yu, Kumar, Gupta, Levine, Hausman, Finn, "Gradient Surgery for Multi-Task Learning", NeurIPS 2020."""

from __future__ import annotations

import torch
from torch import Tensor

from mtrl.balancers.base import Balancer
from mtrl.balancers.generator import GeneratorMixin
from mtrl.balancers.options import BalancerOptions


def other_tasks_shuffled(num_tasks: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """``[T, T-1]`` on ``device``: row ``i`` lists the tasks other than ``i`` in a random order drawn
    from ``generator`` (a generator on ``device``): uniform keys, task ``i``'s own sorting last."""
    keys = torch.rand((num_tasks, num_tasks), generator=generator, device=device, dtype=torch.float64)
    keys.diagonal().fill_(2.0)  # task i itself sorts last, out of its own order
    return keys.argsort(dim=1)[:, : num_tasks - 1]


class PCGrad(GeneratorMixin, Balancer):
    """Projecting Conflicting Gradients (Yu et al., NeurIPS 2020), Algorithm 1.

    For each task ``i``, ``g_i'`` starts at ``g_i`` and visits the other tasks ``j`` in a random order
    (``j in B \\ {i}``); whenever ``<g_i', g_j> < 0`` it loses its component along ``g_j``:
    ``g_i' -= <g_i', g_j> / ||g_j||^2 g_j``. Each ``g_i'`` is carried as coefficients over the rows of
    ``G`` (row ``i`` of ``C: [T, T]``, ``g_i' = C[i] @ G``), so ``<g_i', g_j> = C[i] @ K[:, j]`` and all
    the work is on the ``T x T`` Gramian, vectorised over ``i``; each task draws its own order from the
    balancer's generator. A task with a zero gradient projects nothing.

    Deviation: the paper sums the projected gradients; we return their mean, to keep the
    mean-gradient scale. With no conflicting pair the weights are exactly ``1/T``, so the direction
    is bitwise :class:`~mtrl.balancers.mean.Mean`'s.

    No options; ``seed`` seeds the task orders.
    """

    run_inputs = ("seed",)

    def __init__(self, num_tasks: int, options: BalancerOptions = BalancerOptions(), *, seed: int = 0) -> None:
        super().__init__(num_tasks, options)
        self._init_generator(seed)

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        num = self.num_tasks
        device = gram.device
        gram64 = gram.detach().to(torch.float64)  # [T, T]
        order = other_tasks_shuffled(num, self.generator(device), device)  # [T, T-1]
        sq_norms = gram64.diagonal().clamp_min(torch.finfo(torch.float64).tiny)  # [T]
        rows = torch.arange(num, device=device)
        coef = torch.eye(num, dtype=torch.float64, device=device)  # [T, T], g_i' = coef[i] @ G
        for step in range(num - 1):
            other = order[:, step]  # [T]
            dots = (coef * gram64[:, other].T).sum(dim=1)  # [T], <g_i', g_other(i)>
            shrink = torch.where(dots < 0, dots / sq_norms[other], torch.zeros_like(dots))  # [T]
            coef = coef.index_put((rows, other), -shrink, accumulate=True)
        return (coef.sum(dim=0) / num).to(gram.dtype)
