"""A test kit for a balancer class: what every balancer in mtrl must do, checked on one class.

A plugin author runs it on their class in their own tests::

    from mtrl.balancers.testing import check_balancer

    def test_my_balancer():
        check_balancer(MyBalancer)

:func:`check_balancer` raises an AssertionError naming the first failed property:

- **declaration**: a :class:`~mtrl.balancers.Balancer` subclass with a frozen ``Options`` dataclass
  and known ``run_inputs``, built as ``cls(num_tasks, cls.Options(), **run_inputs)``;
- **shapes, dtype, device**: ``weights`` returns a floating ``[T]`` tensor on the Gramian's (or the
  losses') device, for float32 and float64 inputs (``combine``: a ``[D]`` direction); for a balancer
  that ``requires_second_batch``, also finite weights from the cross Gramian of two batches;
- **no host synchronisation**: on CUDA under torch's sync debug mode (``"error"``); on the CPU no
  ``.item()``, ``bool()``, ``float()`` or ``int()`` of a tensor (caught at torch's dispatcher), and,
  for a balancer that draws no random numbers, no ``.numpy()`` or ``.tolist()`` either (it runs once
  on the ``meta`` device, whose tensors hold no values; torch has no generators there, so a
  balancer with a :class:`~mtrl.balancers.generator.GeneratorMixin` generator skips that part);
- **state round trip**: a fresh balancer loaded with the ``state_dict`` of one that took some
  steps gives the same next result (stateful methods: EMAs, logits, generators);
- **scale on equal gradients**: when every task has the same gradient ``g`` (and the same loss) the
  direction is ``s g`` with ``1/2 <= s <= 2``: mtrl's mean-gradient scale (``s = 1`` for weights
  that sum to 1; CAGrad's default rescaling gives ``s = (1 + c) / (1 + c^2)``, 1.2 at ``c = 0.4``). A
  balancer on the scale of the summed gradient (``s = T``) fails.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from mtrl.balancers.base import Balancer
from mtrl.balancers.generator import GeneratorMixin
from mtrl.balancers.registry import BalancerPluginError, check_balancer_class

NUM_TASKS = (2, 10)
DIM = 24
STEPS = 3


class HostReadError(AssertionError):
    """A tensor's value was read on the host inside a balancer call."""


class _NoHostReads(TorchDispatchMode):
    """Fails on ``aten._local_scalar_dense``: what ``.item()``, ``bool()``, ``float()`` and ``int()`` of a tensor run."""

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func is torch.ops.aten._local_scalar_dense.default:
            raise HostReadError("the balancer read a tensor's value on the host (.item(), bool(), float() or int() of a tensor)")
        return func(*args, **(kwargs or {}))


def check_balancer(cls: type[Balancer], num_tasks: tuple[int, ...] = NUM_TASKS, device: torch.device | str | None = None) -> None:
    """Check ``cls`` for every ``T`` in ``num_tasks`` on ``device`` (default: CUDA when available, else the CPU)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    check_balancer_class("balancer_under_test", cls)
    for tasks in num_tasks:
        _check_outputs(cls, tasks, device)
        _check_no_host_sync(cls, tasks, device)
        _check_state_round_trip(cls, tasks, device)
        _check_scale(cls, tasks, device)


def build(cls: type[Balancer], num_tasks: int, device: torch.device, seed: int = 0) -> Balancer:
    """``cls`` with its default options, the run inputs it takes, on ``device``."""
    run_inputs = {"seed": seed, "compile_solver": False}
    return cls(num_tasks, cls.Options(), **{key: run_inputs[key] for key in cls.run_inputs}).to(device)


def call(balancer: Balancer, grads: Tensor, losses: Tensor) -> Tensor:
    """The balancer's direction ``[D]`` for ``grads: [T, D]``, as the trainer asks for it."""
    if type(balancer).combine is not Balancer.combine:
        return balancer.combine(grads, losses)
    gram = grads @ grads.T if balancer.requires_grads else None  # [T, T]
    weights = balancer.weights(gram, losses)  # [T]: the trainer passes the losses to every balancer
    assert isinstance(weights, Tensor), f"{type(balancer).__name__}.weights returned a {type(weights).__name__}, not a tensor"
    return weights.to(grads.dtype) @ grads


