"""A balancer defined outside mtrl: what a plugin package looks like (see mtrl's docs/plugins.md).

``inverse_norm`` weights each task by ``1 / ||g_t||^power``, normalised to sum to 1: tasks with small
gradients get more weight (``power = 0`` is the mean gradient). The package's ``pyproject.toml``
declares it in the ``mtrl.balancers`` entry-point group, with three broken ones for the tests:
``nan_weights`` (NaN weights), ``raises_plugin`` (raises at its first call) and ``broken_plugin``
(a class the module does not define).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.balancers import Balancer, BalancerOptions


class InverseNorm(Balancer):
    """Task weights proportional to ``||g_t||^-power`` (sum 1), from the Gramian's diagonal."""

    @dataclass(frozen=True, kw_only=True)
    class Options(BalancerOptions):
        power: float = 0.5
        """Exponent of the inverse gradient norm (0: the mean gradient)."""

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        norms = gram.diagonal().clamp_min(torch.finfo(gram.dtype).tiny).sqrt()  # [T]
        raw = norms.pow(-self.options.power)  # [T]
        return raw / raw.sum()


class NanWeights(Balancer):
    """Broken on purpose: NaN weights."""

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        return gram.diagonal() * float("nan")


class Raises(Balancer):
    """Broken on purpose: raises at its first call."""

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        raise FloatingPointError("the example plugin gives up")
