"""The balanced update without the per-task gradients: the ``[T, T]`` Gramian layer by layer, then one weighted gradient.

Every balancer that acts through weights (all but the loss-weighting ones and those that override
:meth:`~mtrl.balancers.Balancer.combine`) needs the per-task gradients ``G: [T, D]`` of the shared
parameters only through the Gramian ``G G^T`` and the direction ``w @ G``, the gradient of
``sum_t w_t L_t``. Neither needs ``G`` whole. Every batch is task-first (``[T, B, ...]``) and task
``t``'s loss reads only its own rows, so ONE ordinary backward of ``sum_t L_t`` gives, at every
layer, each task's output gradient in that task's rows. For a shared ``nn.Linear`` with input
``x: [T, N, in]`` and output gradient ``dy: [T, N, out]``, task ``t``'s weight gradient is
``dy_t^T x_t``, so the layer's share of the Gramian is formed from ``x`` and ``dy`` alone, and once
the balancer's weights are known the shared gradient is ``sum_t w_t dy_t^T x_t``: one matrix
product per layer, no second backward.

How the path sees the physical activations while the loss runs under ``torch.func.vmap``: the
agents' losses are written for one task and vmapped over the task axis (:mod:`mtrl.gradients`).
While the loss runs, forward hooks on the modules that hold shared parameters pass each call's
inputs and outputs through identity :class:`torch.autograd.Function` taps whose ``vmap`` rule
receives the physical, task-batched tensors: the input tap keeps ``x`` (task axis first), the output
tap hands its gradient ``dy`` to the call's record in the backward. The backward asks only for the
per-task parameters' gradients and for a probe that every output tap reads, so autograd forms the
activations' gradients and the heads' gradients but no shared weight gradient of the unweighted
loss. The loss code is the agents' own, unchanged.

Each shared parameter belongs to the deepest module around it that was called (its "unit"), and
the unit's rule forms its per-task gradients' Gramian:

- ``nn.Linear``: from ``x`` and ``dy``, either the per-task weight gradients a block of
  :data:`GRAM_BLOCK_ROWS` output rows at a time (``[T, rows, in]``) folded into the Gramian, or the
  kernel form ``<g_i, g_j> = sum_{b,b'} (dy_i[b] . dy_j[b']) (x_i[b] . x_j[b'])`` over pairs of task
  groups ``I <= J`` when that costs fewer multiply-adds (wide layers, few tasks:
  :func:`linear_gram_form`);
- ``nn.LayerNorm``: scale and shift gradients ``sum_b dy * xhat`` and ``sum_b dy``, ``[T, w]`` each,
  formed in the output tap's backward as ``dy`` arrives (the call's ``x`` and ``dy`` are dropped there);
- any other module (the encoders' :class:`~mtrl.nn.BatchedLinear` experts and modules, PaCo's
  composed layers, a parameter a network uses directly): the per-task gradients of that module's
  own parameters from a vmap over tasks of its vector-Jacobian product at the kept inputs and
  output gradients (one extra forward of the module), ``[T, *param.shape]`` for that module only.
  Always exact; its weighted gradient is one more vector-Jacobian product of the task-vmapped call
  with the weighted output gradients (summed over tasks inside autograd, never materialised).

Why not TorchJD's ``torchjd.autogram.Engine`` (0.18), the maintained library for this
(docs/balancers.md has the measurements): its module hooks do not see our vmapped losses (the
Gramian call fails); it works only with the network run on the whole batch and a second copy of
each loss written for it; it needs a second full backward of the weighted losses; its hooks and
``autograd.grad`` calls break a ``torch.compile`` full graph.

Nothing here reads a tensor back to the host. The taps, hooks and Python records are not
traceable by ``torch.compile`` as one graph, so the Gramian path runs step by step (an ``auto``
update graph stays off with it, :func:`mtrl.gradients.uses_gramian_path`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from mtrl.balancers.base import Balancer
from mtrl.gradients import (
    BalancedGradients,
    MultiTaskModule,
    detach_tree,
    module_task_loss,
)

GradientPath = Literal["auto", "materialised", "gramian"]
GRADIENT_PATHS: tuple[str, ...] = ("auto", "materialised", "gramian")
"""How a balanced step gets what its balancer reads (``sac.gradient_path``, ``ppo.gradient_path``):
materialised (the per-task gradients ``[T, *param.shape]`` of every shared parameter, :mod:`mtrl.gradients`) |
gramian (only their ``[T, T]`` Gramian, layer by layer, then one weighted gradient: this module; the update
then runs step by step) | auto (gramian from :data:`AUTO_GRAMIAN_MIN_ELEMENTS` numbers of per-task gradients,
or where the kernel form makes it the faster path, :func:`kernel_share`; else materialised:
:func:`resolve_gradient_path`)."""

AUTO_GRAMIAN_MIN_ELEMENTS = 256 * 2**20
"""``auto`` takes the Gramian path when the per-task gradients would hold at least this many numbers
(``T`` times the shared parameters: 1 GiB in float32). From there on the per-task gradients are several
times the plain update's memory while the Gramian path stays close to it, at a time close to the
materialised path's on the CPU or below it (docs/benchmarks.md); below it the materialised path's
memory is affordable and, compiled as the agents run it, it is the cheaper one at the presets' size,
unless the kernel form makes the Gramian path faster (:func:`kernel_share`)."""

AUTO_GRAMIAN_KERNEL_SHARE = 0.5
"""``auto`` also takes the Gramian path when, at the update's samples per task, the kernel form
(:func:`linear_gram_form`) serves more than this share of the shared parameters: wide layers and few
tasks, where the Gramian path measured faster than the compiled materialised one (width 2048, T = 10:
1.09 s against 1.32 s) with a quarter of its memory."""

KERNEL_RULE_MIN_WEIGHT = 2**20
"""Numbers in a shared ``nn.Linear`` weight (a 1024 x 1024 layer) from which :func:`kernel_share` counts it. The
kernel form's gain was measured on 2048 x 2048 layers, where the products decide the update's time; a small
network with a small batch (a test's, a smoke run's) can have fewer multiply-adds in the kernel form too, and
is kept on the compiled materialised path rather than moved to the uncompiled Gramian path on that count alone."""


GRAM_BLOCK_ROWS = 64
"""Output rows of a shared ``nn.Linear`` whose per-task weight gradients ``[T, rows, in]`` are formed at once and
folded into the Gramian. The block's products then have a row dimension large enough for the CPU's
matrix kernels to run at full speed (fewer rows ran them several times slower), and the block holds
``T * 64 * in`` numbers, less than the weight itself for ``T <= out / 64``."""


KERNEL_GROUP_ROWS = 256
"""Rows (tasks times samples per task) of a task group in the kernel form of a Linear's Gramian share
(:func:`linear_gram_form`): products of ``[256, in]`` by ``[in, 256]`` run near the matrix kernels'
full speed, and smaller groups waste less of the symmetric Gramian's work on pairs formed twice."""


