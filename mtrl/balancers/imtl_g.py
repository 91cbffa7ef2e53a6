"""IMTL-G: Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang, "Towards Impartial Multi-task Learning", ICLR 2021."""

from __future__ import annotations

import torch
from torch import Tensor

from mtrl.balancers.base import Balancer
from mtrl.balancers.options import BalancerOptions


def impartial_weights(gram: Tensor, input_eps: float) -> Tensor:
    """IMTL-G's weights ``[T]`` for a float64 Gramian ``[T, T]``: ``alpha = v / |sum(v)|``, ``(K + eps I) v = ||g||``.

    ``K alpha = c ||g||`` means ``<g_i / ||g_i||, alpha @ G> = c`` for every task. ``K`` is divided by
    its mean diagonal, and the ridge ``eps = T * input_eps`` (``input_eps`` the machine epsilon of the
    dtype the Gramian was formed in) is the size of its rounding errors, so a Gramian of full rank
    gets the paper's closed form up to ``eps / lambda_min(K)``. Weights summing to 0 up to rounding
    (all gradients zero) give zero weights.
    """
    num = gram.shape[0]
    gram = gram / gram.diagonal().mean().clamp_min(torch.finfo(gram.dtype).tiny)  # [T, T], mean diagonal 1
    norms = gram.diagonal().clamp_min(0.0).sqrt()  # [T]
    ridge = num * input_eps * torch.eye(num, dtype=gram.dtype, device=gram.device)  # [T, T]
    v = torch.linalg.solve_ex(gram + ridge, norms)[0].nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)  # [T]
    total = v.sum().abs()
    normalisable = total > num * torch.finfo(gram.dtype).eps * v.abs().sum()
    return torch.where(normalisable, v / torch.where(normalisable, total, torch.ones_like(total)), torch.zeros_like(v))


class IMTLG(Balancer):
    """Impartial Multi-Task Learning, the gradient part IMTL-G (Liu et al., ICLR 2021).

    The direction ``d = alpha @ G`` has equal projections on every unit task gradient,
    ``<d, g_i / ||g_i||> = c`` for all ``i``, and ``sum(alpha) = 1``, which is the mean-gradient
    scale. The paper's closed form ``alpha_{2:T} = g_1 U^T (D U^T)^-1`` (``D``, ``U``: differences of
    the gradients and of the unit gradients to the first task's) is, in Gramian form,
    ``alpha = K^-1 n / (1^T K^-1 n)`` with ``n_i = ||g_i|| = sqrt(K_ii)``: one linear solve in
    float64 (:func:`impartial_weights`). No options.

    Deviations:

    * the paper needs linearly independent gradients. The solve adds a ridge the size of the
      Gramian's rounding errors (``T`` machine epsilons of its dtype, relative to the mean squared
      norm), so singular Gramians give finite weights: where equal projections still exist
      (a repeated gradient, a zero gradient, which gets weight 0) the direction is the paper's;
      where the only directions with equal projections have projection 0 (``g`` and ``-g``; more
      tasks than dimensions, in general), the ridge's large weights on a vanishing combination of
      the gradients take the normalisation and the direction shrinks to (nearly) zero, the one
      direction that then meets the paper's conditions (weights summing to 1 on a combination of
      the gradients that vanishes, equal projections 0). TorchJD's ``IMTLG`` uses a
      pseudo-inverse there (a least-squares direction with unequal projections), which needs an
      eigendecomposition; it agrees with ours where the Gramian has full rank;
    * we normalise by ``|sum(alpha)|`` instead of ``sum(alpha)``: with strongly conflicting
      gradients of unequal norms ``1^T K^-1 n`` can be negative, and the paper's ``sum(alpha) = 1``
      would then give equal *negative* projections, an ascent direction for every task;
    * the paper applies IMTL-G to the gradients of the shared representation (as MGDA-UB); here,
      like every balancer of this package, to those of the shared parameters; the loss part
      IMTL-L (learned loss scales) is not included.
    """

    def __init__(self, num_tasks: int, options: BalancerOptions = BalancerOptions()) -> None:
        super().__init__(num_tasks, options)

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        weights = impartial_weights(gram.detach().to(torch.float64), torch.finfo(gram.dtype).eps)
        return weights.to(gram.dtype)
