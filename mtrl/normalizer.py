"""Running observation statistics and the normalisation they give (PPO's observation normaliser)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RunningMeanStd(nn.Module):
    """Running mean and variance of observations; ``forward`` normalises and clips.

    The statistics (float64 buffers, so millions of samples do not drift) are merged batch by batch
    with the parallel formula of Chan, Golub & LeVeque 1979. Being buffers, they are part of the
    module's ``state_dict`` and so of every checkpoint.
    """

    def __init__(self, dim: int, clip: float = 10.0, epsilon: float = 1e-8) -> None:
        super().__init__()
        self.dim, self.clip, self.epsilon = dim, clip, epsilon
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))  # [D]
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))  # [D]
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Merge the observations ``x: [..., D]`` into the statistics."""
        flat = x.reshape(-1, self.dim).to(torch.float64)  # [K, D]
        batch_count = flat.shape[0]
        batch_mean, batch_var = flat.mean(0), flat.var(0, correction=0)  # [D], [D]
        total = self.count + batch_count
        delta = batch_mean - self.mean  # [D]
        squares = self.var * self.count + batch_var * batch_count + delta.pow(2) * self.count * batch_count / total
        self.mean.add_(delta * batch_count / total)
        self.var.copy_(squares / total)
        self.count.copy_(total)

    def forward(self, x: Tensor) -> Tensor:
        """``[..., D] -> [..., D]``: ``(x - mean) / sqrt(var + epsilon)`` clipped to ``±clip``, in ``x``'s dtype."""
        scale = torch.rsqrt(self.var + self.epsilon).to(x.dtype)  # [D]
        return ((x - self.mean.to(x.dtype)) * scale).clamp(-self.clip, self.clip)