def needs_full_gradients(balancer: Balancer) -> bool:
    """Whether ``balancer`` needs more than one batch's Gramian: it reads the per-task gradients themselves
    (it says so or overrides ``combine``) or the cross Gramian of two batches (``requires_second_batch``)."""
    return balancer.requires_full_gradients or balancer.requires_second_batch or type(balancer).combine is not Balancer.combine


def resolve_gradient_path(
    field_name: str, asked: str, module: MultiTaskModule, num_tasks: int, balancer: Balancer, samples_per_task: int | None = None
) -> str:
    """``materialised`` or ``gramian``: the path ``asked`` gives for ``module`` balanced by ``balancer``.

    ``auto`` takes the Gramian path when the per-task gradients of the shared parameters would hold
    at least :data:`AUTO_GRAMIAN_MIN_ELEMENTS` numbers, or, given the update's ``samples_per_task``,
    when the kernel form serves more than :data:`AUTO_GRAMIAN_KERNEL_SHARE` of them
    (:func:`kernel_share`). A balancer that needs the full gradients (:func:`needs_full_gradients`)
    gets the materialised path under ``auto`` and is refused under ``gramian`` (one-line ValueError
    naming ``field_name``).
    """
    if asked not in GRADIENT_PATHS:
        raise ValueError(f"{field_name} must be one of {', '.join(GRADIENT_PATHS)}, got {asked!r}")
    full = balancer.requires_grads and needs_full_gradients(balancer)
    if asked == "gramian" and full:
        raise ValueError(f"{field_name} gramian cannot serve {type(balancer).__name__}, which needs the per-task gradients themselves or two batches; use materialised or auto")
    if asked != "auto":
        return asked
    if full:
        return "materialised"
    elements = num_tasks * sum(param.numel() for param in module.shared_parameters().values())
    if elements >= AUTO_GRAMIAN_MIN_ELEMENTS:
        return "gramian"
    faster = samples_per_task is not None and kernel_share(module, num_tasks, samples_per_task) > AUTO_GRAMIAN_KERNEL_SHARE
    return "gramian" if faster else "materialised"


