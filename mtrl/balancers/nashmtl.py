"""Nash-MTL: Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya,
"Multi-Task Learning as a Bargaining Game", ICML 2022."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.balancers.base import SolverBalancer
from mtrl.balancers.iterate import iterate
from mtrl.balancers.options import SolverOptions, fixed_in_runs

NASH_ITERATIONS = 30
#: Ridge added to the cosine matrix, so a zero gradient gets a finite ``alpha = 1/sqrt(ridge)``
#: instead of an unbounded one, and (nearly) linearly dependent gradients a bounded solution.
_RIDGE = 1e-8
#: Step-size ladder of the line search: ``s_max * 2**-k`` for ``k < _LADDER``, and 0.
_LADDER = 16
#: Fraction-to-boundary factor: a step keeps at least 1% of each ``alpha_i``.
_TO_BOUNDARY = 0.99


def nash_bargaining_solution(gram: Tensor, iterations: int = NASH_ITERATIONS, compiled: bool = False) -> Tensor:
    """The positive solution ``alpha: [T]`` of ``K alpha = 1 / alpha`` for a float64 Gramian ``[T, T]``.

    It is the minimiser of the strictly convex ``f(alpha) = alpha^T K alpha / 2 - sum(log alpha)``,
    found by a fixed number of Newton steps (Hessian ``K + diag(1/alpha^2)``), solved in the scaled
    variable ``d alpha = alpha * v`` whose matrix ``A K A + I`` stays well conditioned. Each step size
    is the best of a fixed ladder below the fraction-to-boundary limit (which keeps ``alpha > 0``);
    the ladder is scored by the change of ``f`` written without cancellation (``log1p``), so the
    steps keep converging where ``f`` itself no longer changes in float64.

    The solution is scale-invariant per task (``g_i -> s g_i`` gives ``alpha_i -> alpha_i / s``), so it
    is computed on the cosine matrix ``C = D^-1/2 K D^-1/2`` (``D = diag K``; a zero gradient keeps a
    zero row) plus a ridge of ``1e-8``, and mapped back as ``alpha_i = alpha~_i / ||g_i||``: gradient
    norms spread over many orders of magnitude do not affect the conditioning. The start is
    ``1/sqrt(diag C)`` (exact for orthogonal gradients) times the scalar minimising ``f`` along it
    (exact for identical gradients). ``compiled``: the Newton steps run through ``torch.compile``
    (:func:`mtrl.balancers.iterate.iterate`).
    """
    num = gram.shape[0]
    dtype, device = gram.dtype, gram.device
    eye = torch.eye(num, dtype=dtype, device=device)
    sq_norms = gram.diagonal()  # [T]
    inv_norms = torch.where(sq_norms > 0, sq_norms.rsqrt(), torch.ones_like(sq_norms))  # [T], 1 for a zero gradient
    cosine = inv_norms[:, None] * gram * inv_norms[None, :] + _RIDGE * eye  # [T, T]
    alpha = cosine.diagonal().rsqrt()  # [T]
    alpha = alpha * (num / (alpha @ cosine @ alpha)).sqrt()
    ladder = torch.cat(
        [2.0 ** -torch.arange(_LADDER, dtype=dtype, device=device), torch.zeros(1, dtype=dtype, device=device)]
    )  # [L + 1]
    (alpha,) = iterate(_newton_step, (alpha,), (cosine, eye, ladder), iterations, compiled)
    return alpha * inv_norms


def _newton_step(alpha: Tensor, cosine: Tensor, eye: Tensor, ladder: Tensor) -> tuple[Tensor]:
    """One damped Newton step on ``f(alpha)`` (see :func:`nash_bargaining_solution`)."""
    cos_alpha = cosine @ alpha  # [T]
    scaled_hess = alpha[:, None] * cosine * alpha[None, :] + eye  # [T, T], A (C + A^-2) A
    step, _ = torch.linalg.solve_ex(scaled_hess, 1.0 - alpha * cos_alpha)  # [T], d alpha = alpha * step
    step = torch.nan_to_num(step, nan=0.0, posinf=0.0, neginf=0.0)
    sizes = (_TO_BOUNDARY / (-step).amax().clamp_min(_TO_BOUNDARY)).clamp_max(1.0) * ladder  # [L + 1]
    move = alpha * step  # [T]
    change = (  # f(alpha + s * move) - f(alpha) for each step size s, without cancellation
        sizes * (cos_alpha @ move)
        + 0.5 * sizes**2 * (move @ cosine @ move)
        - torch.log1p(sizes[:, None] * step[None, :]).sum(-1)
    )  # [L + 1]
    best = torch.nan_to_num(change, nan=float("inf")).argmin().reshape(1)  # [1], index_select: no sync
    return (alpha * (1.0 + sizes.index_select(0, best)[0] * step),)


class NashMTL(SolverBalancer):
    """Nash-MTL (Navon et al., ICML 2022): the Nash bargaining solution of the tasks.

    The weights ``alpha > 0`` solve ``K alpha = 1/alpha`` (each task's directional derivative along
    ``d = alpha @ G`` is ``1/alpha_i``), computed by :func:`nash_bargaining_solution`: a fixed number
    (``max_iter``) of Newton steps with a line search on the device, on the Gramian divided by its
    mean diagonal.

    Deviations from the authors' code:

    * they solve with cvxpy (ECOS) on the CPU, a sequential convex procedure of up to 20
      linearisations warm-started from the previous step's ``alpha``, optionally only every few
      steps; we solve the stationarity condition to high accuracy on the device at every call;
    * scale: their direction is ``alpha @ G`` for ``K`` divided by its Frobenius norm. We
      scale the weights so ``sum_i w_i ||g_i|| = mean_i ||g_i||``, the value it has for
      :class:`~mtrl.balancers.mean.Mean` (for tasks with equal gradient norms the weights sum to 1).
      Normalising ``sum_i w_i = 1`` instead would let a task whose gradient is zero or tiny (its
      ``alpha_i`` grows like ``1/||g_i||``; Nash-MTL makes ``alpha_i g_i`` scale-free) take the whole
      weight budget and shrink the direction to nothing;
    * a ridge of ``1e-8`` on the cosine matrix keeps it positive definite, so a zero gradient gets a
      large finite weight that multiplies nothing, and gradients that (nearly) cancel, for which
      ``K alpha = 1/alpha`` has no (or an extreme) solution, get bounded weights;
    * no ``max_norm`` clipping (the trainer clips).

    ``compile_solver`` runs the Newton steps through ``torch.compile`` (as CAGrad's solver).
    """

    @dataclass(frozen=True, kw_only=True)
    class Options(SolverOptions):
        max_iter: int = fixed_in_runs(NASH_ITERATIONS)
        """Newton steps towards the bargaining solution."""


    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        gram64 = gram.detach().to(torch.float64)  # [T, T]
        alpha = nash_bargaining_solution(gram64, self.options.max_iter, self.compile_solver)  # [T]
        norms = gram64.diagonal().clamp_min(0.0).sqrt()  # [T]
        scale = norms.mean() / (alpha @ norms).clamp_min(torch.finfo(torch.float64).tiny)
        uniform = torch.full_like(alpha, 1.0 / self.num_tasks)  # all gradients zero: any weights do
        return torch.where(norms.amax() > 0, alpha * scale, uniform).to(gram.dtype)
