"""Tests for mtrl.gradients: vmapped per-task gradients against a loop of autograd.grad calls."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from mtrl.balancers import BUILTIN_BALANCERS, FAMO, Balancer, Mean, make_balancer
from mtrl.gradients import (
    PerTaskGradients,
    balanced_backward,
    balanced_direction,
    module_task_loss,
    per_task_gradients,
    write_gradients,
    write_gradients_by_name,
)
from mtrl.nn import MultiTaskMLP

T, B, IN, OUT = 3, 6, 5, 2
ATOL = 1e-5


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def make_net(per_task_head: bool = True) -> MultiTaskMLP:
    return MultiTaskMLP(IN, [8, 7], OUT, T, per_task_head=per_task_head)


def make_data() -> tuple[Tensor, Tensor]:
    return torch.randn(T, B, IN), torch.randn(T, B, OUT)  # [T, B, in], [T, B, out]


def task_mse(forward: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
    return F.mse_loss(forward(x), y)


def batched_losses(net: MultiTaskMLP, x: Tensor, y: Tensor) -> Tensor:
    return F.mse_loss(net(x), y, reduction="none").mean(dim=(1, 2))  # [T]


def loop_reference(net: MultiTaskMLP, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """Per-task gradients the slow way: one autograd.grad call per task."""
    shared, task = net.shared_parameters(), net.task_parameters()
    losses = batched_losses(net, x, y)
    rows, task_grads = [], {name: torch.zeros_like(p) for name, p in task.items()}
    for t in range(T):
        grads = torch.autograd.grad(losses[t], [*shared.values(), *task.values()], retain_graph=True)
        rows.append(torch.cat([g.reshape(-1) for g in grads[: len(shared)]]))
        for name, grad in zip(task, grads[len(shared) :]):
            task_grads[name][t] = grad[t]
    return torch.stack(rows), task_grads, losses.detach()


def grads_of(net: MultiTaskMLP, x: Tensor, y: Tensor, **kwargs: object) -> PerTaskGradients:
    loss = module_task_loss(net, task_mse)
    return per_task_gradients(loss, net.shared_parameters(), net.task_parameters(), (x, y), **kwargs)


@pytest.mark.parametrize("per_task_head", [True, False])
def test_per_task_gradients_match_loop_of_autograd_grad(per_task_head: bool) -> None:
    net = make_net(per_task_head)
    x, y = make_data()
    grads = grads_of(net, x, y)
    shared_ref, task_ref, losses_ref = loop_reference(net, x, y)
    torch.testing.assert_close(grads.shared, shared_ref, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(grads.losses, losses_ref, atol=ATOL, rtol=1e-4)
    assert grads.task.keys() == task_ref.keys()
    for name in task_ref:
        torch.testing.assert_close(grads.task[name], task_ref[name], atol=ATOL, rtol=1e-4)
    assert all(p.grad is None for p in net.parameters())
    assert not grads.shared.requires_grad and not grads.losses.requires_grad


def test_shared_layout_and_blockwise_gram() -> None:
    net = make_net()
    grads = grads_of(net, *make_data())
    shared = net.shared_parameters()
    assert list(grads.shared_blocks) == list(shared)
    assert grads.shared.shape == (T, sum(p.numel() for p in shared.values()))
    column = 0
    for name, param in shared.items():
        block = grads.shared[:, column : column + param.numel()].reshape(T, *param.shape)
        torch.testing.assert_close(block, grads.shared_blocks[name])
        column += param.numel()
    torch.testing.assert_close(grads.gram(), grads.shared @ grads.shared.T, atol=ATOL, rtol=1e-4)


def test_per_task_isolation_with_per_task_scalar_input() -> None:
    net = make_net()
    x, y = make_data()
    scale = torch.tensor([1.0, 0.0, 0.0])  # [T]: only task 0 has a nonzero loss

    def scaled_loss(forward: Callable[[Tensor], Tensor], xs: Tensor, ys: Tensor, s: Tensor) -> Tensor:
        assert s.dim() == 0
        return s * task_mse(forward, xs, ys)

    loss = module_task_loss(net, scaled_loss)
    grads = per_task_gradients(loss, net.shared_parameters(), net.task_parameters(), (x, y, scale))
    assert grads.losses[0] > 0 and torch.all(grads.losses[1:] == 0)
    assert grads.shared[0].abs().sum() > 0 and torch.all(grads.shared[1:] == 0)
    for grad in grads.task.values():
        assert grad[0].abs().sum() > 0
        assert torch.all(grad[1:] == 0)


def test_has_aux_and_chunking() -> None:
    net = make_net()
    x, y = make_data()

    def loss_with_aux(forward: Callable[[Tensor], Tensor], xs: Tensor, ys: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        prediction = forward(xs)  # [B, out]
        return F.mse_loss(prediction, ys), {"mean_prediction": prediction.mean()}

    loss = module_task_loss(net, loss_with_aux)
    grads = per_task_gradients(loss, net.shared_parameters(), net.task_parameters(), (x, y), has_aux=True, chunk_size=2)
    torch.testing.assert_close(grads.aux["mean_prediction"], net(x).mean(dim=(1, 2)).detach())
    torch.testing.assert_close(grads.shared, grads_of(net, x, y).shared, atol=ATOL, rtol=1e-4)


@pytest.mark.slow
def test_compiled_per_task_gradients_match_the_loop_and_reuse_the_compiled_code() -> None:
    net = make_net()
    x, y = make_data()
    shared_ref, task_ref, losses_ref = loop_reference(net, x, y)
    compiled_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for _ in range(3):  # a new closure every call, as the agents make one per update
        grads = grads_of(net, x, y, compiled=True)
        torch.testing.assert_close(grads.shared, shared_ref, atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(grads.losses, losses_ref, atol=ATOL, rtol=1e-4)
        for name in task_ref:
            torch.testing.assert_close(grads.task[name], task_ref[name], atol=ATOL, rtol=1e-4)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == compiled_before + 1  # compiled once, then reused
    assert all(p.grad is None for p in net.parameters())


def test_write_gradients_round_trip_replaces_existing() -> None:
    net = make_net()
    params = net.shared_parameters()
    for p in params.values():
        p.grad = torch.full_like(p, 7.0)
    flat = torch.randn(sum(p.numel() for p in params.values()))
    write_gradients(params, flat)
    torch.testing.assert_close(torch.cat([p.grad.reshape(-1) for p in params.values()]), flat)
    write_gradients(list(params.values()), 2 * flat)
    torch.testing.assert_close(torch.cat([p.grad.reshape(-1) for p in params.values()]), 2 * flat)
    with pytest.raises(ValueError, match="shape"):
        write_gradients(params, flat[:-1])


def test_write_gradients_by_name_sets_task_grads() -> None:
    net = make_net()
    grads = grads_of(net, *make_data())
    write_gradients_by_name(net.task_parameters(), grads.task)
    for name, param in net.task_parameters().items():
        torch.testing.assert_close(param.grad, grads.task[name])
    with pytest.raises(KeyError, match="head.bias"):
        write_gradients_by_name(net.task_parameters(), {"head.weight": grads.task["head.weight"]})


def reference_grads(net: MultiTaskMLP, x: Tensor, y: Tensor, weights: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """Shared grads of ``weights @ losses`` and per-task grads of ``losses.sum()``, by ordinary backward."""
    losses = batched_losses(net, x, y)
    shared = torch.autograd.grad(weights @ losses, list(net.shared_parameters().values()), retain_graph=True)
    task_params = list(net.task_parameters().values())
    task = torch.autograd.grad(losses.sum(), task_params) if task_params else ()
    return list(shared), list(task)


@pytest.mark.parametrize("statistics", [True, False])
def test_balanced_backward_with_mean_equals_backward_of_mean_loss(statistics: bool) -> None:
    net = make_net()
    x, y = make_data()
    shared_ref, task_ref = reference_grads(net, x, y, torch.full((T,), 1.0 / T))
    mean = Mean(T, Mean.Options(statistics=statistics))
    assert mean.requires_grads is statistics and not Mean(1).requires_grads
    losses = balanced_backward(net, task_mse, (x, y), mean)
    torch.testing.assert_close(mean.last_weights, torch.full((T,), 1.0 / T))
    torch.testing.assert_close(losses, batched_losses(net, x, y).detach())
    for param, ref in zip(net.shared_parameters().values(), shared_ref):
        torch.testing.assert_close(param.grad, ref, atol=ATOL, rtol=1e-4)
    for param, ref in zip(net.task_parameters().values(), task_ref):
        torch.testing.assert_close(param.grad, ref, atol=ATOL, rtol=1e-4)


def test_one_task_without_vmap_matches_the_plain_backward() -> None:
    net = MultiTaskMLP(IN, [8, 7], OUT, 1)
    x, y = torch.randn(1, B, IN), torch.randn(1, B, OUT)
    losses = F.mse_loss(net(x), y, reduction="none").mean(dim=(1, 2))  # [1]
    expected = torch.autograd.grad(losses.sum(), list(net.parameters()))
    got, aux = balanced_backward(net, lambda fwd, xs, ys: (task_mse(fwd, xs, ys), fwd(xs).sum()), (x, y), Mean(1), has_aux=True)
    torch.testing.assert_close(got, losses.detach())
    torch.testing.assert_close(aux, net(x).sum().detach()[None])
    for param, ref in zip(net.parameters(), expected):
        torch.testing.assert_close(param.grad, ref, atol=ATOL, rtol=1e-5)


GRADIENT_BALANCERS = sorted(name for name, cls in BUILTIN_BALANCERS.items() if cls.requires_grads)


@pytest.mark.parametrize("name", GRADIENT_BALANCERS)
def test_blockwise_direction_equals_combine(name: str) -> None:
    net = make_net()
    grads = grads_of(net, *make_data())
    blockwise, reference = make_balancer(name, T, seed=3), make_balancer(name, T, seed=3)
    direction = balanced_direction(blockwise, grads)
    expected = reference.combine(grads.shared, grads.losses)  # [D]
    flat = torch.cat([d.reshape(-1) for d in direction.values()])
    torch.testing.assert_close(flat, expected, atol=ATOL, rtol=1e-4)
    for key, value in reference.diagnostics().items():
        torch.testing.assert_close(blockwise.diagnostics()[key], value, atol=ATOL, rtol=1e-4)


class FirstTask(Balancer):
    """Overrides combine: the direction is task 0's gradient (exercises the [T, D] fallback)."""

    def combine(self, grads: Tensor, losses: Tensor | None = None) -> Tensor:
        return grads[0]