def kernel_share(module: MultiTaskModule, num_tasks: int, samples_per_task: int) -> float:
    """The share of ``module``'s shared parameters held by ``nn.Linear`` weights of at least
    :data:`KERNEL_RULE_MIN_WEIGHT` numbers whose Gramian share takes the kernel form
    (:func:`linear_gram_form`) at ``samples_per_task`` rows per task (one call per update)."""
    shared = {id(param): param.numel() for param in module.shared_parameters().values()}
    total = sum(shared.values())
    kernel = 0
    for layer in module.modules():  # type: ignore[attr-defined]
        if type(layer) is nn.Linear and id(layer.weight) in shared and layer.weight.numel() >= KERNEL_RULE_MIN_WEIGHT:
            if linear_gram_form(num_tasks, samples_per_task, layer.in_features, layer.out_features) == "kernel":
                kernel += shared[id(layer.weight)]
    return kernel / total if total else 0.0


@dataclass
class _Call:
    """One call of a module during the vmapped forward: its inputs and its outputs' gradients, task axis first."""

    leaves: list[Any]  # the call's flattened (args, kwargs); tensors replaced by their physical [T, ...] form
    spec: Any  # pytree spec of (args, kwargs)
    output_grads: list[Tensor | None] = field(default_factory=list)  # [T, ...] per output leaf; None: no gradient
    keep: bool = True  # False once the module turned out to be no unit: its output taps then keep nothing
    on_grad: Callable[[_Call], None] | None = None  # called by the output taps' backward once every output's gradient is in
    pending: int = 0  # output gradients not yet received in the backward

    def inputs(self) -> tuple[Any, Any]:
        return tree_unflatten(self.leaves, self.spec)


def _task_first(tensor: Tensor, dim: int | None, num_tasks: int) -> Tensor:
    """The physical tensor with its task axis first (broadcast along a new one when it has none)."""
    if dim is None:
        return tensor.unsqueeze(0).expand(num_tasks, *tensor.shape)
    return tensor.movedim(dim, 0)


class _InputTap(torch.autograd.Function):
    """Identity on one input of a module call; its ``vmap`` rule keeps the physical tensor, task axis first.

    ``probe`` is batched over the tasks, so the rule runs even for an input without a task axis.
    """

    @staticmethod
    def forward(x: Tensor, probe: Tensor, call: _Call, slot: int) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        return grad, None, None, None

    @staticmethod
    def vmap(info: Any, in_dims: tuple[Any, ...], x: Tensor, probe: Tensor, call: _Call, slot: int) -> tuple[Tensor, int | None]:
        call.leaves[slot] = _task_first(x, in_dims[0], info.batch_size).detach()
        return x.view_as(x), in_dims[0]


