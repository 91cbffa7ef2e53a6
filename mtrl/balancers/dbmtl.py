"""DB-MTL: Lin, Jiang, Ye, Zhang, Chen, Chen, Liu, Tsang, Kwok, "Dual-Balancing for Multi-Task
Learning", arXiv 2308.12029, 2023."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.balancers.base import Balancer
from mtrl.balancers.options import BalancerOptions, fixed_in_runs
from mtrl.checks import check_fraction, check_positive


class DBMTL(Balancer):
    """Dual-Balancing Multi-Task Learning (Lin et al., 2023): log-losses, gradients balanced to the largest norm.

    Loss-scale balancing: each task's loss is replaced by its logarithm, whose gradient is
    ``h_t = grad log L_t = g_t / L_t``. Gradient-magnitude balancing: every ``h_t`` is rescaled to
    the largest norm, ``alpha_t = max_s ||h_s|| / ||h_t||``, and the paper's update is
    ``sum_t alpha_t h_t``. In weights over the rows of ``G``: ``alpha_t / L_t``. We return their mean,
    ``w_t = max_s(||g_s|| / L_s) / (T ||g_t||)``: the direction is the mean of the task gradients'
    unit vectors times the largest log-loss gradient norm, so its scale is that of the gradients of
    the log-losses (the method's loss-scale balancing), not of the losses: where the losses are far
    from 1 the step is larger (losses below 1) or smaller than the mean gradient's. The norms come
    from the Gramian's diagonal and the losses from the trainer; a zero gradient gets weight 0.

    Deviations from the paper:

    * the paper keeps an exponential moving average of each task's log-loss gradient vector
      ``h_t <- grad log L_t + beta / k^sigma (h_t - grad log L_t)`` at step ``k``, with
      ``beta = 0.9`` and ``sigma = 0`` in the authors' implementation (LibMTL's ``DB_MTL``: the
      defaults of ``--DB_beta`` and ``--DB_beta_sigma``), and balances and sums the averages. A
      balancer returns weights over the rows of the current ``G``, which cannot express a past
      gradient, so there is no gradient average: the default is the paper's update with
      ``beta = 0``. ``norm_decay > 0`` is
      our addition, not the paper's average: it smooths only the norms, ``alpha_t`` coming from an
      exponential moving average of ``||h_t||`` (started at the first call's norms, kept in a buffer)
      while the directions stay the current ones;
    * ``sum`` becomes ``mean`` (as PCGrad's here), and the losses are floored at ``min_loss`` in place
      of the authors' ``log(L + 1e-8)``.
    """

    requires_losses = True

    @dataclass(frozen=True, kw_only=True)
    class Options(BalancerOptions):
        norm_decay: float = 0.0
        """Decay of a moving average of the log-loss gradient norms (0: the current norms, the paper with beta = 0)."""
        min_loss: float = fixed_in_runs(1e-8)
        """Floor of the per-task losses (they must be positive)."""

        def __post_init__(self) -> None:
            self._set("norm_decay", check_fraction("norm_decay", self.norm_decay))
            self._set("min_loss", check_positive("min_loss", self.min_loss))

    def __init__(self, num_tasks: int, options: Options = Options()) -> None:
        super().__init__(num_tasks, options)
        self.register_buffer("norm_average", torch.zeros(num_tasks, dtype=torch.float64))  # [T], of ||h_t||
        self.register_buffer("has_average", torch.zeros((), dtype=torch.bool))

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        if losses is None or losses.shape != (self.num_tasks,):
            shape = None if losses is None else tuple(losses.shape)
            raise ValueError(f"DBMTL needs per-task losses of shape [{self.num_tasks}], got {shape}")
        gram64 = gram.detach().to(torch.float64)  # [T, T]
        losses64 = losses.detach().to(torch.float64).clamp_min(self.options.min_loss)  # [T]
        log_norms = gram64.diagonal().clamp_min(0.0).sqrt() / losses64  # [T], ||h_t|| = ||g_t|| / L_t
        decay = self.options.norm_decay
        average = torch.where(self.has_average, decay * self.norm_average + (1.0 - decay) * log_norms, log_norms)  # [T]
        self.norm_average.copy_(average)
        self.has_average.fill_(True)
        scale = average.amax() / average.clamp_min(torch.finfo(torch.float64).tiny)  # [T], alpha_t
        weights = torch.where(average > 0, scale / (self.num_tasks * losses64), torch.zeros_like(scale))
        return weights.to(gram.dtype)
