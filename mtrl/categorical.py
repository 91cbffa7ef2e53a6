"""A value as a categorical distribution over a fixed support, its projected Bellman target and its loss.

The support is ``K`` evenly spaced atoms ``z_i = v_min + i * dz`` with ``dz = (v_max - v_min) / (K - 1)``;
a network's ``K`` logits per sample give the probabilities ``p_i = softmax(logits)_i`` and the value
``E[Z] = sum_i p_i z_i``.

The target is the C51 projection (Bellemare, Dabney & Munos 2017, "A Distributional Perspective on
Reinforcement Learning", ICML, Algorithm 1): the Bellman-shifted atoms ``Tz_j = r + c * (z_j - s)``
(``c`` the discount times the continuation flag, ``s`` SAC's entropy penalty ``alpha * log pi``), clipped
to ``[v_min, v_max]``, each hand their probability ``p_j`` to the two atoms around them in proportion
to the distance, ``b_j = (Tz_j - v_min) / dz``, ``l = floor(b_j)``, ``u = l + 1``:

    m_l += p_j * (u - b_j),   m_u += p_j * (b_j - l).

The projection keeps the mean of the clipped shifted atoms exactly: ``sum_i m_i z_i = sum_j p_j
clip(Tz_j)``, so for a target that lies inside the support the target's mean is the scalar soft
Bellman target ``r + c * (E[Z'] - s)``, and a point mass at ``z`` becomes one at ``clip(r + c (z - s))``
spread over its two neighbouring atoms. The loss is the cross-entropy ``-sum_i m_i log p_i`` of the
predicted distribution to the target (Bellemare et al.; Farebrother et al. 2024, "Stop Regressing:
Training Value Functions via Classification for Scalable Deep RL", ICML, for the cross-entropy as a
value loss in general).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtrl.checks import check_positive_int


def check_support(field_prefix: str, num_bins: int, v_min: float, v_max: float) -> None:
    """Refuse a support with fewer than 2 atoms or ``v_min >= v_max`` (a one-line ValueError naming the field)."""
    check_positive_int(f"{field_prefix}num_bins", num_bins, minimum=2)
    if not v_min < v_max:
        raise ValueError(f"{field_prefix}v_min must be < {field_prefix}v_max, got v_min={v_min!r}, v_max={v_max!r}")


class CategoricalSupport(nn.Module):
    """The atoms ``[K]`` (a non-persistent buffer: they follow the module's device, and no checkpoint holds them)
    and the operations on distributions over them: :meth:`mean`, :meth:`project`, :meth:`cross_entropy`."""

    atoms: Tensor

    def __init__(self, num_bins: int, v_min: float, v_max: float) -> None:
        super().__init__()
        check_support("", num_bins, v_min, v_max)
        self.num_bins, self.v_min, self.v_max = num_bins, float(v_min), float(v_max)
        self.bin_width = (self.v_max - self.v_min) / (num_bins - 1)
        self.register_buffer("atoms", torch.linspace(self.v_min, self.v_max, num_bins), persistent=False)  # [K]

    def mean(self, logits: Tensor) -> Tensor:
        """``E[Z]`` of ``softmax(logits)``: ``[..., K] -> [...]``."""
        return (logits.softmax(dim=-1) * self.atoms).sum(dim=-1)

    def project(self, probs: Tensor, values: Tensor) -> Tensor:
        """The C51 projection of the distribution putting ``probs[..., j]`` at ``values[..., j]`` onto the support.

        ``probs``, ``values``: ``[..., J]`` (any number ``J`` of source atoms); returns ``[..., K]``,
        a distribution (non-negative, summing to the sum of ``probs``) with mean ``sum_j probs_j
        clip(values_j, v_min, v_max)``.
        """
        position = (values.clamp(self.v_min, self.v_max) - self.v_min) / self.bin_width  # [..., J] in [0, K - 1]
        lower = position.floor().clamp(0, self.num_bins - 1)  # [..., J]
        upper_share = position - lower  # [..., J] in [0, 1]; 0 on an atom (also the last one)
        upper = (lower + 1).clamp(max=self.num_bins - 1)  # [..., J]
        target = probs.new_zeros(*probs.shape[:-1], self.num_bins)  # [..., K]
        target = target.scatter_add(-1, lower.long(), probs * (1.0 - upper_share))
        return target.scatter_add(-1, upper.long(), probs * upper_share)

    def bellman_target(self, next_probs: Tensor, reward: Tensor, continuation: Tensor, penalty: Tensor) -> Tensor:
        """The projected soft Bellman target of the next distribution ``next_probs: [..., K]``.

        The atoms move to ``reward + continuation * (z - penalty)`` (``reward``, ``continuation``,
        ``penalty``: ``[...]``; SAC's penalty is ``alpha * log pi(a'|s')``) and are projected back.
        """
        shifted = reward.unsqueeze(-1) + continuation.unsqueeze(-1) * (self.atoms - penalty.unsqueeze(-1))  # [..., K]
        return self.project(next_probs, shifted)

    @staticmethod
    def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
        """``-sum_i target_i log softmax(logits)_i``: ``[..., K], [..., K] -> [...]``."""
        return -(target * F.log_softmax(logits, dim=-1)).sum(dim=-1)

    def extra_repr(self) -> str:
        return f"num_bins={self.num_bins}, v_min={self.v_min}, v_max={self.v_max}"