class _OutputTap(torch.autograd.Function):
    """Identity on one output of a module call; its ``vmap`` rule gives it a task axis, its backward keeps the gradient.

    The backward keeps the physical gradient ``[T, ...]`` in the call's record; ``probe`` (batched
    over the tasks, its gradient asked for) makes autograd run every tap's backward.
    """

    @staticmethod
    def forward(y: Tensor, probe: Tensor, call: _Call, slot: int) -> Tensor:
        return y.view_as(y)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.call, ctx.slot = inputs[2], inputs[3]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        call = ctx.call
        if call.keep:
            call.output_grads[ctx.slot] = grad  # [T, ...]
            call.pending -= 1
            if call.pending == 0 and call.on_grad is not None:
                call.on_grad(call)
        return grad, None, None, None

    @staticmethod
    def vmap(info: Any, in_dims: tuple[Any, ...], y: Tensor, probe: Tensor, call: _Call, slot: int) -> tuple[Tensor, int]:
        physical_probe = _task_first(probe, in_dims[1], info.batch_size)
        return _OutputTap.apply(_task_first(y, in_dims[0], info.batch_size), physical_probe, call, slot), 0


class _Tape:
    """Forward hooks on every module of ``root`` that holds shared parameters, recording their calls while active."""

    def __init__(self, root: nn.Module, shared: Mapping[str, Tensor], num_tasks: int) -> None:
        shared_ids = {id(param) for param in shared.values()}
        self.modules = {
            name: module for name, module in root.named_modules() if any(id(param) in shared_ids for param in module.parameters())
        }
        self.calls: dict[str, list[_Call]] = {name: [] for name in self.modules}
        device = next(iter(shared.values())).device
        self.probe = torch.zeros(num_tasks, 0, device=device, requires_grad=True)  # [T, 0]
        self.task_probe: Tensor | None = None  # the probe's slice inside the vmapped loss
        self.active = False

    @contextmanager
    def recording(self) -> Iterator[None]:
        handles = []
        for name, module in self.modules.items():
            handles.append(module.register_forward_pre_hook(self._pre_hook(name), with_kwargs=True))
            handles.append(module.register_forward_hook(self._post_hook(name)))
        self.active = True
        try:
            yield
        finally:
            self.active = False
            for handle in handles:
                handle.remove()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Run forwards without recording (the generic rule's vector-Jacobian products)."""
        active, self.active = self.active, False
        try:
            yield
        finally:
            self.active = active

    def _pre_hook(self, name: str) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any] | None:
            if not self.active:
                return None
            leaves, spec = tree_flatten((args, kwargs))
            call = _Call(list(leaves), spec)
            self.calls[name].append(call)
            tapped = [_InputTap.apply(leaf, self.task_probe, call, i) if isinstance(leaf, Tensor) else leaf for i, leaf in enumerate(leaves)]
            return tree_unflatten(tapped, spec)

        return hook

    def _post_hook(self, name: str) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            if not self.active:
                return None
            call = self.calls[name][-1]
            leaves, spec = tree_flatten(output)
            call.output_grads = [None] * len(leaves)
            tapped = [
                _OutputTap.apply(leaf, self.task_probe, call, i) if isinstance(leaf, Tensor) and leaf.is_floating_point() else leaf
                for i, leaf in enumerate(leaves)
            ]
            call.pending = sum(tap is not leaf for tap, leaf in zip(tapped, leaves))
            return tree_unflatten(tapped, spec)

        return hook

    def units(self, full_names: Mapping[int, str], shared: Mapping[str, Tensor]) -> dict[str, dict[str, str]]:
        """Unit module name -> {local parameter name: shared name}; a unit is the deepest called module around a shared parameter.

        ``full_names``: the root's parameter names by parameter id. Raises ValueError for a shared
        parameter no called module holds. The other modules' records are dropped.
        """
        called = {name for name, calls in self.calls.items() if calls}
        units: dict[str, dict[str, str]] = {}
        for key, param in shared.items():
            full = full_names[id(param)]
            path = full.split(".")
            owners = [".".join(path[:i]) for i in range(len(path) - 1, -1, -1)]  # deepest first; "" is the root
            owner = next((name for name in owners if name in called), None)
            if owner is None:
                raise ValueError(f"shared parameter {key!r} is not used inside a call of its network")
            units.setdefault(owner, {})[full[len(owner) + 1 :] if owner else full] = key
        for name, calls in self.calls.items():
            if name not in units:
                for call in calls:
                    call.keep, call.leaves = False, []
                calls.clear()
        return units


