"""FairGrad: Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.balancers.base import SolverBalancer
from mtrl.balancers.iterate import iterate
from mtrl.balancers.options import SolverOptions, fixed_in_runs

FAIRGRAD_ITERATIONS = 40
#: The range of alpha the solver is accurate in with its 40 Newton steps (tests/unit/test_balancers_weighting.py):
#: beyond it some weights must move by many orders of magnitude, which takes more steps.
MIN_FAIRNESS, MAX_FAIRNESS = 0.1, 10.0
#: Relative ridge: the normalised Gramian's diagonal is multiplied by ``1 + _RIDGE`` (Nash-MTL's ridge
#: of ``1e-8`` on the cosine matrix, in this scale), so the equation has one positive solution
#: where gradients (nearly) cancel, with bounded weights, whatever each task's gradient norm.
_RIDGE = 1e-8
#: Absolute floor added to the diagonal, so a zero gradient gets a large finite weight
#: (``_FLOOR ** (-alpha / (alpha + 1))``) that multiplies nothing.
_FLOOR = 1e-14
#: Step-size ladder of the line search: ``s_max * 2**-k`` for ``k < _LADDER``, and 0.
_LADDER = 16
#: Fraction-to-boundary factor: a step keeps at least 1% of each weight.
_TO_BOUNDARY = 0.99


def alpha_fair_weights(gram: Tensor, alpha: float, iterations: int = FAIRGRAD_ITERATIONS, compiled: bool = False) -> Tensor:
    """The positive solution ``w: [T]`` of ``M w = w ** (-1 / alpha)`` for ``M = K / mean(diag K)`` with its
    diagonal times ``1 + 1e-8``, plus ``1e-14``, from a float64 Gramian ``K: [T, T]``.

    With ``p = 1 / alpha`` the equation is the stationarity condition of the strictly convex
    ``f(w) = w^T M w / 2 - sum_i h(w_i)``, ``h'(w) = w ** -p`` (``h(w) = w ** (1 - p) / (1 - p)``, or
    ``log w`` for ``alpha = 1``, where it is Nash-MTL's equation). A fixed number of Newton steps
    (Hessian ``M + p diag(w ** (-p - 1))``) minimises it, solved in the scaled variable
    ``dw = w * v`` whose matrix ``W M W + p diag(w ** (1 - p))`` stays well conditioned. Each step
    size is the best of a fixed ladder below the fraction-to-boundary limit (which keeps ``w > 0``),
    scored by the change of ``f`` written without cancellation (``log1p``, ``expm1``). The start is
    ``diag(M) ** (-alpha / (alpha + 1))`` (exact for orthogonal gradients) times the scalar
    minimising ``f`` along it (exact for identical ones). ``compiled``: the Newton steps run through
    ``torch.compile`` (:func:`mtrl.balancers.iterate.iterate`).
    """
    num = gram.shape[0]
    dtype, device = gram.dtype, gram.device
    eye = torch.eye(num, dtype=dtype, device=device)
    normalised = gram / gram.diagonal().mean().clamp_min(torch.finfo(dtype).tiny)  # [T, T]
    matrix = normalised + torch.diag(_RIDGE * normalised.diagonal() + _FLOOR)  # [T, T], M
    power = 1.0 / alpha  # p
    start = matrix.diagonal() ** (-alpha / (alpha + 1.0))  # [T]
    along = (start ** (1.0 - power)).sum() / (start @ matrix @ start)  # c ** (1 + p) for the best c * start
    weights = start * along ** (alpha / (alpha + 1.0))
    ladder = torch.cat(
        [2.0 ** -torch.arange(_LADDER, dtype=dtype, device=device), torch.zeros(1, dtype=dtype, device=device)]
    )  # [L + 1]
    exponent = torch.tensor(1.0 - power, dtype=dtype, device=device)  # q = 1 - p, a tensor: one compiled step for every alpha
    (weights,) = iterate(_newton_step, (weights,), (matrix, eye, ladder, exponent), iterations, compiled)
    return weights


def _newton_step(weights: Tensor, matrix: Tensor, eye: Tensor, ladder: Tensor, exponent: Tensor) -> tuple[Tensor]:
    """One damped Newton step on ``f(w)`` (see :func:`alpha_fair_weights`); ``exponent`` is ``q = 1 - p``."""
    power = 1.0 - exponent  # p
    m_weights = matrix @ weights  # [T], M w
    weights_q = weights**exponent  # [T], w ** (1 - p) = w * w ** -p
    scaled_hess = weights[:, None] * matrix * weights[None, :] + power * eye * weights_q[None, :]  # [T, T], W (M + p W^(-p-1)) W
    step, _ = torch.linalg.solve_ex(scaled_hess, weights_q - weights * m_weights)  # [T], dw = w * step
    step = torch.nan_to_num(step, nan=0.0, posinf=0.0, neginf=0.0)
    sizes = (_TO_BOUNDARY / (-step).amax().clamp_min(_TO_BOUNDARY)).clamp_max(1.0) * ladder  # [L + 1]
    move = weights * step  # [T]
    log_growth = torch.log1p(sizes[:, None] * step[None, :])  # [L + 1, T], log(1 + s v)
    # (h(w (1 + s v)) - h(w)) / w ** q = ((1 + s v) ** q - 1) / q, or log(1 + s v) for q = 0
    gain = torch.where(exponent == 0, log_growth, torch.expm1(exponent * log_growth) / exponent)  # [L + 1, T]
    change = (  # f(w + s * move) - f(w) for each step size s, without cancellation
        sizes * (m_weights @ move) + 0.5 * sizes**2 * (move @ matrix @ move) - (gain * weights_q[None, :]).sum(-1)
    )  # [L + 1]
    best = torch.nan_to_num(change, nan=float("inf")).argmin().reshape(1)  # [1], index_select: no sync
    return (weights * (1.0 + sizes.index_select(0, best)[0] * step),)


class FairGrad(SolverBalancer):
    """FairGrad (Ban & Ji, ICML 2024): alpha-fair allocation of the update among the tasks.

    The direction ``d = w @ G`` maximises the alpha-fair utility ``sum_i u_i^(1 - alpha) / (1 - alpha)``
    of the tasks' improvements ``u_i = <g_i, d>`` (``sum_i log u_i`` for ``alpha = 1``) in a ball; its
    weights ``w > 0`` solve ``K w = w ** (-1 / alpha)`` elementwise (``K = G G^T``), so each task's
    improvement is ``u_i = w_i ** (-1 / alpha)``. ``alpha`` (option ``fairness``) moves from the mean
    gradient's utilitarian sum (``alpha -> 0``) through proportional fairness (``alpha = 1``,
    Nash-MTL's equation) to max-min fairness (``alpha -> inf``). The solution is computed by
    :func:`alpha_fair_weights` (``max_iter`` Newton steps, float64, on the device) on the Gramian
    divided by its mean diagonal.

    Scale: the paper's ``d`` has the scale its equation gives, ``||d|| ~ s ** ((1 - alpha) / (1 + alpha))``
    for gradients of scale ``s``; as Nash-MTL's here, the weights are scaled so
    ``sum_i w_i ||g_i|| = mean_i ||g_i||`` (its value for the mean gradient). Normalising
    ``sum_i w_i = 1`` instead would let a task with a tiny gradient, whose weight grows as its gradient
    shrinks, take the whole weight budget.

    Deviations from the paper and the authors' code:

    * the authors solve the equation with scipy's ``least_squares`` on the CPU (supervised code and
      LibMTL), or with 20 SGD steps on its squared residual (their Meta-World code); we solve it to
      high accuracy with a fixed number of Newton steps on the device, on the normalised Gramian
      with a relative ridge of ``1e-8`` on its diagonal (Nash-MTL's here) and an absolute one of
      ``1e-14``, which keep the solution bounded where gradients (nearly) cancel (where the
      equation itself has no positive solution) and give a zero gradient a large finite weight
      that multiplies nothing;
    * the scale above, and no ``max_norm`` clipping (the trainer clips).

    ``fairness = 2`` is the authors' setting for Meta-World MT10 and MT50. ``compile_solver`` runs the
    Newton steps through ``torch.compile`` (as Nash-MTL's solver).
    """

    @dataclass(frozen=True, kw_only=True)
    class Options(SolverOptions):
        fairness: float = 2.0
        """The paper's alpha of alpha-fairness, in [0.1, 10] (1: Nash-MTL's proportional fairness; larger: closer to max-min)."""
        max_iter: int = fixed_in_runs(FAIRGRAD_ITERATIONS)
        """Newton steps towards the solution of the FairGrad equation."""

        def __post_init__(self) -> None:
            fairness = self.fairness
            if isinstance(fairness, bool) or not isinstance(fairness, (int, float)) or not MIN_FAIRNESS <= fairness <= MAX_FAIRNESS:
                raise ValueError(f"fairness must be a number in [{MIN_FAIRNESS}, {MAX_FAIRNESS}], got {fairness!r}")
            self._set("fairness", float(fairness))
            super().__post_init__()

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        gram64 = gram.detach().to(torch.float64)  # [T, T]
        solution = alpha_fair_weights(gram64, self.options.fairness, self.options.max_iter, self.compile_solver)  # [T]
        norms = gram64.diagonal().clamp_min(0.0).sqrt()  # [T]
        scale = norms.mean() / (solution @ norms).clamp_min(torch.finfo(torch.float64).tiny)
        uniform = torch.full_like(solution, 1.0 / self.num_tasks)  # all gradients zero: any weights do
        return torch.where(norms.amax() > 0, solution * scale, uniform).to(gram.dtype)