def test_balancer_overriding_combine_gets_the_flat_matrix() -> None:
    net = make_net()
    x, y = make_data()
    grads = grads_of(net, x, y)
    balanced_backward(net, task_mse, (x, y), FirstTask(T))
    flat = torch.cat([p.grad.reshape(-1) for p in net.shared_parameters().values()])
    torch.testing.assert_close(flat, grads.shared[0], atol=ATOL, rtol=1e-4)


class FixedLossWeights(Balancer):
    """A loss-weighting balancer (no per-task gradients) with fixed weights."""

    requires_grads = False
    requires_losses = True

    def __init__(self, weights: Tensor) -> None:
        super().__init__(weights.shape[0])
        self.fixed = weights
        self.seen_losses: Tensor | None = None

    def weights(self, gram: Tensor | None, losses: Tensor | None = None) -> Tensor:
        assert gram is None and losses is not None and not losses.requires_grad
        self.seen_losses = losses
        return self.fixed

    def record(self, gram: Tensor | None, weights: Tensor) -> None:
        self.last_weights.copy_(weights)


def test_loss_weighting_path_without_per_task_gradients() -> None:
    net = make_net()
    x, y = make_data()
    weights = torch.tensor([0.5, 0.3, 0.2])
    balancer = FixedLossWeights(weights)
    shared_ref, task_ref = reference_grads(net, x, y, weights)
    losses, aux = balanced_backward(
        net, lambda fwd, xs, ys: (task_mse(fwd, xs, ys), fwd(xs).sum()), (x, y), balancer, has_aux=True
    )
    torch.testing.assert_close(balancer.seen_losses, losses)
    torch.testing.assert_close(balancer.last_weights, weights)
    assert not losses.requires_grad and not aux.requires_grad and aux.shape == (T,)
    for param, ref in zip(net.shared_parameters().values(), shared_ref):
        torch.testing.assert_close(param.grad, ref, atol=ATOL, rtol=1e-4)
    for param, ref in zip(net.task_parameters().values(), task_ref):
        torch.testing.assert_close(param.grad, ref, atol=ATOL, rtol=1e-4)


