"""CAGrad: Liu, Liu, Jin, Stone, Liu, "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.balancers.base import SolverBalancer
from mtrl.balancers.options import SolverOptions, fixed_in_runs
from mtrl.balancers.simplex import SIMPLEX_ITERATIONS, minimize_on_simplex
from mtrl.checks import check_choice, check_non_negative

#: ``rescale`` option -> factor ``(c) -> f`` the direction is multiplied by (authors' three options).
RESCALE_FACTORS = {
    0: lambda c: 1.0,
    1: lambda c: 1.0 / (1.0 + c**2),
    2: lambda c: 1.0 / (1.0 + c),
}
#: Smallest ``||g_w||`` (relative to the root-mean-square task gradient norm) that ``lambda`` divides by.
_MIN_RELATIVE_NORM = 1e-4
#: Smallest relative ``||g0||`` the linear term of the scaled dual is divided by.
_MIN_RELATIVE_MEAN_NORM = 1e-12


def cagrad_weights(
    gram: Tensor, base: Tensor, c: float, iterations: int = SIMPLEX_ITERATIONS, compiled: bool = False
) -> Tensor:
    """CAGrad's weights ``base + lambda * w`` (before rescaling) for a float64 Gramian ``[N, N]``.

    ``base: [N]`` gives the reference gradient ``g0 = base @ G`` (``1/N`` everywhere for plain CAGrad).
    Solves the dual ``min_{w in simplex} w^T K base + phi * sqrt(w^T K w)``, ``phi = c ||g0||``, with
    :func:`minimize_on_simplex`, and returns the weights of ``g0 + phi / ||g_w|| * g_w``. The problem
    is solved on ``K / mean(diag K)`` with the linear term divided by ``||g0||`` (neither changes the
    minimiser), so gradients of any scale behave alike.
    """
    tiny = torch.finfo(gram.dtype).tiny
    gram = gram / gram.diagonal().mean().clamp_min(tiny)  # [N, N], mean diagonal 1
    mean_norm = (base @ gram @ base).clamp_min(0.0).sqrt()  # relative ||g0||
    linear = gram @ base / mean_norm.clamp_min(_MIN_RELATIVE_MEAN_NORM)  # [N]
    w = minimize_on_simplex(gram, linear, 0.0, c, base, iterations, compiled)  # [N]
    dual_norm = (w @ gram @ w).clamp_min(0.0).sqrt()  # relative ||g_w||
    lam = c * mean_norm / dual_norm.clamp_min(_MIN_RELATIVE_NORM)
    return base + lam * w


class CAGrad(SolverBalancer):
    """Conflict-Averse Gradient Descent (Liu et al., NeurIPS 2021).

    The update ``d`` maximises the worst task improvement ``min_i <g_i, d>`` within the ball
    ``||d - g0|| <= c ||g0||`` around the mean gradient ``g0``. Its dual, solved here on the Gramian
    ``K = G G^T`` as in the authors' RL code, is ``min_{w in simplex} w^T K b + phi sqrt(w^T K w)``
    with ``b = 1/T`` and ``phi = c ||g0||``; then ``d = g0 + phi / ||g_w|| * g_w``, i.e. weights
    ``b + lambda * w``, multiplied by the ``rescale`` factor: 0 -> 1, 1 -> ``1/(1+c^2)`` (authors' RL
    default and ours), 2 -> ``1/(1+c)``.

    Deviations from the authors' code: the dual is solved to high accuracy by a fixed-iteration
    interior-point method on the device (:mod:`mtrl.balancers.simplex`) instead of 20 SGD steps
    on softmax logits (their RL code) or scipy's SLSQP on the CPU (their ``cagrad_exact``); the
    ``+1e-4`` smoothing terms are replaced by scale-free guards (``||g_w||`` is smoothed by
    ``1e-12`` of the mean squared gradient norm, and ``lambda`` divides by at least ``1e-4`` of the
    root-mean-square gradient norm), so a zero gradient, opposite gradients or a minimum give a
    finite direction. ``c = 0`` returns exactly :class:`~mtrl.balancers.mean.Mean`'s weights.

    ``compile_solver`` runs the interior-point iterations through ``torch.compile`` (compiling at
    the first call for each ``T``, then faster: docs/benchmarks.md; the same iterates up to float64
    rounding).

    Accuracy (``max_iter`` interior-point steps, 40 by default): the direction agrees with scipy's
    SLSQP on random, conflicting, near-opposite and low-rank gradients to the accuracy of the
    reference itself (tests/unit/test_balancers.py; docs/balancers.md). Where the dual optimum is ``g_w = 0``
    (0 in the convex hull and no combination of the gradients more than ``arccos(-c)`` away from
    ``g0``, e.g. a zero task gradient with ``c >= 1``) the primal solution is not unique and the guard
    on ``lambda`` returns (the rescaled) ``g0`` plus a step shorter than ``phi``.
    """

    @dataclass(frozen=True, kw_only=True)
    class Options(SolverOptions):
        c: float = 0.5
        """Radius of the conflict-averse ball around the mean gradient, relative to its norm (c >= 0)."""
        rescale: int = 1
        """Rescaling of the direction (0 none, 1 divide by 1+c^2, the authors' RL default, 2 divide by 1+c)."""
        max_iter: int = fixed_in_runs(SIMPLEX_ITERATIONS)
        """Interior-point iterations of the dual (fewer are not accurate: see :mod:`mtrl.balancers.simplex`)."""

        def __post_init__(self) -> None:
            self._set("c", check_non_negative("c", self.c))
            self._set("rescale", check_choice("rescale", self.rescale, tuple(RESCALE_FACTORS)))
            super().__post_init__()

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        num, c = self.num_tasks, self.options.c
        if c == 0.0:
            return torch.full((num,), 1.0 / num, dtype=gram.dtype, device=gram.device)
        gram64 = gram.detach().to(torch.float64)  # [T, T]
        base = torch.full((num,), 1.0 / num, dtype=torch.float64, device=gram.device)  # [T]
        weights = cagrad_weights(gram64, base, c, self.options.max_iter, self.compile_solver) * RESCALE_FACTORS[self.options.rescale](c)
        return weights.to(gram.dtype)
