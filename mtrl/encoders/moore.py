"""MOORE: a mixture of shared experts whose outputs are made orthonormal per sample, mixed per task.

Hendawy, Peters, D'Eramo, "Multi-Task Reinforcement Learning with Mixture of Orthogonal Experts",
ICLR 2024. For a state ``s`` and task ``t``:

- ``k`` expert MLPs ``h_1 .. h_k`` (shared by every task) give ``U_s = [h_1(s), .., h_k(s)]``, ``k``
  vectors of ``d`` entries;
- the Gram-Schmidt process turns them, per sample, into an orthonormal basis
  ``V_s = GS(U_s)`` (``<v_i, v_j> = 1`` if ``i = j``, else ``0``), which needs ``k <= d``;
- the task's weights ``w_t`` (``k`` entries, from the task encoder) mix them: ``f_t(s) = tanh(V_s w_t)``;
- the task's output layer (per-task head) maps ``f_t(s)`` to the output.

As in the authors' Meta-World code (``moore/utils/networks_sac.py`` and the MT10/MT50 run
scripts): each expert is an MLP with the network's hidden sizes, ReLU between its layers and none
after its last; the task encoder is a bias-free linear map of the one-hot with Xavier-uniform
initialisation, and its weights are not normalised (no softmax); tanh after the mixing, nothing
before it. Deviations:

- The task encoder is a per-task parameter ``[T, k]`` (:class:`~mtrl.encoders.task_code.TaskCode`):
  for a one-hot input it is the same function as the linear layer, but each task's weights get
  that task's own gradient instead of passing through the balancer. With
  ``task_conditioning embedding`` the weights are a linear map of a learned task embedding.
- Modified Gram-Schmidt (each projection removed from the running remainder) instead of the
  classical form: the same basis in exact arithmetic, closer to orthonormal in float32; a norm is
  clamped at :data:`NORM_EPS` so that a zero expert output gives zeros rather than NaNs.
- The experts' and heads' layers start as ``nn.Linear`` does (the rest of mtrl), not Xavier-uniform.
- The experts read the observation without the one-hot (as in the paper); the critics' experts
  read the observation and the action.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtrl.encoders.base import MultiTaskNetwork, head_parameter_names, output_layer
from mtrl.encoders.config import TaskConditioning
from mtrl.encoders.task_code import TaskCode
from mtrl.nn import BatchedLinear

NORM_EPS = 1e-12
"""Lower bound of a norm that Gram-Schmidt divides by."""


def gram_schmidt(vectors: Tensor, eps: float = NORM_EPS) -> Tensor:
    """Orthonormalise ``k`` vectors, in order, for every leading index: ``[..., k, d] -> [..., k, d]``.

    Row ``i`` of the result is vector ``i`` minus its projections on rows ``0 .. i-1``, divided by its
    norm (modified Gram-Schmidt); differentiable, batched over every leading axis, on the input's
    device. Half-precision inputs (the networks' forward under bf16 autocast) are orthonormalised in float32.
    """
    if vectors.dtype in (torch.float16, torch.bfloat16):
        vectors = vectors.float()
    basis: list[Tensor] = []
    for i in range(vectors.shape[-2]):
        remainder = vectors[..., i, :]  # [..., d]
        for previous in basis:
            remainder = remainder - (remainder * previous).sum(-1, keepdim=True) * previous
        norm = torch.linalg.vector_norm(remainder, dim=-1, keepdim=True).clamp_min(eps)  # [..., 1]
        basis.append(remainder / norm)
    return torch.stack(basis, dim=-2)  # [..., k, d]


class MooreNetwork(MultiTaskNetwork):
    """``k`` experts (each an MLP with ``hidden_dims``), orthonormalised per sample, mixed per task, then the head.

    ``forward(x)``: ``[T, B, in] -> [T, B, out]``; under ``vmap`` over tasks ``[B, in] -> [B, out]``.
    :meth:`expert_basis` gives the orthonormal expert outputs ``[T, B, k, d]``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int],
        out_dim: int,
        num_tasks: int,
        per_task_head: bool,
        num_experts: int,
        conditioning: TaskConditioning,
        embedding_dim: int,
    ) -> None:
        super().__init__()
        if num_experts > hidden_dims[-1]:
            raise ValueError(f"MOORE needs num_experts <= the expert output width {hidden_dims[-1]}, got {num_experts}")
        self.num_experts = num_experts
        layers: list[nn.Module] = []
        width = in_dim
        for index, hidden in enumerate(hidden_dims):
            layers.append(BatchedLinear(num_experts, width, hidden))  # one affine map per expert: [k, in, out]
            if index < len(hidden_dims) - 1:
                layers.append(nn.ReLU())
            width = hidden
        self.experts = nn.Sequential(*layers)
        xavier_bound = math.sqrt(6.0 / (num_tasks + num_experts))  # Xavier-uniform of the bias-free Linear(T, k)
        self.task_code = TaskCode(num_tasks, num_experts, conditioning, embedding_dim, bound=xavier_bound)
        self.head = output_layer(num_tasks, width, out_dim, per_task_head)
        self._head_names = head_parameter_names(per_task_head)

    def expert_basis(self, x: Tensor) -> Tensor:
        """The experts' outputs made orthonormal per sample: ``[T, B, in] -> [T, B, k, d]`` (vmap: ``[B, k, d]``)."""
        outputs = self.experts(x.unsqueeze(-3))  # [T, 1, B, in] -> [T, k, B, d]; vmap: [k, B, d]
        return gram_schmidt(outputs.transpose(-3, -2))  # [T, B, k, d]

    def forward(self, x: Tensor) -> Tensor:
        basis = self.expert_basis(x)  # [T, B, k, d]
        weights = self.task_code()  # [T, k]; vmap: [k]
        mixed = (weights.unsqueeze(-2).unsqueeze(-2) @ basis).squeeze(-2)  # [T, 1, 1, k] @ [T, B, k, d] -> [T, B, d]
        return self.head(torch.tanh(mixed))  # [T, B, out]

    def task_parameter_names(self) -> tuple[str, ...]:
        return tuple(f"task_code.{name}" for name in self.task_code.task_parameter_names()) + self._head_names