def test_famo_through_balanced_backward_steps_an_optimizer() -> None:
    net = make_net()
    x, y = make_data()
    famo = FAMO(T)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = balanced_backward(net, task_mse, (x, y), famo)
    for _ in range(20):
        opt.step()
        losses = balanced_backward(net, task_mse, (x, y), famo)
    assert torch.isfinite(famo.last_weights).all()
    torch.testing.assert_close(famo.last_weights.sum(), torch.tensor(1.0))
    assert losses.mean() < first.mean()


def test_shared_head_with_a_functional_loss() -> None:
    net = make_net(per_task_head=False)
    x, y = make_data()
    shared_ref, _ = reference_grads(net, x, y, torch.full((T,), 1.0 / T))
    params = dict(net.named_parameters())

    def loss_fn(shared: dict[str, Tensor], task: dict[str, Tensor], xs: Tensor, ys: Tensor) -> Tensor:
        return F.mse_loss(functional_call(net, {**shared, **task}, (xs,)), ys)

    grads = per_task_gradients(loss_fn, params, {}, (x, y))
    assert grads.task == {}
    direction = balanced_direction(Mean(T), grads)
    for name, ref in zip(params, shared_ref):
        torch.testing.assert_close(direction[name], ref, atol=ATOL, rtol=1e-4)
