"""Projection onto the dual cone of the task gradients, in weights over the gradients (UPGrad, DualProj).

The dual cone of the rows of ``G: [T, D]`` is ``{x : G x >= 0}``: the directions that conflict with no
task. The projection of ``x = u @ G`` onto it is ``v @ G`` with ``v = u + lambda``, where
``lambda >= 0`` minimises ``(u + lambda)^T K (u + lambda)``, ``K = G G^T`` (Quinton & Rey, "Jacobian
Descent for Multi-Objective Optimization", 2024, Proposition 1: the dual of the projection). Its
optimality conditions are the projection's: ``K v >= 0`` (the projection is in the cone),
``lambda >= 0`` and ``lambda_j (K v)_j = 0`` (only the constraints it touches pull on it).

The problems are solved by :func:`mtrl.balancers.nonneg_qp.minimize_nonnegative_qp` on ``K`` divided
by its mean diagonal (the weights do not depend on the gradients' scale), with a ridge
:data:`MULTIPLIER_RIDGE` on ``lambda``: where the gradients are linearly dependent (``D < T``, a
repeated or opposite gradient) many ``lambda`` give the same projection, some of them arbitrarily
large, and the ridge picks the one of least norm among them instead of letting the iterates drift.
It changes the cone condition to ``K v >= -ridge * lambda``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtrl.balancers.nonneg_qp import NONNEG_QP_ITERATIONS, minimize_nonnegative_qp

#: Ridge on the multipliers, relative to the mean squared gradient norm.
MULTIPLIER_RIDGE = 1e-12


def dual_cone_weights(gram: Tensor, preferences: Tensor, iterations: int = NONNEG_QP_ITERATIONS, compiled: bool = False) -> Tensor:
    """Weights ``v: [B, T]`` of the projections of ``preferences[b] @ G`` onto the dual cone ``{x : G x >= 0}``.

    ``gram: [T, T]`` is the float64 Gramian ``G G^T``, ``preferences: [B, T]`` the weights of the
    vectors to project; ``v[b] = preferences[b] + lambda[b]`` with ``lambda >= 0``. ``iterations`` and
    ``compiled`` are passed to the solver.
    """
    num = gram.shape[0]
    gram = gram / gram.diagonal().mean().clamp_min(torch.finfo(gram.dtype).tiny)  # [T, T], mean diagonal 1
    ridged = gram + MULTIPLIER_RIDGE * torch.eye(num, dtype=gram.dtype, device=gram.device)  # [T, T]
    multipliers = minimize_nonnegative_qp(ridged, preferences @ gram, iterations, compiled)  # [B, T]
    return preferences + multipliers
