"""Soft Modularization: layers of modules, softly routed per sample by the state and the task.

Yang, Xu, Wu, Wang, "Multi-Task Reinforcement Learning with Soft Modularization", NeurIPS 2020.
For a state ``s`` (the critics: state and action) and task ``t``, with ``n`` modules per layer and
``L`` layers of modules:

- the state embedding ``F(s)`` (an MLP, ``D`` outputs) and the task embedding ``H(z_t)`` (a linear
  map of the one-hot ``z_t``) meet in ``u = F(s) * H(z_t)`` (element-wise);
- the routing network gives, per layer, logits over module pairs: ``p^1 = W_d^1 ReLU(u)`` and
  ``p^{l+1} = W_d^{l+1} ReLU((W_u^l p^l) * u)`` (the paper's Eq. 5-6), each ``n x n`` logits made into
  routing weights by a softmax over the modules of layer ``l`` for each module of layer ``l + 1``
  (Eq. 7): every module of layer ``l + 1`` reads a convex combination of the outputs of layer ``l``;
- the base network: every module ``j`` of layer 1 reads ``ReLU(F(s))``; module ``i`` of layer
  ``l + 1`` reads ``g_i = ReLU(sum_j p^l_ij o_j)`` of the outputs ``o_j = W_j^l g_j`` of layer ``l``
  (Eq. 8); the last layer's outputs are combined by one more routing distribution over its ``n``
  modules, ``ReLU(sum_j q_j o_j)``, which the output layer reads.

The details the paper leaves open follow the authors' code (``torchrl/networks/nets.py:
ModularGatedCascadeCondNet``, which Meta-World+ reimplements): the ReLU after the weighted sum (the
paper's Eq. 8 puts it on each module's output before the sum), the last routing distribution over
the last layer's modules, ``W_u^l`` reading the previous layer's routing weights after the softmax,
and ``W_d``'s weights starting uniform in ``±ROUTING_INIT`` with zero biases (near-uniform routing at
first). Deviations:

- The task embedding ``H(z_t)`` is a per-task parameter ``[T, D]`` (the linear map of the one-hot
  with the same function; its rows get their task's own gradient instead of the balancer's
  direction; no separate bias); with ``task_conditioning embedding`` it is a linear map of a learned
  task embedding.
- Not taken from the authors' code: its extra MLP on ``u`` before the routing layers and the skip
  connections that feed every earlier layer's routing weights (not only the previous one's) to
  ``W_u``; the routing is the paper's equations.
- ``F`` is an MLP with the network's hidden sizes, ``D`` its last one; modules are affine maps of
  ``module_width`` outputs; the output layer is the network's (per-task) head, where the paper has one
  output layer shared by the tasks (``per_task_heads false`` gives that).
- Layers start as ``nn.Linear`` does, apart from ``W_d``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtrl.encoders.base import MultiTaskNetwork, head_parameter_names, output_layer
from mtrl.encoders.config import TaskConditioning
from mtrl.encoders.task_code import TaskCode
from mtrl.nn import MLP, BatchedLinear

ROUTING_INIT = 1e-3
"""Bound of the uniform initial weights of the routing logits' layers ``W_d`` (their biases start at zero)."""


class SoftModularNetwork(MultiTaskNetwork):
    """State embedding, routing network and ``module_layers`` layers of ``num_modules`` modules, then the head.

    ``forward(x)``: ``[T, B, in] -> [T, B, out]``; under ``vmap`` over tasks ``[B, in] -> [B, out]``.
    :meth:`routing_weights` gives the routing distributions.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int],
        out_dim: int,
        num_tasks: int,
        per_task_head: bool,
        num_modules: int,
        module_layers: int,
        module_width: int,
        conditioning: TaskConditioning,
        embedding_dim: int,
    ) -> None:
        super().__init__()
        embedding = hidden_dims[-1]  # D
        self.num_modules, self.module_layers = num_modules, module_layers
        self.state_encoder = MLP(in_dim, hidden_dims[:-1], embedding)  # F(s), without a last activation
        self.task_code = TaskCode(num_tasks, embedding, conditioning, embedding_dim)  # H(z_t)
        pairs = num_modules * num_modules
        self.routing_out = nn.ModuleList(
            [nn.Linear(embedding, pairs) for _ in range(module_layers - 1)] + [nn.Linear(embedding, num_modules)]
        )  # W_d^l: D -> n*n (between layers), D -> n (over the last layer)
        self.routing_in = nn.ModuleList([nn.Linear(pairs, embedding) for _ in range(module_layers - 1)])  # W_u^l: n*n -> D
        with torch.no_grad():
            for layer in self.routing_out:
                nn.init.uniform_(layer.weight, -ROUTING_INIT, ROUTING_INIT)
                nn.init.zeros_(layer.bias)
        widths = [embedding] + [module_width] * module_layers
        self.layers = nn.ModuleList([BatchedLinear(num_modules, widths[i], widths[i + 1]) for i in range(module_layers)])
        self.head = output_layer(num_tasks, module_width, out_dim, per_task_head)
        self._head_names = head_parameter_names(per_task_head)

    def routing_weights(self, state_embedding: Tensor) -> list[Tensor]:
        """Routing distributions from ``F(s): [T, B, D]`` (vmap: ``[B, D]``).

        ``module_layers - 1`` tensors ``[T, B, n, n]`` (entry ``[i, j]``: the weight of module ``j`` of
        layer ``l`` in the input of module ``i`` of layer ``l + 1``; a distribution over ``j``), then
        ``[T, B, n]``: the weights of the last layer's modules in the output.
        """
        u = state_embedding * self.task_code().unsqueeze(-2)  # F(s) * H(z_t): [T, B, D]
        weights: list[Tensor] = []
        hidden = F.relu(u)
        for index, layer in enumerate(self.routing_out):
            if index > 0:
                hidden = F.relu(self.routing_in[index - 1](weights[-1].flatten(-2)) * u)  # [T, B, D]
            logits = layer(hidden)  # [T, B, n * n] or, last, [T, B, n]
            if index < len(self.routing_out) - 1:
                logits = logits.unflatten(-1, (self.num_modules, self.num_modules))  # [T, B, n, n]
            weights.append(torch.softmax(logits, dim=-1))
        return weights

    def forward(self, x: Tensor) -> Tensor:
        state_embedding = self.state_encoder(x)  # [T, B, D]
        weights = self.routing_weights(state_embedding)
        outputs = self.layers[0](F.relu(state_embedding).unsqueeze(-3))  # [T, 1, B, D] -> [T, n, B, d]
        for index in range(1, self.module_layers):
            mixed = weights[index - 1] @ outputs.transpose(-3, -2)  # [T, B, n, n] @ [T, B, n, d] -> [T, B, n, d]
            outputs = self.layers[index](F.relu(mixed).transpose(-3, -2))  # [T, n, B, d]
        combined = (weights[-1].unsqueeze(-2) @ outputs.transpose(-3, -2)).squeeze(-2)  # [T, B, 1, n] @ [T, B, n, d] -> [T, B, d]
        return self.head(F.relu(combined))  # [T, B, out]

    def task_parameter_names(self) -> tuple[str, ...]:
        return tuple(f"task_code.{name}" for name in self.task_code.task_parameter_names()) + self._head_names
