"""The gradient-balancer interface shared by every method in this package.

A balancer turns the per-task gradients of the shared parameters, ``grads: [T, D]``, into one
update direction ``[D]`` on the scale of the mean gradient. Every method here expresses its
direction as weights over the rows of ``grads`` (``direction = weights @ grads``), and almost all
of them only need the Gramian ``grads @ grads.T`` (``[T, T]``) to find those weights, so the
expensive ``D``-sized work is two matrix products whatever the method.

Hot-path rules (see docs/ARCHITECTURE.md): no ``.item()``, ``.cpu()``, numpy or Python branching
on tensor values; fixed iteration counts; randomness from a generator the balancer owns.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from mtrl.balancers.options import BalancerOptions, SolverOptions
from mtrl.checks import check_positive_int

RUN_INPUTS = ("seed", "compile_solver")
"""The run-level inputs a balancer's constructor may take (keywords, listed in its ``run_inputs``):
``seed`` seeds the generator of a balancer that draws random numbers, ``compile_solver`` runs an
iterative solver through ``torch.compile``."""


def gram_statistics(gram: Tensor) -> tuple[Tensor, Tensor]:
    """Number of conflicting task pairs and mean pairwise cosine similarity, from a ``[T, T]`` Gramian.

    A pair (i, j), i < j, conflicts when ``<g_i, g_j> < 0``. Tasks with a zero gradient have cosine 0
    with every other task. For T = 1 both statistics are 0.
    """
    num_tasks = gram.shape[0]
    norms = gram.diagonal().clamp_min(0).sqrt()  # [T]
    cosine = gram / (norms[:, None] * norms[None, :]).clamp_min(torch.finfo(gram.dtype).tiny)  # [T, T]
    upper = torch.triu(torch.ones_like(gram, dtype=torch.bool), diagonal=1)  # [T, T]
    conflicting = (gram < 0).logical_and(upper).sum()
    num_pairs = max(num_tasks * (num_tasks - 1) // 2, 1)
    mean_cosine = torch.where(upper, cosine, torch.zeros_like(cosine)).sum() / num_pairs
    return conflicting, mean_cosine


class Balancer(nn.Module):
    """Base class: per-task gradients ``[T, D]`` (and losses ``[T]``) -> one direction ``[D]``.

    Subclasses declare their options as a nested frozen dataclass ``Options``
    (:mod:`mtrl.balancers.options`), take ``(num_tasks, options, *, <run_inputs>)`` (``options`` defaulting to ``Options()``) and
    implement :meth:`weights`. State that must survive a checkpoint (EMAs, logits,
    generators) lives in buffers or in ``get_extra_state`` so ``state_dict()`` holds all of it.

    The diagnostics of the last call (weights per task, number of conflicting pairs, mean pairwise
    cosine) are kept as device tensors, so reading them costs no host synchronisation until the
    trainer logs them.
    """

    #: False for methods that weight the losses without looking at per-task gradients (FAMO);
    #: the trainer may then skip computing per-task gradients and backprop ``weights @ losses``.
    requires_grads: bool = True
    #: True for methods that need the per-task gradients themselves, not only their Gramian and ``weights @ G``
    #: (as does one that overrides :meth:`combine`); their balanced steps then form the per-task
    #: gradients (:func:`mtrl.gramian.needs_full_gradients`).
    requires_full_gradients: bool = False
    #: True for methods that read the per-task losses in :meth:`weights`.
    requires_losses: bool = False
    #: True for methods whose weights need the per-task gradients of two independent batches
    #: (SDMGrad): the trainer then computes the second batch's per-task gradients ``G2`` too and passes
    #: :meth:`weights` the cross Gramian ``G1 @ G2.T`` (``[T, T]``, neither symmetric nor positive
    #: semi-definite) in place of the Gramian; the direction is ``weights @ G1``, the first batch's.
    #: Without a second batch (:meth:`combine`, a step given one batch) the cross Gramian is the Gramian.
    requires_second_batch: bool = False
    #: The balancer's options: a frozen dataclass, the single declaration of what it takes.
    Options: ClassVar[type[BalancerOptions]] = BalancerOptions
    #: The run-level inputs (of :data:`RUN_INPUTS`) the constructor takes as keywords.
    run_inputs: ClassVar[tuple[str, ...]] = ()
    #: False for methods whose update runs no faster compiled as one function than step by step
    #: (docs/benchmarks.md); an ``auto`` update path then stays step by step. See :attr:`compiles_well`.
    compiles_whole_update: bool = True

    @property
    def compiles_well(self) -> bool:
        """Whether an update compiled as one function pays with this balancer: one that forms per-task
        gradients (a loss-weighted update is one ordinary backward) and has not said otherwise."""
        return self.requires_grads and self.compiles_whole_update

    def __init__(self, num_tasks: int, options: BalancerOptions | None = None) -> None:
        """``options`` must be the class's own ``Options`` (None: its defaults); they are checked for ``num_tasks``."""
        super().__init__()
        self.num_tasks = check_positive_int("num_tasks", num_tasks)
        options = type(self).Options() if options is None else options
        if type(options) is not type(self).Options:
            raise TypeError(f"{type(self).__name__} takes {type(self).__name__}.Options, got {type(options).__qualname__}")
        options.check_num_tasks(num_tasks)
        self.options = options
        self.register_buffer("last_weights", torch.full((num_tasks,), 1.0 / num_tasks))  # [T]
        self.register_buffer("last_conflicting_pairs", torch.zeros((), dtype=torch.long))
        self.register_buffer("last_mean_cosine", torch.zeros(()))

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        """Weights ``[T]`` over the task gradients, from the Gramian ``[T, T]`` (the cross Gramian of two
        batches for a method that :attr:`requires_second_batch`) and losses ``[T]``."""
        raise NotImplementedError

    def combine(self, grads: Tensor, losses: Tensor | None = None) -> Tensor:
        """The update direction ``[D]`` for per-task gradients ``grads: [T, D]``."""
        self._check_inputs(grads, losses)
        gram = grads @ grads.T  # [T, T]
        weights = self.weights(gram, losses)  # [T]
        self.record(gram, weights)
        return weights.to(grads.dtype) @ grads

    def record(self, gram: Tensor | None, weights: Tensor) -> None:
        """Store the diagnostics of one step (device tensors, no synchronisation).

        Without a Gramian (a balancer that does not need per-task gradients) only the weights are
        updated.
        """
        self.last_weights.copy_(weights.detach())
        if gram is None:
            return
        conflicting, mean_cosine = gram_statistics(gram.detach())
        self.last_conflicting_pairs.copy_(conflicting)
        self.last_mean_cosine.copy_(mean_cosine)

    def diagnostics(self) -> dict[str, Tensor]:
        """The last step's weights ``[T]``, conflicting-pair count and mean pairwise cosine."""
        return {
            "weights": self.last_weights,
            "conflicting_pairs": self.last_conflicting_pairs,
            "mean_cosine": self.last_mean_cosine,
        }

    def metrics(self, prefix: str) -> dict[str, Tensor]:
        """The diagnostics as log tags ``balancer/<prefix>/{weights, conflicting_pairs, mean_cosine}``."""
        return {f"balancer/{prefix}/{name}": value.float() for name, value in self.diagnostics().items()}

    def _check_inputs(self, grads: Tensor, losses: Tensor | None) -> None:
        if grads.dim() != 2 or grads.shape[0] != self.num_tasks:
            raise ValueError(
                f"grads must have shape [num_tasks={self.num_tasks}, D], got {tuple(grads.shape)}"
            )
        if self.requires_losses and (losses is None or losses.shape != (self.num_tasks,)):
            shape = None if losses is None else tuple(losses.shape)
            raise ValueError(
                f"{type(self).__name__} needs per-task losses of shape [{self.num_tasks}], got {shape}"
            )


class SolverBalancer(Balancer):
    """A balancer whose weights come from a fixed number of solver iterations.

    The run input ``compile_solver`` runs the iterations through ``torch.compile``. Its ``Options``
    derive from :class:`~mtrl.balancers.options.SolverOptions` (``max_iter``, fixed in runs) unless
    the iteration count is a run's hyperparameter under another name (SDMGrad's ``inner_steps``).
    """

    Options: ClassVar[type[BalancerOptions]] = SolverOptions
    run_inputs = ("compile_solver",)

    def __init__(self, num_tasks: int, options: BalancerOptions | None = None, *, compile_solver: bool = False) -> None:
        super().__init__(num_tasks, options)
        self.compile_solver = bool(compile_solver)