def _inputs(num_tasks: int, device: torch.device, dtype: torch.dtype, seed: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    grads = torch.randn(num_tasks, DIM, generator=generator, dtype=dtype).to(device)  # [T, D]
    losses = (torch.rand(num_tasks, generator=generator, dtype=dtype) + 0.5).to(device)  # [T]
    return grads, losses


def _check_outputs(cls: type[Balancer], num_tasks: int, device: torch.device) -> None:
    for dtype in (torch.float32, torch.float64):
        balancer = build(cls, num_tasks, device)
        grads, losses = _inputs(num_tasks, device, dtype, seed=0)
        if type(balancer).combine is Balancer.combine:
            gram = grads @ grads.T if balancer.requires_grads else None
            weights = balancer.weights(gram, losses)
            where = f"{cls.__name__}.weights (T={num_tasks}, {dtype})"
            assert isinstance(weights, Tensor), f"{where} returned a {type(weights).__name__}, not a tensor"
            assert tuple(weights.shape) == (num_tasks,), f"{where} returned shape {tuple(weights.shape)}, expected ({num_tasks},)"
            assert weights.is_floating_point(), f"{where} returned dtype {weights.dtype}"
            assert weights.device == device, f"{where} returned a tensor on {weights.device}, its inputs are on {device}"
            if balancer.requires_second_batch:
                other, _ = _inputs(num_tasks, device, dtype, seed=1)  # [T, D], a second batch's gradients
                cross = balancer.weights(grads @ other.T, losses)  # from G1 G2^T: not symmetric
                assert tuple(cross.shape) == (num_tasks,), f"{where} returned shape {tuple(cross.shape)} for a cross Gramian"
                assert bool(torch.isfinite(cross).all()), f"{where}: non-finite weights for a cross Gramian of random gradients"
        direction = call(balancer, grads, losses)
        where = f"{cls.__name__} (T={num_tasks}, {dtype})"
        assert tuple(direction.shape) == (DIM,), f"{where}: direction of shape {tuple(direction.shape)}, expected ({DIM},)"
        assert direction.device == device, f"{where}: direction on {direction.device}, inputs on {device}"
        assert bool(torch.isfinite(direction).all()), f"{where}: non-finite direction for random gradients"


def _check_no_host_sync(cls: type[Balancer], num_tasks: int, device: torch.device) -> None:
    grads, losses = _inputs(num_tasks, device, torch.float32, seed=1)
    balancer = build(cls, num_tasks, device)
    call(balancer, grads, losses)  # a first call may set things up (compile, allocate) on the host
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.set_sync_debug_mode("error")
        try:
            call(balancer, grads, losses)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return
    with _NoHostReads():
        _unwrapped(lambda: call(balancer, grads, losses))
    if isinstance(balancer, GeneratorMixin):  # torch has no generators on the meta device
        return
    try:
        on_meta = build(cls, num_tasks, torch.device("meta"))
    except (RuntimeError, NotImplementedError):  # a state that cannot be made on the meta device: no check there
        return
    try:
        call(on_meta, grads.to("meta"), losses.to("meta"))
    except (RuntimeError, NotImplementedError, TypeError) as error:
        raise HostReadError(f"{cls.__name__} read a tensor's values on the host (it fails on the meta device: {error})") from error


def _unwrapped(method: Any) -> Any:
    """``method()``, with a :class:`HostReadError` that a registered class's checks wrapped raised as itself."""
    try:
        return method()
    except BalancerPluginError as error:
        if isinstance(error.__cause__, HostReadError):
            raise error.__cause__ from None
        raise


def _check_state_round_trip(cls: type[Balancer], num_tasks: int, device: torch.device) -> None:
    stepped = build(cls, num_tasks, device, seed=3)
    for step in range(STEPS):
        call(stepped, *_inputs(num_tasks, device, torch.float32, seed=10 + step))
    restored = build(cls, num_tasks, device, seed=4)
    restored.load_state_dict(stepped.state_dict())
    grads, losses = _inputs(num_tasks, device, torch.float32, seed=99)
    expected, result = call(stepped, grads, losses), call(restored, grads, losses)
    assert torch.equal(expected, result), f"{cls.__name__} (T={num_tasks}): a balancer loaded from a state_dict gives another result"


def _check_scale(cls: type[Balancer], num_tasks: int, device: torch.device) -> None:
    balancer = build(cls, num_tasks, device)
    gradient = torch.randn(DIM, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(device)  # [D]
    grads = gradient.expand(num_tasks, DIM).clone()  # [T, D]
    losses = torch.ones(num_tasks, dtype=torch.float64, device=device)  # [T]
    direction = call(balancer, grads, losses)
    scale = float(direction @ gradient / (gradient @ gradient))
    off_line = float((direction - scale * gradient).norm() / gradient.norm())
    where = f"{cls.__name__} (T={num_tasks}): equal task gradients g"
    assert off_line < 1e-5, f"{where} give a direction {off_line:.3g} (relative) off the line of g"
    assert 0.5 <= scale <= 2.0, f"{where} give {scale:.3g} g; mtrl's balancers are on the mean-gradient scale (about g)"
