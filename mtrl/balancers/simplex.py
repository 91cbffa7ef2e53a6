"""A fixed-iteration interior-point solver for ``min linear^T w + psi(w^T K w)`` on the probability simplex.

CAGrad's dual (``psi(q) = c sqrt(q)``) and MGDA's min-norm problem (``psi(q) = q``, no linear term)
both have this form: a linear term plus a scalar function of one quadratic form, over
``{w >= 0, sum(w) = 1}`` with ``T`` unknowns. Projected-gradient or Frank-Wolfe methods need
thousands of steps to be accurate on ill-conditioned, conflicting gradients; an interior-point
method gets there in a fixed few dozen steps, each one ``(T+1) x (T+1)`` linear solve, all on the
device with no host synchronisation.

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

Along the search direction the quadratic form is a quadratic in the step size, so the whole ladder
costs one matrix-vector product, and ``K w`` is carried from one iteration to the next. Small
``T x T`` problems are bound by per-operation overhead rather than arithmetic, so the iteration is
written in as few tensor operations as the method allows.

The primal-dual direction handles components that must shrink by many orders of magnitude far
better than a pure primal barrier Newton step (whose fraction-to-boundary limit lets one such
component stall every other one).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtrl.balancers.iterate import iterate

#: Smoothing ``delta`` of ``sqrt(q + delta)``: keeps the objective differentiable where ``q`` vanishes
#: (e.g. two exactly opposite gradients in CAGrad's dual). ``f`` is scaled to order one, so this is tiny.
ROOT_SMOOTHING = 1e-12

#: Default iteration count: every accuracy test case (CAGrad within 1e-5 of a precise scipy solve) is
#: reached by 40; at 30 the hardest CAGrad case is still 10% off.
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
    gram: Tensor,
    linear: Tensor,
    quadratic: float,
    root: float,
    start: Tensor,
    iterations: int = SIMPLEX_ITERATIONS,
    compiled: bool = False,
) -> Tensor:
    """Minimise ``f(w) = linear @ w + quadratic * q(w) + root * sqrt(q(w) + delta)``, ``q(w) = w @ gram @ w``.

    Over the simplex, from the strictly positive point ``start: [T]``. ``gram: [T, T]`` is positive
    semi-definite, ``quadratic, root >= 0`` (so ``f`` is convex), ``delta`` is :data:`ROOT_SMOOTHING`;
    ``f`` should be scaled to be of order one. Runs exactly ``iterations`` steps; returns ``w: [T]``,
    ``w > 0``, ``sum(w) = 1``, in the dtype and on the device of ``start``. ``compiled`` runs the
    iterations through ``torch.compile`` (:func:`mtrl.balancers.iterate.iterate`): the first call
    for each problem size compiles for several seconds, later ones run faster (docs/benchmarks.md).
    """
    num = start.shape[0]
    dtype, device = start.dtype, start.device
    ladder = torch.cat(
        [2.0 ** -torch.arange(_LADDER, dtype=dtype, device=device), torch.zeros(1, dtype=dtype, device=device)]
    )  # [L + 1]
    eye = torch.eye(num, dtype=dtype, device=device)
    # [2]: (quadratic, root) as a tensor (so a compiled iteration serves every value) made by fills,
    # not by a host-to-device copy, which would synchronise on CUDA
    coefficients = torch.full((2,), quadratic, dtype=dtype, device=device)
    coefficients[1] = root
    w = start / start.sum()  # [T], primal
    gram_w = gram @ w  # [T], carried along with w
    z = torch.ones_like(w)  # [T], multipliers of w >= 0
    first, _ = _outer_derivatives(w @ gram_w, coefficients)
    nu = (z - linear - 2.0 * first * gram_w).mean()  # multiplier of sum(w) = 1
    w = iterate(_iteration, (w, gram_w, z, nu), (gram, linear, coefficients, eye, ladder), iterations, compiled)[0]
    return w / w.sum()


def _outer(quad: Tensor, coefficients: Tensor) -> Tensor:
    """``quadratic * q + root * sqrt(q + delta)`` elementwise on ``quad: [...]``."""
    return coefficients[0] * quad + coefficients[1] * (quad.clamp_min(0.0) + ROOT_SMOOTHING).sqrt()


def _outer_derivatives(quad: Tensor, coefficients: Tensor) -> tuple[Tensor, Tensor]:
    """First and second derivative of :func:`_outer` at ``quad: []``."""
    inv_norm = (quad.clamp_min(0.0) + ROOT_SMOOTHING).rsqrt()
    half_root = 0.5 * coefficients[1] * inv_norm
    return coefficients[0] + half_root, -0.5 * half_root * inv_norm**2


def _iteration(
    w: Tensor, gram_w: Tensor, z: Tensor, nu: Tensor, gram: Tensor, linear: Tensor, coefficients: Tensor, eye: Tensor, ladder: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One primal-dual Newton step with line search: ``(w, K w, z, nu)`` -> the same at the next iterate."""
    num = w.shape[0]
    quad = w @ gram_w
    first, second = _outer_derivatives(quad, coefficients)
    gradient = linear + 2.0 * first * gram_w  # [T]
    hessian = 2.0 * first * gram + (4.0 * second) * torch.outer(gram_w, gram_w)  # [T, T]
    inv_t = (w @ z / (_GAP_REDUCTION * num)).clamp_min(_MIN_INV_T)
    centrality = w * z - inv_t  # [T]
    scale = (w / z).sqrt()  # [T]
    kkt = torch.cat(
        [
            torch.cat([scale[:, None] * hessian * scale + eye, scale[:, None]], dim=1),
            torch.cat([scale, torch.zeros_like(scale[:1])])[None, :],
        ]
    )  # [T + 1, T + 1]
    rhs = torch.cat([-scale * (gradient - z + nu + centrality / w), (1.0 - w.sum())[None]])  # [T + 1]
    solution = torch.linalg.solve_ex(kkt, rhs)[0].nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
    dw = scale * solution[:num]  # [T]
    dz = -(centrality + z * dw) / w  # [T]
    gram_dw = gram @ dw  # [T]
    sizes = _max_step(w, dw) * ladder  # [L + 1]
    # along the ray w + s dw: q(s) = quad + 2 s <dw, K w> + s^2 <dw, K dw>
    quad_line = quad + sizes * (2.0 * (dw @ gram_w) + sizes * (dw @ gram_dw))  # [L + 1]
    barrier = torch.addcmul(w, sizes[:, None], dw).log().sum(-1)  # [L + 1]
    merit = sizes * (linear @ dw) + _outer(quad_line, coefficients) - inv_t * barrier  # [L + 1], up to f(w)
    step = sizes.index_select(0, merit.nan_to_num(nan=float("inf")).argmin().reshape(1))[0]  # [], no sync
    return w + step * dw, gram_w + step * gram_dw, z + _max_step(z, dz) * dz, nu + step * solution[num]