def _rows(tensor: Tensor) -> Tensor:
    """``[T, ..., features] -> [T, N, features]`` in float32 (the Gramian and the weights are float32)."""
    return tensor.reshape(tensor.shape[0], -1, tensor.shape[-1]).float()


def _tensor_dims(tree: Any) -> Any:
    """``vmap`` in_dims for a pytree of recorded inputs: 0 for a tensor (task axis first), None otherwise."""
    leaves, spec = tree_flatten(tree)
    return tree_unflatten([0 if isinstance(leaf, Tensor) else None for leaf in leaves], spec)


class _Unit:
    """A module's share of the Gramian and of the weighted gradient: the generic rule (vector-Jacobian products).

    ``names`` maps the module's own names of the parameters it serves to their shared names; its
    per-task parameters (``task_params``, local names, ``[T, ...]``) are sliced per task.
    """

    def __init__(self, module: nn.Module, names: dict[str, str], calls: list[_Call], tape: _Tape, task_params: dict[str, Tensor]) -> None:
        self.module, self.names, self.calls, self.tape, self.task_params = module, names, calls, tape, task_params

    def params(self) -> dict[str, Tensor]:
        return {local: self.module.get_parameter(local).detach() for local in self.names}

    def release(self) -> None:
        """Drop the kept inputs and output gradients (after the last use), so the next units' gradients reuse their memory."""
        for call in self.calls:
            call.leaves, call.output_grads = [], []
        self.calls = []

    def gram(self, gram: Tensor) -> None:
        """Add this unit's ``G_u G_u^T`` to ``gram: [T, T]`` in place."""
        for block in self.per_task_gradients().values():  # [T, *shape] each
            flat = block.reshape(gram.shape[0], -1).float()
            gram.addmm_(flat, flat.T)

    def weighted(self, weights: Tensor) -> dict[str, Tensor]:
        """``sum_t w_t g_t`` for each of this unit's parameters by shared name: one vector-Jacobian product of the
        task-vmapped call at the weighted output gradients per call (summed over tasks by autograd)."""
        params = self.params()
        grads = {local: torch.zeros_like(param) for local, param in params.items()}
        for call in self.calls:
            args, kwargs = call.inputs()
            in_dims = (None, 0, _tensor_dims(args), _tensor_dims(kwargs))
            with self.tape.paused():
                outputs, pullback = vjp(lambda p: vmap(self._one_task, in_dims=in_dims)(p, self.task_params, args, kwargs), params)
            scaled = [None if g is None else g * weights.view(-1, *([1] * (g.dim() - 1))).to(g.dtype) for g in call.output_grads]
            with self.tape.paused():
                for local, grad in pullback(self._cotangents(outputs, scaled))[0].items():
                    grads[local] += grad
        return {self.names[local]: grad for local, grad in grads.items()}

    def per_task_gradients(self) -> dict[str, Tensor]:
        """``[T, *shape]`` per-task gradients of this unit's parameters (summed over its calls), by local name."""
        params = self.params()
        total: dict[str, Tensor] = {}

        def task_pullback(task: dict[str, Tensor], args: Any, kwargs: Any, grads: list[Tensor | None]) -> dict[str, Tensor]:
            outputs, pullback = vjp(lambda p: self._one_task(p, task, args, kwargs), params)
            return pullback(self._cotangents(outputs, grads))[0]

        for call in self.calls:
            args, kwargs = call.inputs()
            grads = call.output_grads
            in_dims = (0, _tensor_dims(args), _tensor_dims(kwargs), [None if g is None else 0 for g in grads])
            with self.tape.paused():
                per_task = vmap(task_pullback, in_dims=in_dims)(self.task_params, args, kwargs, grads)
            for local, grad in per_task.items():
                total[local] = total[local] + grad if local in total else grad
        return total

    def _one_task(self, params: dict[str, Tensor], task: dict[str, Tensor], args: Any, kwargs: Any) -> list[Tensor]:
        output = functional_call(self.module, {**params, **task}, args, kwargs)
        return [leaf for leaf in tree_flatten(output)[0] if isinstance(leaf, Tensor) and leaf.is_floating_point()]

    @staticmethod
    def _cotangents(outputs: list[Tensor], grads: Sequence[Tensor | None]) -> list[Tensor]:
        return [torch.zeros_like(out) if g is None else g.to(out.dtype) for out, g in zip(outputs, grads)]


