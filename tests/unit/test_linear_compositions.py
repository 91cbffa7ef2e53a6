"""Factored per-task gradients of linearly composed parameter sets (PaCo's ``Phi``) against the materialised ones."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtrl.balancers import BUILTIN_BALANCERS, Balancer, make_balancer
from mtrl.encoders import EncoderConfig, PaCoNetwork, make_network
from mtrl.gradients import PerTaskGradients, balanced_direction, balanced_gradients, module_task_loss, per_task_gradients
from mtrl.linear_compositions import FactoredGradient, linear_compositions

B, IN, OUT = 4, 6, 2
HIDDEN = (8, 7)
ATOL, RTOL = 1e-5, 1e-4

PACO = {
    "paco": (EncoderConfig(name="paco", num_parameter_sets=3), True),
    "paco-shared-head": (EncoderConfig(name="paco", num_parameter_sets=3), False),
    "paco-embedding": (EncoderConfig(name="paco", num_parameter_sets=2, task_conditioning="embedding", task_embedding_dim=3), True),
}
GRAMIAN_BALANCERS = sorted(
    name for name, cls in BUILTIN_BALANCERS.items() if cls.requires_grads and cls.combine is Balancer.combine
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def paco(key: str, num_tasks: int) -> PaCoNetwork:
    encoder, per_task_head = PACO[key]
    net = make_network(IN, HIDDEN, OUT, num_tasks, per_task_head, encoder)
    assert isinstance(net, PaCoNetwork)
    return net


def task_mse(forward: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
    return F.mse_loss(forward(x), y)


def factored_and_materialised(net: nn.Module, x: Tensor, y: Tensor) -> tuple[PerTaskGradients, PerTaskGradients]:
    loss = module_task_loss(net, task_mse)
    shared, task = net.shared_parameters(), net.task_parameters()
    factored = per_task_gradients(loss, shared, task, (x, y), compositions=linear_compositions(net))
    return factored, per_task_gradients(loss, shared, task, (x, y))


def test_factored_block_is_the_outer_product_of_the_coefficients_and_the_composed_gradient() -> None:
    """``g_t = c_t (x) dtheta_t``: its Gramian ``(c c^T) * (D D^T)`` and direction ``sum_t a_t g_t``."""
    coefficients, theta_grads = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 5, 2, dtype=torch.float64)
    block = FactoredGradient(coefficients, theta_grads)
    dense = torch.stack([torch.einsum("k,io->kio", coefficients[t], theta_grads[t]) for t in range(4)])  # [T, K, in, out]
    assert block.parameter_shape == (3, 5, 2)
    torch.testing.assert_close(block.dense(), dense)
    flat = dense.reshape(4, -1)
    torch.testing.assert_close(block.cross_gram(block), flat @ flat.T)
    other = FactoredGradient(torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 5, 2, dtype=torch.float64))
    torch.testing.assert_close(block.cross_gram(other), flat @ other.dense().reshape(4, -1).T)
    weights = torch.randn(4, dtype=torch.float64)
    torch.testing.assert_close(block.combine(weights), torch.tensordot(weights, dense, dims=1))


@pytest.mark.parametrize("key", sorted(PACO))
def test_factored_per_task_gradients_equal_the_materialised_ones(key: str) -> None:
    num_tasks = 3
    net = paco(key, num_tasks)
    x, y = torch.randn(num_tasks, B, IN), torch.randn(num_tasks, B, OUT)
    factored, materialised = factored_and_materialised(net, x, y)
    sets = {name for composition in linear_compositions(net) for name in composition.offsets}
    assert sets and all(name.endswith(("sets.weight", "sets.bias")) for name in sets)
    assert list(factored.shared_blocks) == list(materialised.shared_blocks)
    for name, block in factored.shared_blocks.items():
        assert isinstance(block, FactoredGradient) == (name in sets)
    torch.testing.assert_close(factored.shared, materialised.shared, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(factored.losses, materialised.losses)
    assert factored.task.keys() == materialised.task.keys()  # the offsets' gradients are not per-task parameters'
    for name, grad in materialised.task.items():
        torch.testing.assert_close(factored.task[name], grad, atol=ATOL, rtol=RTOL)
    assert all(param.grad is None for param in net.parameters())


def test_the_offset_slots_are_no_state() -> None:
    net = paco("paco", 2)
    assert not any("offset" in name for name in net.state_dict())
    assert all(layer.weight_offset is None and layer.bias_offset is None for layer in net.composed_layers())


@pytest.mark.parametrize("num_tasks", [1, 2, 10, 50])
@pytest.mark.parametrize("name", GRAMIAN_BALANCERS)
def test_factored_gramian_and_direction_equal_the_materialised_ones(name: str, num_tasks: int) -> None:
    net = paco("paco", num_tasks)
    x, y = torch.randn(num_tasks, B, IN), torch.randn(num_tasks, B, OUT)
    factored, materialised = factored_and_materialised(net, x, y)
    expected_gram = materialised.gram()
    gram = factored.gram()
    assert torch.linalg.matrix_norm(gram - expected_gram) <= 1e-5 * torch.linalg.matrix_norm(expected_gram)
    balancer, reference = make_balancer(name, num_tasks, seed=3), make_balancer(name, num_tasks, seed=3)
    direction, expected = balanced_direction(balancer, factored), balanced_direction(reference, materialised)
    assert direction.keys() == expected.keys()
    scale = max(value.abs().max() for value in expected.values())
    for key, value in expected.items():
        torch.testing.assert_close(direction[key], value, atol=1e-4 * scale, rtol=1e-3)


class FirstTask(Balancer):
    """Overrides combine: the direction is task 0's gradient (receives the expanded ``[T, D]``)."""

    def combine(self, grads: Tensor, losses: Tensor | None = None) -> Tensor:
        return grads[0]


