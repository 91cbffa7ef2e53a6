"""GradVac: Wang, Tsvetkov, Firat, Cao, "Gradient Vaccine: Investigating and Improving Multi-task
Optimization in Massively Multilingual Models", ICLR 2021."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.balancers.base import Balancer
from mtrl.balancers.generator import GeneratorMixin
from mtrl.balancers.options import BalancerOptions
from mtrl.balancers.pcgrad import other_tasks_shuffled

#: A modified gradient ``g_i'`` whose norm is below ``_CANCELLED * sqrt(eps)`` of ``sum_k |C_ik| ||g_k||`` (the
#: norms it is made of) counts as zero, with cosine 0: its norm from the Gramian, ``sqrt(C K C^T)``, carries
#: a rounding error of about ``sqrt(eps)`` of that sum (``eps`` of the Gramian's dtype), so below it the
#: cosine would be noise, and a noise cosine would enter the moving average of the targets. (Above it
#: the cosine's rounding error is about ``eps / f^2`` for a norm ``f`` times that sum.)
_CANCELLED = 4.0
#: Floor of ``sqrt(1 - phi_hat^2)``, the divisor of the vaccine: it bounds the step where the target
#: similarity is within ``5e-7`` of 1, whose exact step (reaching a cosine of 1) is unbounded.
_MIN_TARGET_SINE = 1e-3


class GradVac(GeneratorMixin, Balancer):
    """Gradient Vaccine (Wang et al., ICLR 2021), Algorithm 1: pairwise similarity goals from a moving average.

    A target cosine ``phi_hat_ij`` per ordered pair of tasks (0 at the start) is an exponential
    moving average of the observed cosines, ``phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi_ij``.
    For each task ``i``, ``g_i'`` starts at ``g_i`` and visits the other tasks ``j`` in a random order;
    when ``phi_ij = cos(g_i', g_j)`` is below the target, it adds the multiple of ``g_j`` that brings
    the cosine up to the target exactly:
    ``g_i' += ||g_i'|| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2)) / (||g_j|| sqrt(1 - phi_hat^2)) g_j``.
    Every visited pair's observed ``phi_ij`` then enters its average. With all targets 0 (the first
    call) this is PCGrad's projection, and with the same task orders the same direction.

    As in :class:`~mtrl.balancers.pcgrad.PCGrad` each ``g_i'`` is carried as coefficients over the
    rows of ``G`` (row ``i`` of ``C``, ``g_i' = C[i] @ G``), so cosines and norms come from the Gramian
    and the work is vectorised over ``i``; the orders are drawn the same way, from the balancer's
    generator (``seed``). The targets are a float64 ``[T, T]`` buffer, so ``state_dict()`` holds them
    with the generator. A zero gradient has cosine 0 with every other and receives no vaccine, nor
    gives one; so does a modified gradient that has cancelled to rounding level (its norm below
    ``4 sqrt(eps)`` of the norms it is made of, ``eps`` of the Gramian's dtype), whose cosine would
    be noise.

    Deviations from the paper:

    * the paper sets targets per layer (or parameter group) of the shared network; here the whole
      shared trunk is one group, with one Gramian (LibMTL's ``whole_model`` granularity);
    * the paper sums the modified gradients; we return their mean (the mean-gradient scale, as
      PCGrad's here);
    * ``sqrt(1 - phi_hat^2)`` is floored at ``1e-3``, so a target within ``5e-7`` of 1 gives a
      large but finite vaccine instead of an unbounded one, and the cosines from the Gramian are
      clamped to ``[-1, 1]``; LibMTL's and TorchJD's ``+1e-8`` terms (which depend on the
      gradients' scale) are not used.

    Every visited pair's average moves, as in TorchJD's implementation (LibMTL moves it only when
    it applied a vaccine). ``beta = 0.01`` is a slow average over about 100 steps, for the many small,
    noisy updates of RL; the paper's value for its experiments was not confirmed here, and LibMTL
    and TorchJD default to 0.5.
    """

    run_inputs = ("seed",)

    @dataclass(frozen=True, kw_only=True)
    class Options(BalancerOptions):
        beta: float = 0.01
        """Rate of the moving average of the pairwise cosines that sets the targets, in [0, 1] (0: targets stay 0, PCGrad)."""

        def __post_init__(self) -> None:
            beta = self.beta
            if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta <= 1.0:
                raise ValueError(f"beta must be a number in [0, 1], got {beta!r}")
            self._set("beta", float(beta))

    def __init__(self, num_tasks: int, options: Options = Options(), *, seed: int = 0) -> None:
        super().__init__(num_tasks, options)
        self._init_generator(seed)
        self.register_buffer("targets", torch.zeros(num_tasks, num_tasks, dtype=torch.float64))  # [T, T], phi_hat

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        num = self.num_tasks
        device = gram.device
        tiny = torch.finfo(torch.float64).tiny
        cancelled = _CANCELLED * torch.finfo(gram.dtype).eps ** 0.5
        gram64 = gram.detach().to(torch.float64)  # [T, T]
        order = other_tasks_shuffled(num, self.generator(device), device)  # [T, T-1]
        norms = gram64.diagonal().clamp_min(0.0).sqrt()  # [T], ||g_j||
        rows = torch.arange(num, device=device)
        coef = torch.eye(num, dtype=torch.float64, device=device)  # [T, T], g_i' = coef[i] @ G
        coef_gram = gram64  # [T, T], coef @ K: row i holds <g_i', g_k>
        observed = torch.zeros_like(gram64)  # [T, T], phi_ij as visited
        for step in range(num - 1):
            other = order[:, step]  # [T], j for each i
            dots = coef_gram[rows, other]  # [T], <g_i', g_j>
            norm_i = (coef_gram * coef).sum(dim=1).clamp_min(0.0).sqrt()  # [T], ||g_i'||
            norm_i = torch.where(norm_i > cancelled * (coef.abs() @ norms), norm_i, torch.zeros_like(norm_i))
            norm_j = norms[other]  # [T]
            denom = norm_i * norm_j
            cosine = torch.where(denom > 0, dots / denom.clamp_min(tiny), torch.zeros_like(dots)).clamp(-1.0, 1.0)  # [T], phi_ij
            target = self.targets[rows, other]  # [T], phi_hat_ij
            sine = (1.0 - cosine**2).clamp_min(0.0).sqrt()
            target_sine = (1.0 - target**2).clamp_min(0.0).sqrt().clamp_min(_MIN_TARGET_SINE)
            vaccine = norm_i * (target * sine - cosine * target_sine) / (norm_j.clamp_min(tiny) * target_sine)  # [T]
            vaccine = torch.where((cosine < target) & (norm_j > 0), vaccine, torch.zeros_like(vaccine))
            coef = coef.index_put((rows, other), vaccine, accumulate=True)
            coef_gram = coef_gram + vaccine[:, None] * gram64[other]
            observed = observed.index_put((rows, other), cosine)
        beta = self.options.beta
        self.targets.copy_((1.0 - beta) * self.targets + beta * observed)  # the diagonal stays 0
        return (coef.sum(dim=0) / num).to(gram.dtype)