class _LinearUnit(_Unit):
    """``nn.Linear``: per-task gradients ``dy_t^T x_t`` (weight) and ``sum_b dy_t`` (bias) from the kept input and output gradient."""

    _bias_per_task: Tensor  # [T, out]: the bias's per-task gradients, formed by gram() and weighed by weighted()

    def _rows(self) -> tuple[Tensor, Tensor] | None:
        """The input and output gradient of every call with a gradient, ``[T, N, in]`` and ``[T, N, out]`` (calls concatenated)."""
        xs, dys = [], []
        for call in self.calls:
            (x,), _ = call.inputs()
            if call.output_grads[0] is not None:
                xs.append(_rows(x))
                dys.append(_rows(call.output_grads[0]))
        if not dys:
            return None
        return (xs[0], dys[0]) if len(xs) == 1 else (torch.cat(xs, dim=1), torch.cat(dys, dim=1))

    def gram(self, gram: Tensor) -> None:
        rows = self._rows()
        if rows is None:
            return
        x, dy = rows  # [T, N, in], [T, N, out]
        num_tasks, num_rows, fan_in = x.shape
        fan_out = dy.shape[-1]
        if "bias" in self.names:
            self._bias_per_task = bias = dy.sum(1)  # [T, out]: kept for the weighted gradient
            gram.addmm_(bias, bias.T)
        if "weight" not in self.names:
            return
        if linear_gram_form(num_tasks, num_rows, fan_in, fan_out) == "kernel":
            _kernel_gram(gram, x, dy)
            return
        dy_by_row = dy.transpose(1, 2)  # [T, out, N]
        for start in range(0, fan_out, GRAM_BLOCK_ROWS):
            block = torch.bmm(dy_by_row[:, start : start + GRAM_BLOCK_ROWS], x).view(num_tasks, -1)  # [T, rows * in]
            gram.addmm_(block, block.T)

    def weighted(self, weights: Tensor) -> dict[str, Tensor]:
        """``sum_t w_t dy_t^T x_t`` (one product over all rows) and ``w @ (sum_b dy_t)`` (the bias sums formed for the Gramian)."""
        rows = self._rows()
        grads: dict[str, Tensor] = {}
        for local, name in self.names.items():
            param = self.module.get_parameter(local)
            if rows is None:
                grads[name] = torch.zeros_like(param)
            elif local == "weight":
                x, dy = rows
                scaled = dy * weights.view(-1, 1, 1)  # [T, N, out]
                grads[name] = (scaled.flatten(0, 1).T @ x.flatten(0, 1)).to(param.dtype)  # [out, TN] @ [TN, in]
            else:
                grads[name] = (weights @ self._bias_per_task).to(param.dtype)  # [out]
        return grads


