"""A fixed-iteration interior-point solver for small smooth convex problems on the probability simplex.

CAGrad's dual and MGDA's min-norm problem both read ``min f(w)`` over ``{w >= 0, sum(w) = 1}`` with
``T`` unknowns. Projected-gradient or Frank-Wolfe methods need thousands of steps to be accurate on
ill-conditioned, conflicting gradients; an interior-point method gets there in a fixed few dozen
steps, each one ``(T+1) x (T+1)`` linear solve, all on the device with no host synchronisation.

Each iteration (a primal-dual log-barrier method, Boyd & Vandenberghe, *Convex Optimization*, 11.7):

* barrier parameter from the current duality gap, ``1/t = w^T z / (10 T)``, floored at ``1e-14``
  (the objective is scaled to be of order one, so that is the final accuracy);
* primal-dual Newton step for ``grad f(w) - z + nu 1 = 0``, ``w * z = 1/t``, ``sum(w) = 1``
  (``z`` the multipliers of ``w >= 0``), solved in the variable scaled by ``sqrt(w / z)``, whose
  KKT matrix ``[[S H S + I, s], [s^T, 0]]`` stays well conditioned as components of ``w`` go to zero;
* fraction-to-boundary rule (keep 1% of the distance to ``w = 0`` and ``z = 0``), then a vectorised
  backtracking line search on the barrier objective ``f(w) - (1/t) sum(log w)``: it is evaluated at a
  fixed ladder of step sizes at once, including the zero step, and the best one is taken. Scoring the
  steps by the objective (rather than the KKT residual) keeps the iterates out of the kink of
  non-smooth-looking objectives such as CAGrad's ``sqrt(w^T K w)`` where it nearly vanishes.

The primal-dual direction handles components that must shrink by many orders of magnitude far
better than a pure primal barrier Newton step (whose fraction-to-boundary limit lets one such
component stall every other one).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

#: Objective ``[..., T] -> [...]`` and its gradient ``[..., T] -> [..., T]`` at a batch of points.
BatchFn = Callable[[Tensor], Tensor]
#: Hessian ``[T, T]`` of the objective at one point ``[T]``.
HessianFn = Callable[[Tensor], Tensor]

#: Default iteration count: 30 reach the scipy references' accuracy on every test case (MGDA: 20).
SIMPLEX_ITERATIONS = 40
#: The barrier parameter is ``_GAP_REDUCTION * T / (w^T z)``, at most ``1 / _MIN_INV_T``.
_GAP_REDUCTION = 10.0
_MIN_INV_T = 1e-14
#: Step-size ladder of the line search: ``s_max * 2**-k`` for ``k < _LADDER``, and 0.
_LADDER = 12
#: Fraction-to-boundary factor.
_TO_BOUNDARY = 0.99


def _max_step(values: Tensor, steps: Tensor) -> Tensor:
    """Largest step ``<= 1`` keeping ``values + s * steps`` at least 1% of ``values`` (both positive)."""
    return (_TO_BOUNDARY / (-steps / values).amax().clamp_min(_TO_BOUNDARY)).clamp_max(1.0)


def minimize_on_simplex(
    value: BatchFn,
    gradient: BatchFn,
    hessian: HessianFn,
    start: Tensor,
    iterations: int = SIMPLEX_ITERATIONS,
) -> Tensor:
    """Minimise a smooth convex ``f`` over the simplex from the strictly positive point ``start: [T]``.

    ``value`` and ``gradient`` evaluate ``f`` and its gradient on a batch of points, ``hessian`` its
    Hessian at one point; ``f`` should be scaled to be of order one. Runs exactly ``iterations``
    steps; returns ``w: [T]``, ``w > 0``, ``sum(w) = 1``, in the dtype and on the device of ``start``.
    """
    num = start.shape[0]
    dtype, device = start.dtype, start.device
    ladder = torch.cat(
        [2.0 ** -torch.arange(_LADDER, dtype=dtype, device=device), torch.zeros(1, dtype=dtype, device=device)]
    )  # [L + 1]
    eye = torch.eye(num, dtype=dtype, device=device)
    corner = torch.zeros((1, 1), dtype=dtype, device=device)
    w = start / start.sum()  # [T], primal
    z = torch.ones_like(w)  # [T], multipliers of w >= 0
    nu = (z - gradient(w)).mean()  # multiplier of sum(w) = 1
    for _ in range(iterations):
        inv_t = (w @ z / (_GAP_REDUCTION * num)).clamp_min(_MIN_INV_T)
        dual_residual = gradient(w) - z + nu  # [T]
        centrality = w * z - inv_t  # [T]
        scale = (w / z).sqrt()  # [T]
        scaled_hess = scale[:, None] * hessian(w) * scale[None, :] + eye  # [T, T]
        kkt = torch.cat(
            [torch.cat([scaled_hess, scale[:, None]], dim=1), torch.cat([scale[None, :], corner], dim=1)], dim=0
        )  # [T + 1, T + 1]
        rhs = torch.cat([-scale * (dual_residual + centrality / w), (1.0 - w.sum())[None]])  # [T + 1]
        solution, _ = torch.linalg.solve_ex(kkt, rhs)
        solution = torch.nan_to_num(solution, nan=0.0, posinf=0.0, neginf=0.0)
        dw = scale * solution[:num]  # [T]
        dz = -(centrality + z * dw) / w  # [T]
        sizes = _max_step(w, dw) * ladder  # [L + 1]
        candidates = w + sizes[:, None] * dw  # [L + 1, T]
        merit = value(candidates) - inv_t * candidates.log().sum(-1)  # [L + 1]
        best = torch.nan_to_num(merit, nan=float("inf")).argmin().reshape(1)  # [1], index_select: no sync
        w = candidates.index_select(0, best)[0]
        nu = nu + sizes.index_select(0, best)[0] * solution[num]
        z = z + _max_step(z, dz) * dz
    return w / w.sum()
