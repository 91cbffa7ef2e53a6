"""Projection onto the dual cone of the task gradients, in weights over the gradients (UPGrad, DualProj).

The dual cone of the rows of ``G: [T, D]`` is ``{x : G x >= 0}``: the directions that conflict with no
task. The projection of ``x = u @ G`` onto it is ``v @ G`` with ``v = u + lambda``, where
``lambda >= 0`` minimises ``(u + lambda)^T K (u + lambda)``, ``K = G G^T`` (Quinton & Rey, "Jacobian
Descent for Multi-Objective Optimization", 2024, Proposition 1: the dual of the projection). Its
optimality conditions are the projection's: ``K v >= 0`` (the projection is in the cone),
``lambda >= 0`` and ``lambda_j (K v)_j = 0`` (only the constraints it touches pull on it).

The problems are solved by :func:`mtrl.balancers.nonneg_qp.minimize_nonnegative_qp` in scaled
variables, so neither the gradients' norms nor their spread matter: each multiplier is measured in
its gradient's norm and in the norm of the vector projected (``lambda~_j = lambda_j ||g_j|| / ||x||``;
the quadratic becomes the gradients' cosine matrix, the linear term the cosines between ``x`` and
them). A gradient shorter than the longest one's rounding (``eps`` times its norm), a zero gradient
in particular, counts as zero: it constrains nothing and gets no multiplier.

Where the gradients are linearly dependent (``D < T``, a repeated or an opposite gradient) many
``lambda`` give the same projection, some of them arbitrarily large; a ridge
:data:`MULTIPLIER_RIDGE` on the scaled multipliers, far below the rounding of the cosine matrix,
keeps the solver's iterates bounded there without moving any solution the Gramian resolves. Where
the cone is nearly degenerate (gradients within about ``1e-7`` of opposite) the Gramian holds its
angles to a few digits only, and the projection is as accurate as that.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtrl.balancers.nonneg_qp import NONNEG_QP_ITERATIONS, minimize_nonnegative_qp

#: Ridge on the scaled multipliers, far below the rounding of the cosine matrix (so it moves no
#: solution the Gramian can resolve): it bounds the multipliers along exact dependencies (repeated
#: or opposite gradients), which nothing else bounds (see :mod:`mtrl.balancers.nonneg_qp`).
MULTIPLIER_RIDGE = 1e-18


def dual_cone_weights(gram: Tensor, preferences: Tensor, iterations: int = NONNEG_QP_ITERATIONS, compiled: bool = False) -> Tensor:
    """Weights ``v: [B, T]`` of the projections of ``preferences[b] @ G`` onto the dual cone ``{x : G x >= 0}``.

    ``gram: [T, T]`` is the float64 Gramian ``G G^T``, ``preferences: [B, T]`` the weights of the
    vectors to project; ``v[b] = preferences[b] + lambda[b]`` with ``lambda >= 0``. A zero vector
    projects to itself. ``iterations`` and ``compiled`` are passed to the solver.
    """
    finfo = torch.finfo(gram.dtype)
    sq_norms = gram.diagonal()  # [T]
    # shorter than the longest gradient's rounding, or a subnormal square (no precision left for its
    # direction): a zero gradient. Its multiplier would be the solver's residual over its tiny norm.
    resolved = sq_norms >= (sq_norms.amax() * finfo.eps**2).clamp_min(finfo.tiny)  # [T]
    inv_norms = torch.where(resolved, sq_norms.rsqrt(), torch.zeros_like(sq_norms))  # [T], 0 for a zero gradient
    # the cosine matrix; a zero gradient's unknown is decoupled (unit diagonal, no linear term): it goes to 0
    cosine = inv_norms[:, None] * gram * inv_norms[None, :] + torch.diag((~resolved).to(gram.dtype))  # [T, T]
    products = preferences @ gram  # [B, T]: <u_b @ G, g_j>
    lengths = (products * preferences).sum(dim=-1, keepdim=True).clamp_min(0.0).sqrt()  # [B, 1]: ||u_b @ G||
    inv_lengths = torch.where(lengths > 0, 1.0 / lengths, torch.zeros_like(lengths))  # [B, 1]
    scaled = minimize_nonnegative_qp(cosine, products * inv_norms * inv_lengths, MULTIPLIER_RIDGE, iterations, compiled)  # [B, T]
    return preferences + scaled * inv_norms * lengths
