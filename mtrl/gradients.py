"""Per-task gradients of shared parameters at about the cost of one backward pass.

Every batch is task-first (``[T, B, ...]``) and each task's loss only reads its own ``B`` rows, so
``torch.func.vmap`` of ``torch.func.grad`` over the task axis (shared parameters unbatched, per-task
parameters and data batched) does the FLOPs of one ordinary backward while keeping the ``T``
gradients apart. Gradient-balancing methods (MGDA, Sener & Koltun 2018; PCGrad, Yu et al. 2020;
CAGrad, Liu et al. 2021) need exactly these ``[T, D]`` gradients of the shared parameters; their
reference code gets them with a Python loop of ``T`` backward passes instead.

The gradients stay in one ``[T, *shape]`` block per shared parameter (what the vmapped backward
produces). Balancers that act through weights over the task gradients only need the ``[T, T]``
Gramian, a sum of one product per block, and the direction ``weights @ G``, again per block, so
the ``[T, D]`` matrix is never concatenated on that path; :attr:`PerTaskGradients.shared` builds it
on demand for everything else.

A shared parameter set that enters its network only through a per-task linear composition
(PaCo's parameter set; declared by a module's ``linear_compositions()``,
:mod:`mtrl.linear_compositions`) keeps its per-task gradients factored: the vmapped backward
differentiates a per-task zero offset added to the composed ``theta_t`` (giving ``dL_t/dtheta_t``)
instead of the set itself.

Nothing here synchronises with the host (no ``.item()``, ``.cpu()``, no branching on values).

With ``compiled=True`` the vmapped backward (forward, backward and the per-task gradients of
every loss) runs through ``torch.compile`` with static shapes: the first call for each loss function
and set of shapes compiles (a few seconds on the CPU; later processes reuse inductor's on-disk
cache), later calls run the compiled code. The compiled code fuses the elementwise work around
the matrix products and drops the per-operation overhead of the two function transforms (on the
CPU the per-task gradients then cost less than the plain eager backward: docs/benchmarks.md). The gradients
equal the eager ones up to float rounding. A new closure of the same loss function (e.g. one made
per update) reuses the compiled code; dynamo compiles again for another loss function, new shapes
or dtypes, or a changed torch thread count, up to :data:`mtrl.compile.GRAPHS_PER_FUNCTION` graphs
in a process, and runs eagerly beyond that.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap
from torch.utils._pytree import tree_map

from mtrl.balancers.base import Balancer
from mtrl.compile import compile_static
from mtrl.linear_compositions import (
    FactoredGradient,
    LinearComposition,
    SharedBlock,
    add_block_cross_gram,
    block_combine,
    dense_block,
    linear_compositions,
    parameter_shape,
)

TaskLoss = Callable[..., Any]
"""``loss_fn(shared_params, task_params_slice, *input_slices) -> loss`` (or ``(loss, aux)``)."""


class MultiTaskModule(Protocol):
    """A module whose parameters split into shared ones and per-task ones (leading task axis)."""

    def shared_parameters(self) -> dict[str, nn.Parameter]: ...

    def task_parameters(self) -> dict[str, nn.Parameter]: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class PerTaskGradients:
    """The result of :func:`per_task_gradients`; every tensor is detached from autograd.

    Attributes:
        shared_blocks: gradient of each task's loss w.r.t. each shared parameter, by name, in the
            order of the ``shared_params`` mapping: ``[T, *param.shape]``, or a
            :class:`FactoredGradient` for a parameter set of a :class:`LinearComposition`.
        task: gradient of the per-task parameters by name, same shapes as the parameters
            (``[T, ...]``); slice ``t`` holds the gradient of task ``t``'s loss only.
        losses: ``[T]`` each task's loss.
        aux: the auxiliary outputs of ``loss_fn`` stacked over tasks (``None`` without ``has_aux``).
    """

    shared_blocks: dict[str, SharedBlock]
    task: dict[str, Tensor]
    losses: Tensor
    aux: Any = None

    @property
    def num_tasks(self) -> int:
        return self.losses.shape[0]

    @cached_property
    def shared(self) -> Tensor:
        """``[T, D]``: the shared blocks flattened and concatenated in order (one copy, cached; factored ones expanded)."""
        dense = {name: dense_block(block) for name, block in self.shared_blocks.items()}
        return flatten_per_task(dense, self.num_tasks, self.losses)

    def gram(self) -> Tensor:
        """``G @ G.T`` (``[T, T]``) of the shared gradients, summed block by block without a concat."""
        return self.cross_gram(self)

    def cross_gram(self, other: PerTaskGradients) -> Tensor:
        """``G @ G_other.T`` (``[T, T]``): entry ``(i, j)`` is ``<g_i, g_j of other>``, summed block by block.

        ``other`` holds the gradients of the same shared parameters (another batch's).
        """
        gram = self.losses.new_zeros(self.num_tasks, self.num_tasks)  # [T, T]
        for block, other_block in zip(self.shared_blocks.values(), other.shared_blocks.values()):
            add_block_cross_gram(gram, block, other_block)
        return gram


def flatten_per_task(grads: Mapping[str, Tensor], num_tasks: int, like: Tensor | None = None) -> Tensor:
    """Concatenate ``[T, *shape]`` tensors (mapping order) into one ``[T, D]`` matrix."""
    if not grads:
        return torch.zeros(num_tasks, 0) if like is None else like.new_zeros(num_tasks, 0)
    return torch.cat([g.reshape(num_tasks, -1) for g in grads.values()], dim=1)  # [T, D]


def per_task_gradients(
    loss_fn: TaskLoss,
    shared_params: Mapping[str, Tensor],
    task_params: Mapping[str, Tensor],
    task_inputs: Sequence[Tensor],
    has_aux: bool = False,
    chunk_size: int | None = None,
    compiled: bool = False,
    compositions: Sequence[LinearComposition] = (),
) -> PerTaskGradients:
    """Gradients of every task's loss w.r.t. the shared and its own per-task parameters.

    Args:
        loss_fn: ``loss_fn(shared_params, task_params_slice, *input_slices)`` returns one task's
            scalar loss (or ``(loss, aux)`` with ``has_aux``) from that task's slice of the per-task
            parameters (``[...]`` of each ``[T, ...]``) and of every input (``[B, ...]`` of
            ``[T, B, ...]``, or a scalar of a ``[T]`` tensor).
        shared_params: parameters every task uses, by name (no task axis).
        task_params: per-task parameters by name, task axis first (may be empty).
        task_inputs: data tensors, task axis first.
        has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
        chunk_size: passed to ``torch.func.vmap``: tasks per chunk, to bound memory (``None``: all).
        compiled: run the vmapped backward through ``torch.compile`` (see the module docstring).
        compositions: parameter sets of ``shared_params`` composed linearly per task (names as in
            ``shared_params``): their gradients come back factored (:class:`FactoredGradient`), and
            ``loss_fn`` receives their offset slots (zeros) among the per-task parameters.

    Returns:
        :class:`PerTaskGradients` with ``shared`` in the iteration order of ``shared_params``.
    """
    task_inputs = tuple(task_inputs)
    if not task_inputs:
        raise ValueError("task_inputs must hold at least one tensor with the task axis first")
    num_tasks = task_inputs[0].shape[0]
    slots = {name: slot for composition in compositions for name, slot in composition.offsets.items()}
    unknown = sorted(slots.keys() - shared_params.keys())
    if unknown:
        raise ValueError(f"composed parameter sets {unknown} are not among the shared parameters")
    differentiated = {name: param for name, param in shared_params.items() if name not in slots}
    constant = {name: shared_params[name] for name in slots}  # read through the offsets' gradients only
    offsets = {slot: shared_params[name].new_zeros(num_tasks, *shared_params[name].shape[1:]) for name, slot in slots.items()}
    vmapped = _compiled_vmapped_gradients if compiled else _vmapped_gradients
    (shared_grads, task_grads), value = vmapped(
        loss_fn, has_aux, chunk_size, differentiated, dict(task_params) | offsets, constant, *task_inputs
    )
    coefficients = {
        name: composition.coefficients.detach() for composition in compositions for name in composition.offsets
    }  # [T, K] each
    shared_blocks: dict[str, SharedBlock] = {
        name: FactoredGradient(coefficients[name], task_grads[slots[name]]) if name in slots else shared_grads[name]
        for name in shared_params
    }
    task = {name: grad for name, grad in task_grads.items() if name not in offsets}
    losses, aux = value if has_aux else (value, None)
    return PerTaskGradients(shared_blocks=shared_blocks, task=task, losses=losses, aux=aux)


def _vmapped_gradients(
    loss_fn: TaskLoss,
    has_aux: bool,
    chunk_size: int | None,
    shared_params: dict[str, Tensor],
    task_params: dict[str, Tensor],
    constant_params: dict[str, Tensor],
    *task_inputs: Tensor,
) -> tuple[tuple[dict[str, Tensor], dict[str, Tensor]], Any]:
    """``((shared grads, task grads), value)`` of ``loss_fn`` for every task from one vmapped backward.

    ``constant_params`` are shared parameters that ``loss_fn`` reads but that are not differentiated.
    """

    def loss_of(shared: dict[str, Tensor], task: dict[str, Tensor], constant: dict[str, Tensor], *inputs: Tensor) -> Any:
        return loss_fn(shared | constant, task, *inputs)

    in_dims = (None, 0, None) + (0,) * len(task_inputs)
    grad_fn = grad_and_value(loss_of, argnums=(0, 1), has_aux=has_aux)
    # torch.func.grad ignores an outer no_grad, which only stops it building a graph for its results
    with torch.no_grad():
        return vmap(grad_fn, in_dims=in_dims, chunk_size=chunk_size)(shared_params, task_params, constant_params, *task_inputs)


_compiled_vmapped_gradients = compile_static(_vmapped_gradients)


def balanced_direction(balancer: Balancer, grads: PerTaskGradients, second: PerTaskGradients | None = None) -> dict[str, Tensor]:
    """The balancer's update direction for each shared parameter, by name (parameter shapes).

    A balancer that keeps :meth:`Balancer.combine` (direction ``weights @ G`` from the Gramian) is
    served block by block: ``gram = sum_k G_k G_k^T``, ``weights = balancer.weights(gram, losses)``,
    ``direction_k = weights @ G_k``, with the same diagnostics recorded. One that overrides
    ``combine`` receives the concatenated ``[T, D]`` matrix.

    A balancer that :attr:`~Balancer.requires_second_batch` is given the cross Gramian
    ``G @ G2.T`` of ``grads`` and ``second`` (another batch's gradients; without it, ``grads``'
    Gramian) in place of the Gramian; the direction and the diagnostics are ``grads``'.
    """
    if grads.num_tasks != balancer.num_tasks:
        raise ValueError(f"{balancer.num_tasks}-task balancer given gradients of {grads.num_tasks} tasks")
    if type(balancer).combine is not Balancer.combine:
        flat = balancer.combine(grads.shared, grads.losses)  # [D]
        shapes = [parameter_shape(block) for block in grads.shared_blocks.values()]
        return {
            name: chunk.view(shape)
            for name, shape, chunk in zip(grads.shared_blocks, shapes, flat.split([shape.numel() for shape in shapes]))
        }
    gram = grads.gram()  # [T, T]
    two_batch = balancer.requires_second_batch and second is not None
    weights = balancer.weights(grads.cross_gram(second) if two_batch else gram, grads.losses)  # [T]
    balancer.record(gram, weights)
    return {name: block_combine(weights, block) for name, block in grads.shared_blocks.items()}


def _as_list(params: Sequence[Tensor] | Mapping[str, Tensor]) -> list[Tensor]:
    return list(params.values()) if isinstance(params, Mapping) else list(params)


def _set_grad(param: Tensor, grad: Tensor | None) -> None:
    """Replace ``param.grad`` by ``grad`` (zeros for ``None``), reusing an existing buffer."""
    if grad is None:
        grad = torch.zeros_like(param)
    if param.grad is None:
        param.grad = grad.detach().clone()
    else:
        param.grad.copy_(grad)


@torch.no_grad()
def write_gradients(params: Sequence[Tensor] | Mapping[str, Tensor], flat_direction: Tensor) -> None:
    """Unflatten ``flat_direction: [D]`` into the ``.grad`` of ``params`` (in their order).

    The order is that of :attr:`PerTaskGradients.shared` when ``params`` is the same mapping (or
    its values) that was given as ``shared_params``. Existing gradients are replaced, not added to,
    so an ordinary ``torch.optim`` optimizer can step on the combined direction.
    """
    tensors = _as_list(params)
    total = sum(p.numel() for p in tensors)
    if flat_direction.shape != (total,):
        raise ValueError(f"flat_direction must have shape [{total}], got {tuple(flat_direction.shape)}")
    for param, chunk in zip(tensors, flat_direction.split([p.numel() for p in tensors])):
        _set_grad(param, chunk.view_as(param))


@torch.no_grad()
def write_gradients_by_name(params: Mapping[str, Tensor], grads: Mapping[str, Tensor | None]) -> None:
    """Set ``params[name].grad = grads[name]`` for every name (e.g. :attr:`PerTaskGradients.task`)."""
    missing = params.keys() - grads.keys()
    if missing:
        raise KeyError(f"no gradient for parameters {sorted(missing)}")
    for name, param in params.items():
        _set_grad(param, grads[name])


def module_task_loss(module: nn.Module, loss_fn: Callable[..., Any]) -> TaskLoss:
    """Turn ``loss_fn(forward, *input_slices)`` into the ``loss_fn`` of :func:`per_task_gradients`.

    ``forward(*args)`` calls ``module`` on one task's slice with the given (shared and per-task
    slice) parameters through ``torch.func.functional_call``.
    """

    def task_loss(shared: dict[str, Tensor], task: dict[str, Tensor], *inputs: Tensor) -> Any:
        params = {**shared, **task}

        def forward(*args: Any, **kwargs: Any) -> Any:
            return functional_call(module, params, args, kwargs)

        return loss_fn(forward, *inputs)

    return task_loss


class BalancedGradients(NamedTuple):
    """What :func:`balanced_gradients` gives: the gradient to step on for every parameter, the losses and aux."""

    grads: dict[str, Tensor | None]  # by parameter name (shared and per-task); None: no gradient (zero)
    losses: Tensor  # [T] detached
    aux: Any  # the loss function's aux stacked over tasks, None without has_aux


def balanced_gradients(
    module: MultiTaskModule,
    loss_fn: Callable[..., Any],
    task_inputs: Sequence[Tensor],
    balancer: Balancer,
    has_aux: bool = False,
    chunk_size: int | None = None,
    compiled: bool = False,
    second_inputs: Sequence[Tensor] | None = None,
) -> BalancedGradients:
    """The gradients of one balanced multi-task update of ``module``, as tensors (nothing written to ``.grad``).

    ``loss_fn(forward, *input_slices)`` computes one task's loss (or ``(loss, aux)``) where
    ``forward`` runs ``module`` on that task's slice (see :func:`module_task_loss`), and
    ``task_inputs`` are ``[T, B, ...]`` tensors. The gradients:

    - shared parameters: ``balancer``'s direction (for :class:`~mtrl.balancers.Mean`, the gradient
      of the mean of the task losses);
    - per-task parameters: each task's slice gets its own task's unweighted loss gradient (the
      gradient of the sum of the task losses), never balanced.

    When ``balancer.requires_grads`` is False (loss-weighting methods such as FAMO, Liu et al.
    2023) no per-task gradient is formed: the ``[T]`` losses come from one vmapped forward, the
    balancer gives weights ``w = balancer.weights(None, losses)`` and records them with
    ``balancer.record(None, w)`` (such a balancer accepts ``gram=None`` in both), the shared
    parameters get the gradient of ``(w.detach() * losses).sum()`` from one ordinary backward, and
    the per-task parameters the gradient of ``losses.sum()`` (from the same backward, each task's
    slice divided by its weight: the weights must be positive). :class:`~mtrl.balancers.Mean`
    takes this path at ``T = 1`` or without statistics.

    ``second_inputs`` (task-grouped like ``task_inputs``) are an independent second batch for a
    balancer that :attr:`~mtrl.balancers.Balancer.requires_second_batch` (SDMGrad): their per-task
    gradients come from the same (compiled) vmapped backward and only enter the balancer's weights
    (:func:`balanced_direction`); the losses, the aux and every gradient returned are the first
    batch's. Other balancers ignore them (nothing is computed).

    ``chunk_size`` bounds the memory of the vmapped backward and ``compiled`` runs it through
    ``torch.compile`` (see :func:`per_task_gradients`); neither applies to the loss-weighted path.
    """
    shared, task = module.shared_parameters(), module.task_parameters()
    task_loss = module_task_loss(module, loss_fn)  # type: ignore[arg-type]
    if balancer.requires_grads:
        compositions = linear_compositions(module)  # type: ignore[arg-type]
        grads = per_task_gradients(task_loss, shared, task, task_inputs, has_aux, chunk_size, compiled, compositions)
        second = None
        if balancer.requires_second_batch and second_inputs is not None:
            second = per_task_gradients(task_loss, shared, task, second_inputs, has_aux, chunk_size, compiled, compositions)
        return BalancedGradients(balanced_direction(balancer, grads, second) | grads.task, grads.losses, grads.aux)
    return _loss_weighted_gradients(task_loss, shared, task, task_inputs, balancer, has_aux)


def balanced_backward(
    module: MultiTaskModule,
    loss_fn: Callable[..., Any],
    task_inputs: Sequence[Tensor],
    balancer: Balancer,
    has_aux: bool = False,
    chunk_size: int | None = None,
    compiled: bool = False,
    second_inputs: Sequence[Tensor] | None = None,
) -> Tensor | tuple[Tensor, Any]:
    """Set ``.grad`` of every parameter of ``module`` to :func:`balanced_gradients` (same arguments).

    Afterwards ``optimizer.step()`` applies the balanced update. Returns the detached per-task
    losses ``[T]``, and the stacked aux with ``has_aux``.
    """
    result = balanced_gradients(module, loss_fn, task_inputs, balancer, has_aux, chunk_size, compiled, second_inputs)
    write_gradients_by_name({**module.shared_parameters(), **module.task_parameters()}, result.grads)
    return (result.losses, result.aux) if has_aux else result.losses


def _loss_weighted_gradients(
    task_loss: TaskLoss,
    shared: dict[str, nn.Parameter],
    task: dict[str, nn.Parameter],
    task_inputs: Sequence[Tensor],
    balancer: Balancer,
    has_aux: bool,
) -> BalancedGradients:
    """Shared gradients from ``(w * losses).sum()``, per-task ones from ``losses.sum()``.

    One backward of ``(w * losses).sum()`` serves both: slice ``t`` of a per-task parameter only
    reaches loss ``t``, so its gradient there is ``w_t`` times the wanted one and is divided by
    ``w_t``. (Two backward passes, one per group, would run the shared part of the graph twice: for
    an actor loss that is the whole critic.) The loss-weighting balancers' weights are positive; a
    zero weight would leave its task's slice a zero gradient. With one task the loss is called on
    the only slice directly: the same computation without ``vmap``'s per-operation overhead.
    """
    if balancer.num_tasks == 1:
        first = lambda x: x[0]  # noqa: E731
        value = task_loss(shared, tree_map(first, task), *tree_map(first, tuple(task_inputs)))
        value = tree_map(lambda x: x.unsqueeze(0) if isinstance(x, Tensor) else x, value)
    else:
        in_dims = (None, 0) + (0,) * len(task_inputs)
        value = vmap(task_loss, in_dims=in_dims)(shared, task, *task_inputs)
    losses, aux = value if has_aux else (value, None)  # [T]
    with torch.no_grad():
        weights = balancer.weights(None, losses.detach())  # type: ignore[arg-type]  # [T]
        balancer.record(None, weights)  # type: ignore[arg-type]
    weights = weights.to(losses.dtype)
    params = {**shared, **task}
    grads = torch.autograd.grad((weights * losses).sum(), list(params.values()), allow_unused=True)
    grads_by_name = dict(zip(params.keys(), grads))
    # task t's slice of a per-task parameter only reaches loss t: its gradient is w_t times its own
    inverse = 1.0 / weights.clamp_min(torch.finfo(weights.dtype).tiny)  # [T]
    for name in task:
        grad = grads_by_name[name]
        if grad is not None:
            grads_by_name[name] = grad * inverse.view(-1, *([1] * (grad.dim() - 1)))
    return BalancedGradients(grads_by_name, losses.detach(), detach_tree(aux))


def detach_tree(tree: Any) -> Any:
    """``tree`` (a loss function's aux) with every tensor detached."""
    return tree_map(lambda value: value.detach() if isinstance(value, Tensor) else value, tree)
