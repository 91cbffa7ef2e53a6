"""A batched, fixed-iteration interior-point solver for ``min_{x >= 0} x^T (Q + rho I) x / 2 + c^T x``.

UPGrad's and DualProj's projections onto the dual cone of the task gradients
(:mod:`mtrl.balancers.dual_cone`) are such problems: one ``T x T`` quadratic ``Q`` shared by a batch
of ``B`` linear terms ``c`` (``B = T`` for UPGrad, one per task gradient; ``B = 1`` for DualProj).
They are solved all at once, on the device, in a fixed number of iterations, with no host
synchronisation.

Each iteration is Mehrotra's predictor-corrector step of a primal-dual interior-point method (Nocedal
& Wright, *Numerical Optimization*, 16.6), for the conditions ``(Q + rho I) x + c - z = 0``,
``x * z = 0``, ``x, z > 0`` (``z`` the multipliers of ``x >= 0``):

* the affine (predictor) direction, the centring ``sigma = (mu_aff / mu)^3`` from the duality measure
  ``mu = x^T z / T`` it would reach, and the corrected direction with the second-order term
  ``dx_aff * dz_aff``; both solve ``(Q + rho I + Z/X) dx = r`` in the variable scaled by
  ``s = sqrt(x / z)``, ``(S Q S + rho S^2 + I) y = s * r``, ``dx = s * y``, whose matrix stays well
  conditioned as components of ``x`` or ``z`` go to zero; one LU factorisation serves both solves;
* one step size per problem for ``x`` and ``z``: 99% of the way to the boundary, at most 1.

Three guards keep a fixed iteration count safe on degenerate problems (those whose solution is not
unique): the ridge ``rho`` enters as its own term (``rho x`` and ``rho S^2``), so it still bounds
the iterates along the directions where ``Q`` vanishes even when it is far below the rounding of
``Q``'s entries; the centring target never falls below :data:`_MIN_MU`, so converged iterates stay
put; and a step that overflows is not taken. The problem should be scaled to be of order one; from
``x = z = 1``, :data:`NONNEG_QP_ITERATIONS` steps reach the accuracy of float64 on the test problems,
with some margin (tests/unit/test_balancers_projections.py; docs/balancers.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtrl.balancers.iterate import iterate

#: Default iteration count (three compiled chunks of eight).
NONNEG_QP_ITERATIONS = 24
#: Floor of the centring target ``sigma * mu``: once the iterates have converged (the problem is scaled
#: to order one), further steps keep them in place instead of chasing rounding errors, which on
#: degenerate problems (repeated gradients) made them drift off the solution again. Where the
#: solution is degenerate, the accuracy is about its square root.
_MIN_MU = 1e-20
#: Fraction-to-boundary factor of the corrected step.
_TO_BOUNDARY = 0.99


def minimize_nonnegative_qp(
    quadratic: Tensor, linear: Tensor, ridge: float = 0.0, iterations: int = NONNEG_QP_ITERATIONS, compiled: bool = False
) -> Tensor:
    """``argmin_{x >= 0} x @ (quadratic + ridge I) @ x / 2 + linear[b] @ x`` for every row ``b`` of ``linear: [B, T]``.

    ``quadratic: [T, T]`` is symmetric positive semi-definite, shared by the ``B`` problems; the
    ``ridge`` is kept apart from it in the arithmetic, so it still counts where it is far below the
    rounding of ``quadratic``'s entries: along the directions where ``quadratic`` vanishes it bounds
    the iterates, which would otherwise drift off (the barrier pushes them out for free). Runs
    exactly ``iterations`` steps from ``x = 1``; returns ``x: [B, T]``, ``x > 0``, in the dtype and on
    the device of ``linear``. ``compiled`` runs the iterations through ``torch.compile``
    (:func:`mtrl.balancers.iterate.iterate`).
    """
    ridge_t = torch.full((), ridge, dtype=quadratic.dtype, device=quadratic.device)  # a fill: no host-to-device copy
    x = torch.ones_like(linear)  # [B, T]
    z = torch.ones_like(linear)  # [B, T], multipliers of x >= 0
    x, z = iterate(_predictor_corrector, (x, z), (quadratic, linear, ridge_t), iterations, compiled)
    return x


def _max_step(values: Tensor, steps: Tensor) -> Tensor:
    """``[B, 1]``: largest step ``<= 1`` keeping ``values + s * steps >= 0`` (``values > 0``, rows independent)."""
    return 1.0 / (-steps / values).amax(dim=-1, keepdim=True).clamp_min(1.0)


def _predictor_corrector(x: Tensor, z: Tensor, quadratic: Tensor, linear: Tensor, ridge: Tensor) -> tuple[Tensor, Tensor]:
    """One Mehrotra step for every problem of the batch: ``(x, z)`` -> the same at the next iterate."""
    gradient = x @ quadratic + ridge * x + linear  # [B, T], (Q + ridge I) x + c (Q symmetric)
    mu = (x * z).mean(dim=-1, keepdim=True)  # [B, 1]
    scale = (x / z).sqrt()  # [B, T]
    # S (Q + ridge I + Z/X) S = S Q S + ridge S^2 + I
    diagonal = torch.diag_embed(1.0 + ridge * scale**2)  # [B, T, T]
    lu, pivots, _ = torch.linalg.lu_factor_ex(scale[:, :, None] * quadratic * scale[:, None, :] + diagonal)  # [B, T, T]

    def newton(rhs: Tensor) -> Tensor:
        """``dx: [B, T]`` solving ``(Q + ridge I + Z/X) dx = rhs``."""
        scaled = torch.linalg.lu_solve(lu, pivots, (scale * rhs)[:, :, None])[:, :, 0]
        return scale * scaled.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)

    dx_aff = newton(-gradient)  # [B, T]
    dz_aff = -z - z / x * dx_aff  # [B, T]
    step_aff = torch.minimum(_max_step(x, dx_aff), _max_step(z, dz_aff))  # [B, 1]
    mu_aff = ((x + step_aff * dx_aff) * (z + step_aff * dz_aff)).mean(dim=-1, keepdim=True)  # [B, 1]
    sigma = (mu_aff / mu).clamp(0.0, 1.0) ** 3  # [B, 1]
    target = (sigma * mu).clamp_min(_MIN_MU) - dx_aff * dz_aff  # [B, T], x * z after the corrected step, to second order
    dx = newton(target / x - gradient)  # [B, T]
    dz = (target - z * dx) / x - z  # [B, T]
    step = (_TO_BOUNDARY * torch.minimum(_max_step(x, dx), _max_step(z, dz))).clamp_max(1.0)  # [B, 1]
    new_x, new_z = x + step * dx, z + step * dz
    # a problem whose step breaks down in rounding (converged on a degenerate problem, where the
    # Newton matrix grows as z goes to 0) keeps its iterate
    finite = (new_x.isfinite() & new_z.isfinite()).all(dim=-1, keepdim=True)  # [B, 1]
    return torch.where(finite, new_x, x), torch.where(finite, new_z, z)