class _LayerNormUnit(_Unit):
    """``nn.LayerNorm`` over the last axis: per-task gradients ``sum_b dy * xhat`` (scale) and ``sum_b dy`` (shift), ``[T, w]``.

    They are small, so each call's share is formed in its output tap's backward, as soon as ``dy``
    arrives, and the call's input and output gradient are dropped there: a LayerNorm keeps none of
    its activations past its place in the backward.
    """

    def __init__(self, module: nn.Module, names: dict[str, str], calls: list[_Call], tape: _Tape, task_params: dict[str, Tensor]) -> None:
        super().__init__(module, names, calls, tape, task_params)
        self._per_task: dict[str, Tensor] = {}  # local name -> [T, w], summed over the calls
        for call in calls:
            call.on_grad = self._absorb

    def _absorb(self, call: _Call) -> None:
        """Add ``call``'s per-task gradients to the unit's and drop its input and output gradient."""
        module = self.module
        assert isinstance(module, nn.LayerNorm)
        (x,), _ = call.inputs()
        dy = _rows(call.output_grads[0])  # [T, N, w]
        call.leaves, call.output_grads = [], []
        for local in self.names:
            if local == "bias":
                grad = dy.sum(1)  # [T, w]
            else:
                grad = F.layer_norm(_rows(x), module.normalized_shape, eps=module.eps).mul_(dy).sum(1)  # [T, w]
            self._per_task[local] = self._per_task[local] + grad if local in self._per_task else grad

    def per_task_gradients(self) -> dict[str, Tensor]:
        return self._per_task

    def gram(self, gram: Tensor) -> None:
        self.release()
        for block in self._per_task.values():
            gram.addmm_(block, block.T)

    def weighted(self, weights: Tensor) -> dict[str, Tensor]:
        per_task = self._per_task
        return {
            name: (weights @ per_task[local]).to(self.module.get_parameter(local).dtype)
            if local in per_task
            else torch.zeros_like(self.module.get_parameter(local))
            for local, name in self.names.items()
        }


