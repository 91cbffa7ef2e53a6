"""Tests for mtrl.gramian: the Gramian path equals the materialised per-task gradients' Gramian and update."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtrl.balancers import BALANCERS, Balancer, make_balancer
from mtrl.bronet import MultiTaskBroNet
from mtrl.encoders import EncoderConfig, make_network
from mtrl.gradients import balanced_gradients, module_task_loss, per_task_gradients
from mtrl.gramian import gramian_gradients, needs_full_gradients, resolve_gradient_path
from mtrl.nn import MultiTaskMLP

B, IN, OUT = 3, 5, 2
GRAM_RTOL = 1e-5  # relative Frobenius error of the Gramian (float32)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def task_mse(forward: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
    return F.mse_loss(torch.tanh(forward(x)), y)


NETWORKS: dict[str, Callable[[int], nn.Module]] = {
    "mlp": lambda t: MultiTaskMLP(IN, [8, 7], OUT, t),
    "mlp-shared-head": lambda t: MultiTaskMLP(IN, [8, 7], OUT, t, per_task_head=False),
    "mlp-layer-norm": lambda t: MultiTaskMLP(IN, [8, 7], OUT, t, layer_norm=True),
    "bronet": lambda t: MultiTaskBroNet(IN, 8, 2, OUT, t),
    "mlp-embedding": lambda t: make_network(IN, (8, 7), OUT, t, True, EncoderConfig("mlp", "embedding", task_embedding_dim=3)),
    "moore": lambda t: make_network(IN, (8, 7), OUT, t, True, EncoderConfig("moore", num_experts=3)),
    "moore-embedding": lambda t: make_network(
        IN, (8, 7), OUT, t, True, EncoderConfig("moore", "embedding", task_embedding_dim=3, num_experts=3)
    ),
    "softmod": lambda t: make_network(IN, (8, 6), OUT, t, True, EncoderConfig("softmod", num_modules=2, module_layers=3, module_width=4)),
    "paco": lambda t: make_network(IN, (8, 7), OUT, t, True, EncoderConfig("paco", num_parameter_sets=3)),
    "paco-shared-head": lambda t: make_network(IN, (8, 7), OUT, t, False, EncoderConfig("paco", num_parameter_sets=3)),
}


class FixedWeights(Balancer):
    """Keeps the Gramian it is given and weights the tasks 1, 2, .., T (normalised)."""

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        self.gram = gram.clone()
        weights = torch.arange(1, self.num_tasks + 1, dtype=gram.dtype)
        return weights / weights.sum()


def materialised(net: nn.Module, x: Tensor, y: Tensor):
    loss = module_task_loss(net, task_mse)
    return per_task_gradients(loss, net.shared_parameters(), net.task_parameters(), (x, y))


@pytest.mark.parametrize("num_tasks", [1, 2, 10, 50])
@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_gramian_equals_that_of_the_materialised_gradients(network: str, num_tasks: int) -> None:
    net = NETWORKS[network](num_tasks)
    x, y = torch.randn(num_tasks, B, IN), torch.rand(num_tasks, B, OUT) * 2 - 1
    reference = materialised(net, x, y)
    balancer = FixedWeights(num_tasks)
    result = gramian_gradients(net, task_mse, (x, y), balancer)
    expected = reference.gram()
    assert torch.linalg.matrix_norm(balancer.gram - expected) <= GRAM_RTOL * torch.linalg.matrix_norm(expected)
    weights = balancer.weights(expected)
    torch.testing.assert_close(result.losses, reference.losses)
    for name, block in reference.shared_blocks.items():
        direction = torch.tensordot(weights, block, dims=1)  # sum_t w_t g_t
        torch.testing.assert_close(result.grads[name], direction, atol=1e-6, rtol=1e-4)
    for name, grad in reference.task.items():
        torch.testing.assert_close(result.grads[name], grad, atol=1e-6, rtol=1e-4)
    assert all(param.grad is None for param in net.parameters())


def test_the_kernel_form_of_a_wide_layer_equals_the_materialised_gramian() -> None:
    """Few rows and wide layers: the Linear rule takes the kernel form ``(dy dy^T) * (x x^T)``."""
    net = MultiTaskMLP(64, [96, 96], OUT, 2)
    x, y = torch.randn(2, 2, 64), torch.rand(2, 2, OUT)
    balancer = FixedWeights(2)
    gramian_gradients(net, task_mse, (x, y), balancer)
    expected = materialised(net, x, y).gram()
    assert torch.linalg.matrix_norm(balancer.gram - expected) <= GRAM_RTOL * torch.linalg.matrix_norm(expected)


GRAMIAN_BALANCERS = sorted(name for name, cls in BALANCERS.items() if cls.requires_grads)


@pytest.mark.parametrize("name", GRAMIAN_BALANCERS)
def test_every_gramian_balancer_gives_todays_update(name: str) -> None:
    num_tasks = 4
    reference_balancer, balancer = make_balancer(name, num_tasks, seed=3), make_balancer(name, num_tasks, seed=3)
    if needs_full_gradients(balancer):
        pytest.skip(f"{name} reads the per-task gradients themselves: it always takes the materialised path")
    net = MultiTaskMLP(IN, [8, 7], OUT, num_tasks, layer_norm=True)
    x, y = torch.randn(num_tasks, B, IN), torch.rand(num_tasks, B, OUT)
    torch.manual_seed(5)  # a few TorchJD aggregators draw from torch's global generator
    expected = balanced_gradients(net, task_mse, (x, y), reference_balancer)
    torch.manual_seed(5)
    result = gramian_gradients(net, task_mse, (x, y), balancer)
    assert result.grads.keys() == expected.grads.keys()
    for key, grad in expected.grads.items():
        torch.testing.assert_close(result.grads[key], grad, atol=1e-5, rtol=1e-4)
    for key, value in reference_balancer.diagnostics().items():
        torch.testing.assert_close(balancer.diagnostics()[key], value, atol=1e-5, rtol=1e-4)


class FirstTask(Balancer):
    """Overrides combine: needs the per-task gradients themselves."""

    def combine(self, grads: Tensor, losses: Tensor | None = None) -> Tensor:
        return grads[0]


def test_a_balancer_that_needs_the_full_gradients_keeps_the_materialised_path() -> None:
    net = MultiTaskMLP(IN, [8], OUT, 2)
    assert needs_full_gradients(FirstTask(2))
    assert resolve_gradient_path("sac.gradient_path", "auto", net, 2, FirstTask(2)) == "materialised"
    with pytest.raises(ValueError, match="sac.gradient_path gramian"):
        resolve_gradient_path("sac.gradient_path", "gramian", net, 2, FirstTask(2))
    with pytest.raises(ValueError, match="needs the per-task gradients"):
        gramian_gradients(net, task_mse, (torch.randn(2, B, IN), torch.rand(2, B, OUT)), FirstTask(2))


def test_auto_takes_the_gramian_path_by_size() -> None:
    cagrad = make_balancer("cagrad", 10)
    assert resolve_gradient_path("f", "auto", MultiTaskMLP(IN, [400] * 3, OUT, 10), 10, cagrad) == "materialised"
    wide = MultiTaskMLP(IN, [2048] * 3, OUT, 10)
    assert resolve_gradient_path("f", "auto", wide, 10, cagrad) == "gramian"
    assert resolve_gradient_path("f", "materialised", wide, 10, cagrad) == "materialised"
    with pytest.raises(ValueError, match="f must be one of auto, materialised, gramian, got 'fast'"):
        resolve_gradient_path("f", "fast", wide, 10, cagrad)
