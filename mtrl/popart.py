"""PopArt per task: value targets normalised by running statistics, the output layer rescaled to preserve outputs.

van Hasselt, Guez, Hessel, Mnih & Silver 2016, "Learning values across many orders of magnitude"
(NeurIPS), Algorithm 1, per task as in Hessel, Soyer, Espeholt, Czarnecki, Schmitt & van Hasselt
2019, "Multi-task Deep Reinforcement Learning with PopArt" (AAAI). The value network predicts a
normalised value ``n_t(s) = w_t . h(s) + b_t`` with one output layer per task, and the value is

    v_t(s) = sigma_t * n_t(s) + mu_t,

with ``mu_t``, ``sigma_t`` the running mean and standard deviation of task ``t``'s value targets
(ART). The critic is trained on normalised targets, ``(G - mu_t) / sigma_t``. Whenever the statistics
move to ``mu'_t, sigma'_t`` the task's output layer is rescaled so that every unnormalised prediction
is preserved exactly (POP):

    w'_t = w_t * sigma_t / sigma'_t,    b'_t = (sigma_t * b_t + mu_t - mu'_t) / sigma'_t.

Statistics: exponential moving averages with step size ``beta`` of the first and second moments of
each task's targets, ``m_t <- (1 - beta) m_t + beta mean(G_t)``, ``q_t <- (1 - beta) q_t + beta
mean(G_t^2)``, debiased by the weight of the updates so far (``c <- (1 - beta) c + beta``, ``mu_t =
m_t / c``, ``sigma_t^2 = q_t / c - mu_t^2``) so that the first update gives the first targets' own
mean and deviation rather than a pull towards the initial 0 and 1; ``sigma_t`` is kept in
``[SIGMA_MIN, SIGMA_MAX]``. Before any update ``mu = 0``, ``sigma = 1``: the identity.

Deviations: the papers update the statistics at every learner step (SGD on each new batch of
targets); PPO's targets are fixed for a whole rollout (its lambda-returns), so the statistics move
once per rollout, from all of its targets, before its epochs, and ``beta`` is a rate per rollout;
the moving averages are debiased (the papers' start from 0 and 1 and are not). The optimiser's state
(Adam's moments of the output layer) is not rescaled with the layer, as in the papers' use with
adaptive optimisers. The statistics are float64 buffers, part of the ``state_dict``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtrl.nn import BatchedLinear

SIGMA_MIN = 1e-4
"""Smallest standard deviation a task's statistics give (a task whose targets are constant)."""
SIGMA_MAX = 1e6
"""Largest standard deviation a task's statistics give."""


class PerTaskPopArt(nn.Module):
    """Each task's running target statistics and the rescaling of a per-task output layer (module docstring).

    Buffers (float64): ``first_moment [T]``, ``second_moment [T]``, ``weight []`` (the debiasing weight ``c``).
    """

    first_moment: Tensor
    second_moment: Tensor
    weight: Tensor

    def __init__(self, num_tasks: int, beta: float) -> None:
        super().__init__()
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"PopArt's step size beta must be in (0, 1], got {beta!r}")
        self.beta = float(beta)
        self.register_buffer("first_moment", torch.zeros(num_tasks, dtype=torch.float64))  # [T]
        self.register_buffer("second_moment", torch.zeros(num_tasks, dtype=torch.float64))  # [T]
        self.register_buffer("weight", torch.zeros((), dtype=torch.float64))

    def statistics(self) -> tuple[Tensor, Tensor]:
        """``(mu, sigma)``, ``[T]`` each in float64 (0 and 1 before any update)."""
        started = self.weight > 0
        weight = torch.where(started, self.weight, torch.ones_like(self.weight))
        mean = self.first_moment / weight  # [T]
        variance = self.second_moment / weight - mean.square()  # [T]
        std = variance.clamp_min(0.0).sqrt().clamp(SIGMA_MIN, SIGMA_MAX)
        return torch.where(started, mean, torch.zeros_like(mean)), torch.where(started, std, torch.ones_like(std))

    def normalize(self, targets: Tensor) -> Tensor:
        """``(G - mu_t) / sigma_t``: ``[T, N] -> [T, N]`` in ``targets``' dtype."""
        mean, std = self.statistics()
        return ((targets - mean[:, None].to(targets.dtype)) / std[:, None].to(targets.dtype)).to(targets.dtype)

    def unnormalize(self, normalized: Tensor) -> Tensor:
        """``sigma_t * n + mu_t``: ``[T, B] -> [T, B]`` in ``normalized``'s dtype."""
        mean, std = self.statistics()
        return normalized * std[:, None].to(normalized.dtype) + mean[:, None].to(normalized.dtype)

    @torch.no_grad()
    def update(self, targets: Tensor, head: BatchedLinear) -> None:
        """Move the statistics towards ``targets: [T, N]`` (ART) and rescale ``head`` (``[T, in, 1]``, ``[T, 1]``) to preserve its outputs (POP)."""
        if head.weight.shape[0] != self.first_moment.shape[0] or head.out_features != 1:
            raise ValueError(f"PopArt needs one scalar output per task; got a head of shape {tuple(head.weight.shape)}")
        old_mean, old_std = self.statistics()  # [T] each
        targets = targets.to(torch.float64)
        keep = 1.0 - self.beta
        self.first_moment.mul_(keep).add_(self.beta * targets.mean(dim=1))
        self.second_moment.mul_(keep).add_(self.beta * targets.square().mean(dim=1))
        self.weight.mul_(keep).add_(self.beta)
        new_mean, new_std = self.statistics()
        ratio = old_std / new_std  # [T]
        head.weight.copy_((head.weight.double() * ratio[:, None, None]).to(head.weight.dtype))
        shifted = (old_std[:, None] * head.bias.double() + (old_mean - new_mean)[:, None]) / new_std[:, None]  # [T, 1]
        head.bias.copy_(shifted.to(head.bias.dtype))
