"""DualProj: the projection of the mean gradient onto the dual cone of the task gradients.

Lopez-Paz, Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017 (Equation 11);
as a multi-task aggregator in Quinton, Rey, "Jacobian Descent for Multi-Objective Optimization",
arXiv:2406.16232, 2024 (TorchJD's ``DualProj``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.balancers.base import SolverBalancer
from mtrl.balancers.dual_cone import dual_cone_weights
from mtrl.balancers.nonneg_qp import NONNEG_QP_ITERATIONS
from mtrl.balancers.options import SolverOptions, fixed_in_runs


class DualProj(SolverBalancer):
    """The mean gradient projected onto the dual cone of the task gradients (GEM's projection, NeurIPS 2017).

    GEM projects the current gradient onto ``{x : <x, g_k> >= 0 for every memory k}`` by solving the
    dual QP over non-negative multipliers (Lopez-Paz & Ranzato, Equations 10-11); as a multi-task
    aggregator (Quinton & Rey; TorchJD) the vector projected is the mean of the task gradients and
    the constraints are the tasks' own gradients. In weights: ``(1/T + lambda) @ G`` with
    ``lambda >= 0`` minimising ``(1/T + lambda)^T K (1/T + lambda)``, solved by
    :mod:`mtrl.balancers.dual_cone`. Without conflicts the direction is the mean gradient, and it is
    on the mean-gradient scale (the projection of the mean).

    Deviations: GEM solves the dual with quadprog on the CPU, TorchJD likewise after dividing the
    Gramian by its trace and adding ``1e-4 I``; here a fixed-iteration interior-point method in
    float64 runs on the device (``max_iter`` steps), with a ridge of ``1e-18`` on the multipliers
    scaled by the gradients' norms in place of TorchJD's ``1e-4 I`` (as
    :class:`~mtrl.balancers.upgrad.UPGrad`, which shares the solver). GEM's ``margin`` (a small
    positive offset of the memory constraints) is left out, as in TorchJD. ``compile_solver`` runs
    the iterations through ``torch.compile``.
    """

    @dataclass(frozen=True, kw_only=True)
    class Options(SolverOptions):
        max_iter: int = fixed_in_runs(NONNEG_QP_ITERATIONS)
        """Interior-point iterations of the projection onto the dual cone."""


    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        gram64 = gram.detach().to(torch.float64)  # [T, T]
        # the projection is positively homogeneous: project the sum (a problem of order one), divide by T
        total = torch.ones((1, self.num_tasks), dtype=torch.float64, device=gram.device)  # [1, T]
        projection = dual_cone_weights(gram64, total, self.options.max_iter, self.compile_solver)[0]  # [T]
        return (projection / self.num_tasks).to(gram.dtype)