def _kernel_tasks(num_rows: int) -> int:
    """Tasks per group of the kernel form: groups of about :data:`KERNEL_GROUP_ROWS` rows."""
    return max(1, KERNEL_GROUP_ROWS // max(num_rows, 1))


def linear_gram_form(num_tasks: int, num_rows: int, fan_in: int, fan_out: int) -> Literal["kernel", "blocks"]:
    """How a shared ``nn.Linear``'s weight forms its share of the Gramian: the form with fewer multiply-adds.

    ``blocks``: the per-task weight gradients ``T * N * in * out`` and their Gramian ``T^2 * in * out``;
    ``kernel``: one ``(x_I x_J^T) * (dy_I dy_J^T)`` per pair of task groups ``I <= J`` (groups of
    :func:`_kernel_tasks` tasks), ``(g N)^2 * (in + out)`` each (``N`` rows per task).
    """
    group = min(_kernel_tasks(num_rows), num_tasks)
    groups = -(-num_tasks // group)
    kernel = groups * (groups + 1) // 2 * (group * num_rows) ** 2 * (fan_in + fan_out)
    blocks = num_tasks * (num_rows + num_tasks) * fan_in * fan_out
    return "kernel" if kernel < blocks else "blocks"


def _kernel_gram(gram: Tensor, x: Tensor, dy: Tensor) -> None:
    """Add a Linear weight's ``<g_i, g_j> = sum_{b,b'} (dy_i[b] . dy_j[b']) (x_i[b] . x_j[b'])`` to ``gram``.

    ``x: [T, N, in]``, ``dy: [T, N, out]``. Tasks go in groups; each pair of groups ``I <= J`` costs two
    ``[|I| N, |J| N]`` products, and the pair ``J, I`` is its transpose (the Gramian is symmetric).
    """
    num_tasks, num_rows = x.shape[:2]
    group = _kernel_tasks(num_rows)
    starts = range(0, num_tasks, group)
    for i in starts:
        x_i, dy_i = x[i : i + group].flatten(0, 1), dy[i : i + group].flatten(0, 1)  # [|I| N, in], [|I| N, out]
        size_i = x_i.shape[0] // num_rows
        for j in starts[i // group :]:
            x_j, dy_j = x[j : j + group].flatten(0, 1), dy[j : j + group].flatten(0, 1)
            size_j = x_j.shape[0] // num_rows
            kernel = (x_i @ x_j.T).mul_(dy_i @ dy_j.T)  # [|I| N, |J| N]
            share = kernel.view(size_i, num_rows, size_j, num_rows).sum(dim=(1, 3))  # [|I|, |J|]
            gram[i : i + size_i, j : j + size_j] += share
            if j != i:
                gram[j : j + size_j, i : i + size_i] += share.T


def _make_unit(module: nn.Module, names: dict[str, str], calls: list[_Call], tape: _Tape, task_params: dict[str, Tensor]) -> _Unit:
    if type(module) is nn.Linear:
        return _LinearUnit(module, names, calls, tape, task_params)
    if type(module) is nn.LayerNorm and len(module.normalized_shape) == 1:
        return _LayerNormUnit(module, names, calls, tape, task_params)
    return _Unit(module, names, calls, tape, task_params)


def gramian_gradients(
    module: MultiTaskModule,
    loss_fn: Callable[..., Any],
    task_inputs: Sequence[Tensor],
    balancer: Balancer,
    has_aux: bool = False,
) -> BalancedGradients:
    """The gradients of one balanced update of ``module`` by the Gramian path (arguments as :func:`mtrl.gradients.balanced_gradients`).

    The same gradients as the materialised path up to float rounding: the balancer's weights from
    the ``[T, T]`` Gramian of the shared parameters (its diagnostics recorded from it) and
    ``sum_t w_t g_t`` for each shared parameter; each per-task parameter's slice gets its own task's
    gradient. The balancer must act through weights (not :func:`needs_full_gradients`).
    """
    if needs_full_gradients(balancer):
        raise ValueError(f"{type(balancer).__name__} needs the per-task gradients themselves or two batches; the Gramian path cannot serve it")
    root: nn.Module = module  # type: ignore[assignment]
    shared, task = module.shared_parameters(), module.task_parameters()
    num_tasks = balancer.num_tasks
    task_loss = module_task_loss(root, loss_fn)
    tape = _Tape(root, shared, num_tasks)

    def probed_loss(probe: Tensor, *args: Any) -> Any:
        tape.task_probe = probe
        return task_loss(*args)

    in_dims = (0, None, 0) + (0,) * len(task_inputs)
    with tape.recording():
        value = vmap(probed_loss, in_dims=in_dims)(tape.probe, shared, task, *task_inputs)
    losses, aux = value if has_aux else (value, None)  # [T]
    modules = dict(root.named_modules())
    full_names = {id(param): name for name, param in root.named_parameters(remove_duplicate=False)}
    units = []
    for unit_name, names in tape.units(full_names, shared).items():
        prefix = f"{unit_name}." if unit_name else ""
        own_task = {full_names[id(param)][len(prefix) :]: param.detach() for param in task.values() if full_names[id(param)].startswith(prefix)}
        units.append(_make_unit(modules[unit_name], names, tape.calls[unit_name], tape, own_task))
    grads = torch.autograd.grad(losses.sum(), [*task.values(), tape.probe], allow_unused=True)
    task_grads = dict(zip(task.keys(), grads[: len(task)]))

    with torch.no_grad():
        gram = losses.new_zeros(num_tasks, num_tasks, dtype=torch.float32)  # [T, T]
        for unit in units:
            unit.gram(gram)
        weights = balancer.weights(gram, losses.detach()).float()  # [T]
        balancer.record(gram, weights)
    shared_grads: dict[str, Tensor | None] = {}
    for unit in units:
        shared_grads.update(unit.weighted(weights))
        unit.release()
    return BalancedGradients(shared_grads | task_grads, losses.detach(), detach_tree(aux))
