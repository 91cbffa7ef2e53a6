"""The networks of the actors and critics, chosen by config: one factory, one interface.

:func:`make_network` builds the network an :class:`~mtrl.encoders.config.EncoderConfig` names; every
one has the interface of :class:`mtrl.nn.MultiTaskMLP` (see :mod:`mtrl.encoders.base`): ``forward``
on ``[T, B, in]`` and on one task's slice under ``vmap``, ``shared_parameters()`` and
``task_parameters()``, and ``head``, its output layer. So the agents build their networks through
this one call and never branch on the encoder, and the per-task gradients of every balancer flow
through each network as through the MLP.

- ``mlp``: :class:`mtrl.nn.MultiTaskMLP` itself (with one-hot conditioning: the network of mtrl
  before encoders existed, unchanged), or :class:`EmbeddedMLP` with a learned task embedding.
- ``moore``: :class:`mtrl.encoders.moore.MooreNetwork`.
- ``softmod``: :class:`mtrl.encoders.soft_modularization.SoftModularNetwork`.
- ``paco``: :class:`mtrl.encoders.paco.PaCoNetwork`.

:func:`observation_width` says how much of the observation a network reads: all of it for the MLP
with one-hot conditioning, the observation without its one-hot task id for the others.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtrl.encoders.base import MultiTaskNetwork
from mtrl.encoders.config import ENCODERS, EncoderConfig
from mtrl.encoders.moore import MooreNetwork, gram_schmidt
from mtrl.encoders.paco import PaCoNetwork
from mtrl.encoders.soft_modularization import SoftModularNetwork
from mtrl.encoders.task_code import TaskCode, TaskEmbedding
from mtrl.nn import MultiTaskMLP

__all__ = [
    "ENCODERS",
    "EmbeddedMLP",
    "EncoderConfig",
    "MooreNetwork",
    "MultiTaskNetwork",
    "PaCoNetwork",
    "SoftModularNetwork",
    "TaskCode",
    "TaskEmbedding",
    "gram_schmidt",
    "make_network",
    "observation_width",
]


class EmbeddedMLP(MultiTaskNetwork):
    """:class:`MultiTaskMLP` on the input with the task's learned embedding ``e_t`` appended.

    ``forward(x)``: ``[T, B, in] -> [T, B, out]`` reads ``[x, e_t]``; under ``vmap`` over tasks
    ``[B, in] -> [B, out]``. ``task.weight: [T, d]`` is per task, as is the head with per-task heads.
    """

    def __init__(
        self, in_dim: int, hidden_dims: Sequence[int], out_dim: int, num_tasks: int, per_task_head: bool, embedding_dim: int
    ) -> None:
        super().__init__()
        self.task = TaskEmbedding(num_tasks, embedding_dim)
        self.mlp = MultiTaskMLP(in_dim + embedding_dim, hidden_dims, out_dim, num_tasks, per_task_head)

    @property
    def head(self) -> nn.Module:  # type: ignore[override]
        return self.mlp.head

    def forward(self, x: Tensor) -> Tensor:
        embedding = self.task().unsqueeze(-2)  # [T, 1, d]; vmap: [1, d]
        return self.mlp(torch.cat([x, embedding.expand(*x.shape[:-1], -1)], dim=-1))  # [T, B, in + d] -> [T, B, out]

    def task_parameter_names(self) -> tuple[str, ...]:
        return ("task.weight", *(f"mlp.{name}" for name in self.mlp.task_parameters()))


def make_network(
    in_dim: int,
    hidden_dims: Sequence[int],
    out_dim: int,
    num_tasks: int,
    per_task_head: bool,
    encoder: EncoderConfig,
    layer_norm: bool = False,
) -> nn.Module:
    """The network ``encoder`` names, from ``in_dim`` inputs to ``out_dim`` outputs, for ``num_tasks`` tasks.

    ``hidden_dims`` are the hidden sizes of the MLP trunk, of each MOORE expert, of Soft
    Modularization's state embedding (its last one the embedding's width), of PaCo's composed MLP;
    ``per_task_head`` gives one output layer per task (else one shared). With ``encoder`` at its
    default (``mlp``, one-hot conditioning) this is exactly ``MultiTaskMLP(in_dim, hidden_dims,
    out_dim, num_tasks, per_task_head)``, drawing the same initial parameters. ``layer_norm`` puts a
    LayerNorm in every hidden layer of that MLP (the critics' option; the other networks refuse it).
    """
    if layer_norm and not encoder.reads_one_hot:
        raise ValueError(f"layer_norm is an option of the mlp encoder with one-hot task conditioning, not of {encoder.describe()}")
    conditioning = encoder.task_conditioning
    embedding_dim = encoder.option("task_embedding_dim") if conditioning == "embedding" else 0
    if encoder.name == "mlp":
        if conditioning == "onehot":
            return MultiTaskMLP(in_dim, hidden_dims, out_dim, num_tasks, per_task_head, layer_norm=layer_norm)
        return EmbeddedMLP(in_dim, hidden_dims, out_dim, num_tasks, per_task_head, embedding_dim)
    if encoder.name == "moore":
        return MooreNetwork(
            in_dim, hidden_dims, out_dim, num_tasks, per_task_head, encoder.option("num_experts"), conditioning, embedding_dim
        )
    if encoder.name == "softmod":
        options = (encoder.option(name) for name in ("num_modules", "module_layers", "module_width"))
        return SoftModularNetwork(in_dim, hidden_dims, out_dim, num_tasks, per_task_head, *options, conditioning, embedding_dim)
    if encoder.name == "paco":
        return PaCoNetwork(
            in_dim, hidden_dims, out_dim, num_tasks, per_task_head, encoder.option("num_parameter_sets"), conditioning, embedding_dim
        )
    raise ValueError(f"encoder.name must be one of {', '.join(map(repr, ENCODERS))}, got {encoder.name!r}")


def observation_width(obs_dim: int, num_tasks: int, one_hot_in_obs: bool, encoder: EncoderConfig) -> int:
    """How many leading entries of each observation the network reads.

    With ``one_hot_in_obs`` the last ``num_tasks`` entries of an observation are its one-hot task id;
    only a network that reads the task from its input (``encoder.reads_one_hot``) keeps them.
    """
    return obs_dim - num_tasks if one_hot_in_obs and not encoder.reads_one_hot else obs_dim
