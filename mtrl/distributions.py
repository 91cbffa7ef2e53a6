"""Diagonal Gaussian policies: log-densities, entropies and the reparameterised tanh-Gaussian sample.

PPO's policy is a plain diagonal Gaussian (Schulman et al. 2017), SAC's a tanh-squashed one
(Haarnoja et al. 2018, appendix C: the change of variables ``a = tanh(u)``). Every function sums
over the last (action) axis and works on any leading shape, also on one task's slice under
``torch.func.vmap``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_prob(action: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """Log-density of a diagonal Gaussian, summed over the action dimensions: ``[..., A] -> [...]``."""
    z = (action - mean) * torch.exp(-log_std)  # [..., A]
    return (-0.5 * z.pow(2) - log_std - 0.5 * LOG_2PI).sum(-1)


def gaussian_entropy(log_std: Tensor) -> Tensor:
    """Entropy of a diagonal Gaussian, summed over the action dimensions: ``[..., A] -> [...]``."""
    return (log_std + 0.5 + 0.5 * LOG_2PI).sum(-1)


def squashed_gaussian(mean: Tensor, log_std: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
    """Reparameterised tanh-Gaussian sample and its log-probability (summed over action dims).

    ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))`` is the numerically stable form.
    """
    pre_tanh = mean + log_std.exp() * noise  # [..., A]
    gaussian = -0.5 * noise.pow(2) - log_std - 0.5 * LOG_2PI  # [..., A]
    correction = 2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))  # [..., A]
    return torch.tanh(pre_tanh), (gaussian - correction).sum(-1)
