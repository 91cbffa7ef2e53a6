"""PaCo: every task's network parameters composed from one shared parameter set by the task's vector.

Sun, Zhang, Xu, Tomizuka, "PaCo: Parameter-Compositional Multi-Task Reinforcement Learning",
NeurIPS 2022. A shared parameter set ``Phi = [phi_1, .., phi_K]`` (``K`` parameter vectors of the
whole network) and a compositional vector ``w_t`` (``K`` entries) per task give task ``t`` the
parameters ``theta_t = Phi w_t``; the network is then an ordinary MLP with ``theta_t``. ``Phi`` is
shared (its per-task gradients go to the balancer), ``w_t`` is task ``t``'s own.

The network is linear in its parameters layer by layer, so ``theta_t = Phi w_t`` is formed layer by
layer: each :class:`CompositionalLinear` holds its layer's slice of ``Phi`` (``K`` affine maps, each
initialised as ``nn.Linear``) and composes ``W_t = sum_k w_tk W_k`` and ``b_t = sum_k w_tk b_k``
before one matrix product per task. As in Meta-World+'s ``PaCoNetwork``, every layer, the output
layer too, is composed, with ReLU between them, and ``w_t`` is not normalised. Deviations:

- ``w_t`` is a per-task parameter ``[T, K]`` (a linear map of the one-hot with the same function),
  initialised uniform in ``±sqrt(3 / K)`` so that each composed weight has the spread of one
  ``nn.Linear``'s (mtrl's choice); with ``task_conditioning embedding`` it is a linear map of a
  learned task embedding.
- The paper's reset of the parameter set's diverged tasks (re-initialising ``w_t`` of a task whose
  loss explodes, with its loss masked out) is left out.
- ``per_task_heads false`` gives one ordinary output layer shared by the tasks instead of a
  composed one.
- The network reads the observation without the one-hot (the critics: and the action).

The composition is declared to :mod:`mtrl.gradients` (:meth:`PaCoNetwork.linear_compositions`), so
the per-task gradients of ``Phi`` stay factored as ``w_t (x) dL_t/dtheta_t`` instead of ``K`` times the
composed network's size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtrl.encoders.base import MultiTaskNetwork
from mtrl.encoders.config import TaskConditioning
from mtrl.encoders.task_code import TaskCode
from mtrl.linear_compositions import LinearComposition
from mtrl.nn import BatchedLinear


class CompositionalLinear(nn.Module):
    """One layer's slice of the parameter set: ``K`` affine maps, composed per task by ``w``.

    ``sets`` holds them (``weight: [K, in, out]``, ``bias: [K, out]``; :attr:`weight` and :attr:`bias`
    are the same tensors). ``forward(x, w)``: ``x: [T, B, in]``, ``w: [T, K] -> [T, B, out]``; under
    ``vmap`` over tasks ``[B, in], [K] -> [B, out]``.

    ``weight_offset`` and ``bias_offset`` are ``None`` buffers (not in the ``state_dict``): a tensor of
    the composed weight's (bias') shape substituted there by :func:`torch.func.functional_call` is
    added to the composed weight (bias), so that the gradient w.r.t. a zero offset is the gradient
    w.r.t. the task's composed parameters (:class:`mtrl.gradients.LinearComposition`).
    """

    weight_offset: Tensor | None
    bias_offset: Tensor | None

    def __init__(self, num_sets: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.sets = BatchedLinear(num_sets, in_features, out_features)
        self.register_buffer("weight_offset", None, persistent=False)
        self.register_buffer("bias_offset", None, persistent=False)

    @property
    def weight(self) -> nn.Parameter:
        return self.sets.weight  # [K, in, out]

    @property
    def bias(self) -> nn.Parameter:
        return self.sets.bias  # [K, out]

    def composed(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """The task's weight and bias: ``w: [T, K] -> ([T, in, out], [T, out])`` (vmap: ``[K] -> ([in, out], [out])``)."""
        weight = (w @ self.weight.flatten(1)).unflatten(-1, (self.in_features, self.out_features))
        bias = w @ self.bias
        if self.weight_offset is not None:
            weight = weight + self.weight_offset
        if self.bias_offset is not None:
            bias = bias + self.bias_offset
        return weight, bias

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        weight, bias = self.composed(w)
        return x @ weight + bias.unsqueeze(-2)  # [T, B, in] @ [T, in, out] -> [T, B, out]


class PaCoNetwork(MultiTaskNetwork):
    """An MLP with ``hidden_dims`` whose parameters for task ``t`` are ``Phi w_t``.

    ``forward(x)``: ``[T, B, in] -> [T, B, out]``; under ``vmap`` over tasks ``[B, in] -> [B, out]``.
    :meth:`parameter_set` and :meth:`task_parameter_vector` give ``Phi`` and ``theta_t`` flat.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int],
        out_dim: int,
        num_tasks: int,
        per_task_head: bool,
        num_parameter_sets: int,
        conditioning: TaskConditioning,
        embedding_dim: int,
    ) -> None:
        super().__init__()
        widths = [in_dim, *hidden_dims]
        self.layers = nn.ModuleList(
            [CompositionalLinear(num_parameter_sets, widths[i], widths[i + 1]) for i in range(len(hidden_dims))]
        )
        self.per_task_head = per_task_head
        self.head: nn.Module = (
            CompositionalLinear(num_parameter_sets, widths[-1], out_dim) if per_task_head else nn.Linear(widths[-1], out_dim)
        )
        bound = math.sqrt(3.0 / num_parameter_sets)
        self.task_code = TaskCode(num_tasks, num_parameter_sets, conditioning, embedding_dim, bound=bound)  # w_t

    def composed_layers(self) -> list[CompositionalLinear]:
        """The composed layers, in order (the head last when it is composed)."""
        return [*self.layers, self.head] if self.per_task_head else list(self.layers)

    def linear_compositions(self) -> list[LinearComposition]:
        """The composed layers' ``sets`` (weight and bias) with their offset slots, composed by ``w: [T, K]``."""
        offsets = {}
        for name, module in self.named_modules():
            if isinstance(module, CompositionalLinear):
                offsets |= {f"{name}.sets.weight": f"{name}.weight_offset", f"{name}.sets.bias": f"{name}.bias_offset"}
        return [LinearComposition(self.task_code(), offsets)]

    def parameter_set(self) -> Tensor:
        """``Phi``: ``[P, K]``, column ``k`` the parameter vector ``phi_k`` of every composed layer (weights then bias, in order)."""
        columns = [torch.cat([layer.weight.flatten(1), layer.bias], dim=1) for layer in self.composed_layers()]  # [K, in*out + out]
        return torch.cat(columns, dim=1).T

    def task_parameter_vector(self, w: Tensor) -> Tensor:
        """``theta_t`` for the compositional vector ``w: [K]``: the composed layers' weights and biases, flat, as in :meth:`parameter_set`."""
        parts = []
        for layer in self.composed_layers():
            weight, bias = layer.composed(w)
            parts += [weight.flatten(), bias]
        return torch.cat(parts)

    def forward(self, x: Tensor) -> Tensor:
        w = self.task_code()  # [T, K]; vmap: [K]
        hidden = x
        for layer in self.layers:
            hidden = F.relu(layer(hidden, w))  # [T, B, width]
        return self.head(hidden, w) if self.per_task_head else self.head(hidden)  # [T, B, out]

    def task_parameter_names(self) -> tuple[str, ...]:
        return tuple(f"task_code.{name}" for name in self.task_code.task_parameter_names())