def test_a_balancer_overriding_combine_gets_the_expanded_gradients() -> None:
    net = paco("paco-embedding", 3)
    x, y = torch.randn(3, B, IN), torch.randn(3, B, OUT)
    factored, materialised = factored_and_materialised(net, x, y)
    direction = balanced_direction(FirstTask(3), factored)
    for name, block in materialised.shared_blocks.items():
        torch.testing.assert_close(direction[name], block[0], atol=ATOL, rtol=RTOL)


class TwinPaCo(nn.Module):
    """Two PaCo networks under one root, named like the agents' twin critics (``q1.``, ``q2.``)."""

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        self.q1, self.q2 = (make_network(IN, HIDDEN, 1, num_tasks, True, EncoderConfig(name="paco", num_parameter_sets=3)) for _ in range(2))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.q1(x), self.q2(x)

    def shared_parameters(self) -> dict[str, nn.Parameter]:
        return {f"{q}.{k}": v for q in ("q1", "q2") for k, v in getattr(self, q).shared_parameters().items()}

    def task_parameters(self) -> dict[str, nn.Parameter]:
        return {f"{q}.{k}": v for q in ("q1", "q2") for k, v in getattr(self, q).task_parameters().items()}


def test_balanced_gradients_find_the_compositions_inside_a_twin_critic() -> None:
    """The module tree's names (``q1.layers.0.sets.weight``) reach the factored path; the update is CAGrad's on the materialised gradients."""
    num_tasks = 4
    critic = TwinPaCo(num_tasks)
    x, y = torch.randn(num_tasks, B, IN), torch.randn(num_tasks, B, 1)
    sets = {name for composition in linear_compositions(critic) for name in composition.offsets}
    assert "q1.layers.0.sets.weight" in sets and "q2.head.sets.bias" in sets and sets <= critic.shared_parameters().keys()

    def loss(forward: Callable[[Tensor], tuple[Tensor, Tensor]], xs: Tensor, ys: Tensor) -> Tensor:
        q1, q2 = forward(xs)
        return F.mse_loss(q1, ys) + F.mse_loss(q2, ys)

    result = balanced_gradients(critic, loss, (x, y), make_balancer("cagrad", num_tasks))
    materialised = per_task_gradients(module_task_loss(critic, loss), critic.shared_parameters(), critic.task_parameters(), (x, y))
    expected = balanced_direction(make_balancer("cagrad", num_tasks), materialised) | materialised.task
    assert result.grads.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(result.grads[name], value, atol=1e-5, rtol=1e-3)


@pytest.mark.slow
def test_compiled_factored_gradients_equal_the_eager_ones() -> None:
    num_tasks = 3
    net = paco("paco-embedding", num_tasks)
    x, y = torch.randn(num_tasks, B, IN), torch.randn(num_tasks, B, OUT)
    eager = balanced_gradients(net, task_mse, (x, y), make_balancer("cagrad", num_tasks))
    compiled = balanced_gradients(net, task_mse, (x, y), make_balancer("cagrad", num_tasks), compiled=True)
    for name, value in eager.grads.items():
        torch.testing.assert_close(compiled.grads[name], value, atol=ATOL, rtol=RTOL)
