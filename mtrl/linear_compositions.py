"""Shared parameter sets composed linearly per task, and their per-task gradients kept factored.

A shared parameter set that enters its network only through a per-task linear composition
``theta_t = sum_k c_tk Phi_k`` (PaCo's parameter set, :mod:`mtrl.encoders.paco`) has the per-task
gradients ``g_t = c_t (x) dtheta_t`` with ``dtheta_t = dL_t/dtheta_t``: ``K`` times the size of
``theta``. :mod:`mtrl.gradients` keeps them factored (:class:`FactoredGradient`); the Gramian block is
``<g_i, g_j> = (c_i . c_j) <dtheta_i, dtheta_j>`` and the direction
``sum_t a_t g_t = sum_t (a_t c_t) (x) dtheta_t``, each at the cost of one ordinary layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
from torch import Tensor, nn


class LinearComposition(NamedTuple):
    """Shared parameter sets that a network reads only as ``theta_t = sum_k coefficients[t, k] Phi[k]``.

    ``coefficients: [T, K]`` (detached by :func:`per_task_gradients`); ``offsets`` maps the name of each
    set ``Phi`` (a shared parameter ``[K, *theta.shape]``) to the name of a slot in the same
    module tree (a buffer registered as ``None``) whose value, when :func:`torch.func.functional_call`
    substitutes a tensor of ``theta``'s shape, the network adds to ``theta_t``. Names are relative
    to the module that declares them.
    """

    coefficients: Tensor
    offsets: dict[str, str]


class ComposesParameters(Protocol):
    """A module whose shared parameter sets enter only through per-task linear compositions."""

    def linear_compositions(self) -> list[LinearComposition]: ...


def linear_compositions(module: nn.Module) -> list[LinearComposition]:
    """Every :class:`LinearComposition` declared in ``module``'s tree, with names relative to ``module``."""
    found = []
    for prefix, submodule in module.named_modules():
        if callable(getattr(submodule, "linear_compositions", None)):  # a ComposesParameters
            at = f"{prefix}." if prefix else ""
            for composition in submodule.linear_compositions():
                offsets = {at + name: at + slot for name, slot in composition.offsets.items()}
                found.append(LinearComposition(composition.coefficients, offsets))
    return found


@dataclass(frozen=True)
class FactoredGradient:
    """Per-task gradients of a linearly composed parameter set ``Phi: [K, *theta.shape]``, kept factored.

    Task ``t``'s gradient is ``coefficients[t] (x) theta_grads[t]`` (``[K, *theta.shape]``), where
    ``theta_grads[t] = dL_t/dtheta_t`` for ``theta_t = sum_k coefficients[t, k] Phi[k]``.
    """

    coefficients: Tensor  # [T, K]
    theta_grads: Tensor  # [T, *theta.shape]

    @property
    def parameter_shape(self) -> torch.Size:
        return torch.Size((self.coefficients.shape[1], *self.theta_grads.shape[1:]))

    def flat_theta_grads(self) -> Tensor:
        return self.theta_grads.reshape(self.theta_grads.shape[0], -1)  # [T, P]

    def dense(self) -> Tensor:
        """``[T, K, *theta.shape]``: the materialised per-task gradients."""
        flat = self.coefficients.unsqueeze(-1) * self.flat_theta_grads().unsqueeze(1)  # [T, K, P]
        return flat.view(-1, *self.parameter_shape)

    def cross_gram(self, other: FactoredGradient) -> Tensor:
        """``[T, T]``: ``(c c_other^T) * (dtheta dtheta_other^T)``."""
        coefficient_gram = self.coefficients @ other.coefficients.T  # [T, T]
        return coefficient_gram * (self.flat_theta_grads() @ other.flat_theta_grads().T)

    def combine(self, weights: Tensor) -> Tensor:
        """``sum_t weights[t] g_t`` (``[K, *theta.shape]``) without forming the ``g_t``."""
        weighted = weights.to(self.coefficients.dtype).unsqueeze(-1) * self.coefficients  # [T, K]
        return (weighted.T @ self.flat_theta_grads()).view(self.parameter_shape)  # [K, P]


SharedBlock = Tensor | FactoredGradient
"""Per-task gradients of one shared parameter: ``[T, *param.shape]``, or factored."""


def dense_block(block: SharedBlock) -> Tensor:
    """``[T, *param.shape]`` of a block, expanding a factored one."""
    return block.dense() if isinstance(block, FactoredGradient) else block


def add_block_cross_gram(gram: Tensor, block: SharedBlock, other: SharedBlock) -> None:
    """Add to ``gram: [T, T]``, in place, entry ``(i, j)`` = ``<g_i of block, g_j of other>``."""
    if isinstance(block, FactoredGradient) and isinstance(other, FactoredGradient):
        gram += block.cross_gram(other)
        return
    flat, other_flat = dense_block(block), dense_block(other)
    gram.addmm_(flat.reshape(flat.shape[0], -1), other_flat.reshape(other_flat.shape[0], -1).T)  # [T, D_k] views


def block_combine(weights: Tensor, block: SharedBlock) -> Tensor:
    """``sum_t weights[t] g_t`` in the parameter's shape."""
    if isinstance(block, FactoredGradient):
        return block.combine(weights)
    return (weights.to(block.dtype) @ block.reshape(block.shape[0], -1)).view(block.shape[1:])


def parameter_shape(block: SharedBlock) -> torch.Size:
    return block.parameter_shape if isinstance(block, FactoredGradient) else block.shape[1:]
