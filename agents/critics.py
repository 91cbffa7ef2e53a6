"""SAC's twin critics as one interface: the scalar MLP critics and BRC's categorical critics.

A twin critic is two Q-networks ``q1``, ``q2`` over ``[obs, action]`` whose outputs (``forward``) the
SAC update only hands back to the critic's own rules, so the update is written once for both kinds:

- :meth:`TwinQ.bellman_target`: the target of the critic loss from the target critics' outputs at
  ``(s', a')``, the reward, the continuation ``gamma * (1 - done)`` and the entropy penalty
  ``alpha * log pi(a'|s')``;
- :meth:`TwinQ.td_loss`: one task's critic loss from the online critics' outputs and that target;
- :meth:`TwinQ.actor_value`: the Q the actor maximises; :meth:`TwinQ.q_values`: each critic's Q.

The scalar critics (:class:`agents.sac.TwinCritic`) keep SAC's clipped double-Q (Haarnoja et al.
2018): the target is ``r + c * (min(Q1', Q2') - alpha log pi)``, the loss the sum of the two squared
errors, the actor's Q ``min(Q1, Q2)``.

:class:`CategoricalTwinCritic` is the critic of BRC (Nauman, Cygan, Sferrazza, Kumar & Abbeel 2025,
"Bigger, Regularized, Categorical: High-Capacity Value Functions are Efficient Multi-Task Learners",
arXiv:2505.23150; their ``naumix/BiggerRegularizedCategorical`` code): two BroNets (:mod:`mtrl.bronet`)
with ``num_bins`` logits each over a fixed support ``[v_min, v_max]`` (:mod:`mtrl.categorical`).
As in BRC:

- the target distribution is the C51 projection (Bellemare et al. 2017) of the soft Bellman update
  of the *average* of the two target critics' distributions: atoms ``r + c * (z - alpha log pi)``
  with probabilities ``(p1' + p2') / 2``, clipped to the support and projected;
- the loss is the sum over the two critics of the cross-entropy to that target, averaged over the
  task's batch (the per-task loss the balancer sees is this per-task cross-entropy);
- the actor's Q is the mean of the average distribution, ``sum_i z_i (p1_i + p2_i) / 2`` (the mean
  of the two expected values): no minimum over the two critics, here or in the target.

Why the projection and not HL-Gauss (Farebrother et al. 2024, "Stop Regressing", ICML, which smooths
the scalar target ``r + c * (E[Z'] - alpha log pi)`` with a Gaussian over the bins): BRC itself uses
the projection (its ``update_critic``), so the results it reports are for this target; the projection
keeps the whole next-state distribution rather than its mean; and the projected target's mean is
exactly the scalar target clipped to the support, where a Gaussian cut off at the support's ends
moves the mean of targets near ``v_min`` or ``v_max``.

Deviations from BRC: the twin critics are two separate networks, as mtrl's MLP critics (BRC runs an
ensemble of two through ``vmap``, the same function); the task is told by the one-hot id in the
observation and the output layer is per task (:class:`mtrl.bronet.MultiTaskBroNet`) instead of a
learned task embedding in the input and one shared output layer; the returns must fit the support,
which BRC ensures with its per-task reward normalisation (``sac.reward_normalization per-task``),
else the targets beyond it are clipped.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mtrl.bronet import MultiTaskBroNet
from mtrl.categorical import CategoricalSupport

TwinOutputs = tuple[Tensor, Tensor]
"""What a twin critic's ``forward`` gives: each critic's Q ``[...]`` (scalar) or logits ``[..., K]`` (categorical)."""


class TwinQ(nn.Module):
    """Two Q-networks ``q1``, ``q2`` (set by the subclass), their parameter split and the critic's rules."""

    q1: nn.Module
    q2: nn.Module

    def forward(self, obs: Tensor, action: Tensor) -> TwinOutputs:
        """``[..., obs_dim], [..., A] -> (out1, out2)``: each critic's output for ``[obs, action]``."""
        x = torch.cat([obs, action], dim=-1)
        return self.q1(x), self.q2(x)

    def q_values(self, outputs: TwinOutputs) -> TwinOutputs:
        """Each critic's Q, ``[...]`` each."""
        raise NotImplementedError

    def actor_value(self, outputs: TwinOutputs) -> Tensor:
        """The Q the actor maximises, ``[...]``."""
        raise NotImplementedError

    def bellman_target(self, next_outputs: TwinOutputs, reward: Tensor, continuation: Tensor, penalty: Tensor) -> Tensor:
        """The critic loss's target from the target critics' outputs at ``(s', a')`` (``reward``, ``continuation``
        ``gamma * (1 - done)`` and ``penalty`` ``alpha * log pi(a'|s')``: ``[...]`` each)."""
        raise NotImplementedError

    def td_loss(self, outputs: TwinOutputs, target: Tensor) -> Tensor:
        """One task's critic loss (a scalar) from the online critics' outputs on its rows and their target."""
        raise NotImplementedError

    def shared_parameters(self) -> dict[str, nn.Parameter]:
        return {f"{q}.{k}": v for q in ("q1", "q2") for k, v in getattr(self, q).shared_parameters().items()}

    def task_parameters(self) -> dict[str, nn.Parameter]:
        return {f"{q}.{k}": v for q in ("q1", "q2") for k, v in getattr(self, q).task_parameters().items()}


class CategoricalTwinCritic(TwinQ):
    """BRC's critics: two :class:`mtrl.bronet.MultiTaskBroNet` of ``num_bins`` logits over ``[v_min, v_max]``.

    ``forward`` gives the logits ``[..., K]`` of each critic; the rules are BRC's (module docstring).
    """

    def __init__(
        self,
        in_dim: int,
        num_tasks: int,
        width: int,
        blocks: int,
        num_bins: int,
        v_min: float,
        v_max: float,
        per_task_heads: bool = True,
    ) -> None:
        super().__init__()
        shape: tuple[Any, ...] = (in_dim, width, blocks, num_bins, num_tasks, per_task_heads)
        self.q1, self.q2 = MultiTaskBroNet(*shape), MultiTaskBroNet(*shape)
        self.support = CategoricalSupport(num_bins, v_min, v_max)

    def average_probs(self, outputs: TwinOutputs) -> Tensor:
        """``(softmax(logits1) + softmax(logits2)) / 2``: ``[..., K]``, in float32 (also from bfloat16 logits)."""
        return (outputs[0].float().softmax(dim=-1) + outputs[1].float().softmax(dim=-1)) / 2

    def q_values(self, outputs: TwinOutputs) -> TwinOutputs:
        return self.support.mean(outputs[0].float()), self.support.mean(outputs[1].float())

    def actor_value(self, outputs: TwinOutputs) -> Tensor:
        return (self.average_probs(outputs) * self.support.atoms).sum(dim=-1)

    def bellman_target(self, next_outputs: TwinOutputs, reward: Tensor, continuation: Tensor, penalty: Tensor) -> Tensor:
        """The projected target distribution ``[..., K]``."""
        return self.support.bellman_target(self.average_probs(next_outputs), reward, continuation, penalty)

    def td_loss(self, outputs: TwinOutputs, target: Tensor) -> Tensor:
        logits1, logits2 = outputs[0].float(), outputs[1].float()
        cross_entropy = self.support.cross_entropy
        return cross_entropy(logits1, target).mean() + cross_entropy(logits2, target).mean()
