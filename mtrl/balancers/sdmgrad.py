"""SDMGrad: Xiao, Ban, Ji, "Direction-oriented Multi-objective Learning: Simple and Provable Stochastic
Algorithms", NeurIPS 2023."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.balancers.base import SolverBalancer
from mtrl.balancers.iterate import iterate
from mtrl.balancers.options import BalancerOptions
from mtrl.checks import check_fraction, check_non_negative, check_positive, check_positive_int

#: The normalising scale of the cross Gramian is at least this fraction of its largest entry, so a
#: cross Gramian whose diagonal nearly vanishes (independent batches whose per-task gradients are
#: nearly orthogonal) cannot blow the normalised problem up to overflow.
_MIN_RELATIVE_SCALE = 1e-6


def project_to_simplex(values: Tensor) -> Tensor:
    """Euclidean projection of ``values: [..., T]`` onto the probability simplex (last axis), on the device.

    ``max(v - theta, 0)`` with ``theta = max_k (sum of the k largest entries - 1) / k`` (Held, Wolfe &
    Crowder 1974; Duchi et al., ICML 2008; Condat 2016): a sort, a cumulative sum and a maximum, no
    branching on values.
    """
    ordered = values.sort(dim=-1, descending=True).values  # [..., T]
    counts = torch.arange(1, values.shape[-1] + 1, dtype=values.dtype, device=values.device)  # [T]
    theta = ((ordered.cumsum(dim=-1) - 1.0) / counts).amax(dim=-1, keepdim=True)  # [..., 1]
    return (values - theta).clamp_min(0.0)


def normalized_cross_gram(cross: Tensor) -> Tensor:
    """``cross: [T, T]`` divided by the square of the mean over tasks of ``sqrt(|cross_ii|)`` (float64 in, out).

    With both batches equal this is the authors' scale (the mean task-gradient norm, squared), so
    their step size applies; the absolute value keeps it defined where an entry of the cross
    Gramian's diagonal is negative (two batches' gradients of one task that disagree), and the
    scale is floored at :data:`_MIN_RELATIVE_SCALE` of the largest entry (and at the smallest normal
    number: an all-zero Gramian stays zero).
    """
    scale = cross.diagonal().abs().sqrt().mean().square()
    floor = (_MIN_RELATIVE_SCALE * cross.abs().amax()).clamp_min(torch.finfo(cross.dtype).tiny)
    return cross / torch.maximum(scale, floor)


def _inner_step(
    w: Tensor, velocity: Tensor, cross: Tensor, pull: Tensor, step_size: Tensor, momentum: Tensor
) -> tuple[Tensor, Tensor]:
    """One projected heavy-ball step on ``w``: ``v <- momentum v + K12 w + lam K12 1/T``, ``w <- P(w - step v)``."""
    velocity = momentum * velocity + cross @ w + pull  # [T]
    return project_to_simplex(w - step_size * velocity), velocity


def sdmgrad_simplex_weights(
    cross: Tensor, start: Tensor, lam: float, step_size: float, momentum: float, steps: int, compiled: bool = False
) -> Tensor:
    """The simplex weights ``w: [T]`` after ``steps`` projected stochastic-gradient steps from ``start``.

    ``cross: [T, T]`` is the cross Gramian ``G1 G2^T`` (float64), normalised here by
    :func:`normalized_cross_gram`. Each step follows ``K12 (w + lam / T)``, the estimate of the gradient
    of ``1/2 ||G w + lam g0||^2`` (``G^T (G w + lam g0)``) from two independent batches, with
    heavy-ball ``momentum`` (0: the paper's plain projected step) and projects onto the simplex.
    ``compiled`` runs the steps through ``torch.compile`` (:func:`mtrl.balancers.iterate.iterate`).
    """
    normalized = normalized_cross_gram(cross)  # [T, T]
    pull = lam * normalized.mean(dim=1)  # [T], lam K12 1/T
    # the constants as tensors made by fills (no host-to-device copy), so a compiled step serves every value
    step_size_t = torch.full((), step_size, dtype=cross.dtype, device=cross.device)
    momentum_t = torch.full((), momentum, dtype=cross.dtype, device=cross.device)
    state = (start, torch.zeros_like(start))
    return iterate(_inner_step, state, (normalized, pull, step_size_t, momentum_t), steps, compiled)[0]


class SDMGrad(SolverBalancer):
    """Stochastic Direction-oriented Multi-objective Gradient descent (Xiao, Ban & Ji, NeurIPS 2023), Algorithm 1.

    The direction-oriented problem: the update ``d`` maximises the worst task improvement
    ``min_i <g_i, d>`` minus ``1/2 ||d||^2`` minus ``lam/2 ||d - g0||^2``, which pulls it towards the
    mean gradient ``g0``. Its dual is ``min_{w in simplex} 1/2 ||G w + lam g0||^2`` and
    ``d = (G w + lam g0) / (1 + lam)``: ``lam = 0`` is MGDA, ``lam -> inf`` the mean gradient.
    SDMGrad solves the dual by projected stochastic gradient steps on ``w`` whose gradient
    ``G^T (G w + lam g0)`` is estimated without bias from two independent minibatches ``zeta``,
    ``zeta'``: ``G(zeta)^T (G(zeta') w + lam g0(zeta'))``, i.e. the cross Gramian
    ``K12 = G1 G2^T`` times ``w + lam / T``. The weights are carried from one update to the next
    (the paper's warm start ``w_{t+1,0} = w_{t,S}``): a float64 ``[T]`` buffer in ``state_dict()``.

    The balancer declares :attr:`requires_second_batch`: the trainer passes ``weights`` the cross
    Gramian ``G1 G2^T`` of the per-task gradients of the update's batch (``G1``) and of a second,
    independent batch (``G2``). Called with one batch's Gramian (``combine``, or a balanced step
    given no second batch) both batches are the same one: the authors' MT10 code, which uses one
    batch for everything. The returned weights are ``(w + lam / T) / (1 + lam)`` over the rows of
    ``G1``: the paper's direction on the first batch. They sum to 1, which is the mean-gradient
    scale (the paper's direction is already on it).

    Defaults are the authors' MT10 run (their ``mtrl_files/run.sh`` and ``sdmgrad.py``):
    ``lam = 0.6``; 20 inner steps of size 10 with heavy-ball momentum 0.5 (``torch.optim.SGD``), the
    momentum restarted at every update, on the Gramian divided by the squared mean task-gradient
    norm. These steps converge only where the task gradients are close to parallel; on nearly
    orthogonal ones ``w`` moves between sparse points of the simplex at every step, as in the
    authors' code. A step size below ``1 / L`` (``L`` the largest eigenvalue of the normalised
    Gramian) with enough steps solves the deterministic problem when both batches are one.

    Deviations from the paper and from the authors' code:

    * the direction uses the first batch's gradients (``zeta``); the paper draws a third
      independent sample ``xi`` for it, which would cost a third per-task backward pass, and the
      authors' MT10 code uses the same single batch for the weights and the direction. The per-task
      heads, the losses and the diagnostics are those of the first batch too;
    * the ``S`` inner steps reuse one pair of batches (as the authors' code does); the paper's
      algorithm draws a new pair per inner step, ``2 S`` per-task backward passes per update;
    * the paper's plain projected step, with step sizes from its analysis, becomes the authors'
      heavy-ball step (``momentum = 0`` gives the paper's);
    * the normalising scale is the mean over tasks of ``sqrt(|K12_ii|)``, squared, floored at
      ``1e-6`` of the largest ``|K12_ij|``; the authors' ``sqrt(K_ii + 1e-4)`` is not defined for
      a negative diagonal entry of a cross Gramian, and the ``1e-4`` depends on the gradients'
      scale;
    * the projection onto the simplex runs on the device (sort, cumulative sum, maximum) instead of
      the authors' numpy one on the host; SDMGrad-OS (objective sampling) is not implemented.
    """

    #: The weights come from the cross Gramian of two independent batches (see the class docstring).
    requires_second_batch = True

    @dataclass(frozen=True, kw_only=True)
    class Options(BalancerOptions):
        lam: float = 0.6
        """Pull of the direction towards the mean gradient, lambda >= 0 (0: MGDA; large: the mean gradient)."""
        step_size: float = 10.0
        """Step size of the inner projected steps on the simplex weights (on the normalised Gramian), > 0."""
        momentum: float = 0.5
        """Heavy-ball momentum of the inner steps, in [0, 1) (0: the paper's plain projected step)."""
        inner_steps: int = 20
        """Inner projected steps on the simplex weights per update (the paper's S)."""

        def __post_init__(self) -> None:
            self._set("lam", check_non_negative("lam", self.lam))
            self._set("step_size", check_positive("step_size", self.step_size))
            self._set("momentum", check_fraction("momentum", self.momentum))
            self._set("inner_steps", check_positive_int("inner_steps", self.inner_steps))

    def __init__(self, num_tasks: int, options: Options = Options(), *, compile_solver: bool = False) -> None:
        super().__init__(num_tasks, options, compile_solver=compile_solver)
        self.register_buffer("simplex_weights", torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64))  # [T], w

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        """Weights ``[T]`` over the first batch's gradients from the cross Gramian ``gram = G1 G2^T`` ``[T, T]``."""
        options = self.options
        cross = gram.detach().to(torch.float64)  # [T, T]
        w = sdmgrad_simplex_weights(
            cross, self.simplex_weights, options.lam, options.step_size, options.momentum, options.inner_steps, self.compile_solver
        )  # [T]
        self.simplex_weights.copy_(w)
        return ((w + options.lam / self.num_tasks) / (1.0 + options.lam)).to(gram.dtype)
