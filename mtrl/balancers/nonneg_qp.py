"""A batched, fixed-iteration interior-point solver for ``min_{x >= 0} x^T Q x / 2 + c^T x``.

UPGrad's and DualProj's projections onto the dual cone of the task gradients
(:mod:`mtrl.balancers.dual_cone`) are such problems: one ``T x T`` quadratic ``Q`` shared by a batch
of ``B`` linear terms ``c`` (``B = T`` for UPGrad, one per task gradient; ``B = 1`` for DualProj).
They are solved all at once, on the device, in a fixed number of iterations, with no host
synchronisation.

Each iteration is Mehrotra's predictor-corrector step of a primal-dual interior-point method (Nocedal
& Wright, *Numerical Optimization*, 16.6), for the conditions ``Q x + c - z = 0``, ``x * z = 0``,
``x, z > 0`` (``z`` the multipliers of ``x >= 0``):

* the affine (predictor) direction, the centring ``sigma = (mu_aff / mu)^3`` from the duality measure
  ``mu = x^T z / T`` it would reach, and the corrected direction with the second-order term
  ``dx_aff * dz_aff``; both solve ``(Q + Z/X) dx = r`` in the variable scaled by ``s = sqrt(x / z)``,
  ``(S Q S + I) y = s * r``, ``dx = s * y``, whose matrix stays well conditioned as components of
  ``x`` or ``z`` go to zero; one LU factorisation serves both solves;
* one step size per problem for ``x`` and ``z``: 99% of the way to the boundary, at most 1.

``Q`` must be positive definite (a positive semi-definite matrix plus a ridge) and the problem scaled
to be of order one; from ``x = z = 1``, :data:`NONNEG_QP_ITERATIONS` steps reach the accuracy of
float64 on the test problems, with some margin (tests/unit/test_balancers_projections.py;
docs/balancers.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtrl.balancers.iterate import iterate

#: Default iteration count (three compiled chunks of eight).
NONNEG_QP_ITERATIONS = 24
#: Fraction-to-boundary factor of the corrected step.
_TO_BOUNDARY = 0.99


def minimize_nonnegative_qp(quadratic: Tensor, linear: Tensor, iterations: int = NONNEG_QP_ITERATIONS, compiled: bool = False) -> Tensor:
    """``argmin_{x >= 0} x @ quadratic @ x / 2 + linear[b] @ x`` for every row ``b`` of ``linear: [B, T]``.

    ``quadratic: [T, T]`` is symmetric positive definite, shared by the ``B`` problems. Runs exactly
    ``iterations`` steps from ``x = 1``; returns ``x: [B, T]``, ``x > 0``, in the dtype and on the
    device of ``linear``. ``compiled`` runs the iterations through ``torch.compile``
    (:func:`mtrl.balancers.iterate.iterate`).
    """
    eye = torch.eye(quadratic.shape[0], dtype=quadratic.dtype, device=quadratic.device)
    x = torch.ones_like(linear)  # [B, T]
    z = torch.ones_like(linear)  # [B, T], multipliers of x >= 0
    x, z = iterate(_predictor_corrector, (x, z), (quadratic, linear, eye), iterations, compiled)
    return x


def _max_step(values: Tensor, steps: Tensor) -> Tensor:
    """``[B, 1]``: largest step ``<= 1`` keeping ``values + s * steps >= 0`` (``values > 0``, rows independent)."""
    return 1.0 / (-steps / values).amax(dim=-1, keepdim=True).clamp_min(1.0)


def _predictor_corrector(x: Tensor, z: Tensor, quadratic: Tensor, linear: Tensor, eye: Tensor) -> tuple[Tensor, Tensor]:
    """One Mehrotra step for every problem of the batch: ``(x, z)`` -> the same at the next iterate."""
    gradient = x @ quadratic + linear  # [B, T], Q x + c (Q symmetric)
    mu = (x * z).mean(dim=-1, keepdim=True)  # [B, 1]
    scale = (x / z).sqrt()  # [B, T]
    lu, pivots, _ = torch.linalg.lu_factor_ex(scale[:, :, None] * quadratic * scale[:, None, :] + eye)  # [B, T, T]

    def newton(rhs: Tensor) -> Tensor:
        """``dx: [B, T]`` solving ``(Q + Z/X) dx = rhs``."""
        scaled = torch.linalg.lu_solve(lu, pivots, (scale * rhs)[:, :, None])[:, :, 0]
        return scale * scaled.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)

    dx_aff = newton(-gradient)  # [B, T]
    dz_aff = -z - z / x * dx_aff  # [B, T]
    step_aff = torch.minimum(_max_step(x, dx_aff), _max_step(z, dz_aff))  # [B, 1]
    mu_aff = ((x + step_aff * dx_aff) * (z + step_aff * dz_aff)).mean(dim=-1, keepdim=True)  # [B, 1]
    sigma = (mu_aff / mu).clamp(0.0, 1.0) ** 3  # [B, 1]
    target = sigma * mu - dx_aff * dz_aff  # [B, T], x * z after the corrected step, to second order
    dx = newton(target / x - gradient)  # [B, T]
    dz = (target - z * dx) / x - z  # [B, T]
    step = (_TO_BOUNDARY * torch.minimum(_max_step(x, dx), _max_step(z, dz))).clamp_max(1.0)  # [B, 1]
    return x + step * dx, z + step * dz
