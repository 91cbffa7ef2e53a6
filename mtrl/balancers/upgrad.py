"""UPGrad: Quinton, Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv:2406.16232, 2024."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.balancers.base import SolverBalancer
from mtrl.balancers.dual_cone import dual_cone_weights
from mtrl.balancers.nonneg_qp import NONNEG_QP_ITERATIONS
from mtrl.balancers.options import SolverOptions, fixed_in_runs


class UPGrad(SolverBalancer):
    """Unconflicting Projection of Gradients (Quinton & Rey, arXiv 2024), TorchJD's default aggregator.

    Each task gradient ``g_i`` is projected onto the dual cone of all of them, ``{x : G x >= 0}`` (the
    directions that conflict with no task), and the direction is the mean of the projections. In
    weights: the projection of ``g_i`` is ``(e_i + lambda_i) @ G`` with ``lambda_i >= 0`` minimising
    ``(e_i + lambda_i)^T K (e_i + lambda_i)``, so the weights are ``(1 + sum_i lambda_i) / T``; the T
    problems are solved together by :mod:`mtrl.balancers.dual_cone`. The direction conflicts with no
    task (``G d >= 0``), and without conflicts (``K >= 0`` entrywise) it is the mean gradient.

    Scale: the paper averages the projections with preference weights ``1/T`` (TorchJD's default),
    which is already the mean-gradient scale.

    Deviations from TorchJD's implementation (which projects with quadprog on the CPU): the problems
    are solved by a fixed-iteration interior-point method in float64 on the device (``max_iter``
    steps), and the Gramian is regularised differently: TorchJD divides it by its trace and adds
    ``1e-4 I`` to the whole quadratic (so its projections only meet ``K v >= -1e-4 tr(K) v``, and
    may conflict slightly with some tasks), where we solve in multipliers scaled by the gradients'
    norms, with a ridge of ``1e-18`` on them only (:data:`mtrl.balancers.dual_cone.MULTIPLIER_RIDGE`),
    far below the Gramian's rounding, so the projection stays exact. The two agree to the size of
    TorchJD's regularisation; ours agrees with an exact NNLS reference to the solver's accuracy
    (tests/unit/test_balancers_projections.py, docs/balancers.md). No options besides the solver's
    iteration count; ``compile_solver`` runs the iterations through ``torch.compile`` (see CAGrad).
    """

    @dataclass(frozen=True, kw_only=True)
    class Options(SolverOptions):
        max_iter: int = fixed_in_runs(NONNEG_QP_ITERATIONS)
        """Interior-point iterations of the projections onto the dual cone."""


    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        gram64 = gram.detach().to(torch.float64)  # [T, T]
        tasks = torch.eye(self.num_tasks, dtype=torch.float64, device=gram.device)  # [T, T], row i: g_i
        projections = dual_cone_weights(gram64, tasks, self.options.max_iter, self.compile_solver)  # [T, T]
        return projections.mean(dim=0).to(gram.dtype)
