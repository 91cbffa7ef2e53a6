"""MGDA: Sener, Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.balancers.base import SolverBalancer
from mtrl.balancers.options import SolverOptions, fixed_in_runs
from mtrl.balancers.simplex import SIMPLEX_ITERATIONS, minimize_on_simplex


def two_task_min_norm(gram: Tensor) -> Tensor:
    """Closed-form min-norm weights ``[2]`` for a ``[2, 2]`` Gramian (Sener & Koltun, Algorithm 1).

    ``gamma = clamp(<g_2 - g_1, g_2> / ||g_1 - g_2||^2, 0, 1)`` weights ``g_1``; identical (or both
    zero) gradients, where every ``gamma`` is a minimiser, get ``1/2`` each.
    """
    diff_sq = gram[0, 0] + gram[1, 1] - 2.0 * gram[0, 1]  # ||g_1 - g_2||^2
    ratio = (gram[1, 1] - gram[0, 1]) / diff_sq.clamp_min(torch.finfo(gram.dtype).tiny)
    gamma = torch.where(diff_sq > 0, ratio.clamp(0.0, 1.0), torch.full_like(ratio, 0.5))
    return torch.stack([gamma, 1.0 - gamma])


def min_norm_weights(gram: Tensor, iterations: int = SIMPLEX_ITERATIONS, compiled: bool = False) -> Tensor:
    """Weights ``[T]`` of the min-norm point of the convex hull of the gradients, ``min_{w in simplex} w^T K w``.

    Solved on ``K / mean(diag K)`` by the interior-point method of :mod:`mtrl.balancers.simplex`;
    when the minimiser is not unique (``rank K < T``) it returns one of them, which all give the same
    point ``w @ G``.
    """
    num = gram.shape[0]
    gram = gram / gram.diagonal().mean().clamp_min(torch.finfo(gram.dtype).tiny)  # [T, T]
    start = torch.full((num,), 1.0 / num, dtype=gram.dtype, device=gram.device)
    no_linear_term = torch.zeros_like(start)
    return minimize_on_simplex(gram, no_linear_term, 1.0, 0.0, start, iterations, compiled)


class MGDA(SolverBalancer):
    """Multiple-Gradient Descent Algorithm, MGDA-UB on the shared parameters (Sener & Koltun, NeurIPS 2018).

    The direction is the minimum-norm point of the convex hull of the task gradients,
    ``min_{w in simplex} ||w @ G||``; the weights sum to 1, which is the mean-gradient scale. Two tasks
    use the paper's closed form (Algorithm 1, with the exact clamp to ``[0, 1]`` instead of the
    authors' ``0.001 / 0.999``). No gradient normalisation (the paper's ``none`` option).

    Deviation: for ``T > 2`` the paper runs Frank-Wolfe with exact line search (Algorithm 2), whose
    ``O(1/k)`` convergence leaves large errors in the min-norm point of ill-conditioned, conflicting
    gradients after the authors' 250 iterations (docs/balancers.md), so we use the interior-point
    solver of :mod:`mtrl.balancers.simplex` instead (``max_iter`` steps, 40 by default), which
    agrees with a precise scipy reference (NNLS) to its accuracy (tests/unit/test_balancers.py).
    ``compile_solver`` runs its iterations through ``torch.compile`` (see CAGrad).
    """

    @dataclass(frozen=True, kw_only=True)
    class Options(SolverOptions):
        max_iter: int = fixed_in_runs(SIMPLEX_ITERATIONS)
        """Interior-point iterations of the min-norm problem (for more than two tasks)."""


    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        gram64 = gram.detach().to(torch.float64)  # [T, T]
        if self.num_tasks == 1:
            weights = torch.ones(1, dtype=torch.float64, device=gram.device)
        elif self.num_tasks == 2:
            weights = two_task_min_norm(gram64)
        else:
            weights = min_norm_weights(gram64, self.options.max_iter, self.compile_solver)
        return weights.to(gram.dtype)
