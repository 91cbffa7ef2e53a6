"""Tests for mtrl.gramian: the Gramian path equals the materialised per-task gradients' Gramian and update."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtrl.balancers import BALANCERS, Balancer, make_balancer
from mtrl.bronet import MultiTaskBroNet
from mtrl.encoders import EncoderConfig, make_network
from mtrl.gradients import balanced_gradients, module_task_loss, per_task_gradients
from mtrl.gramian import (
    AUTO_GRAMIAN_KERNEL_SHARE,
    AUTO_GRAMIAN_MIN_ELEMENTS,
    GRAM_BLOCK_ROWS,
    gramian_gradients,
    kernel_share,
    linear_gram_form,
    needs_full_gradients,
    resolve_gradient_path,
)
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


@pytest.mark.parametrize(("num_tasks", "rows", "width"), [(2, 2, 96), (5, 128, 1536)])
def test_the_kernel_form_of_a_wide_layer_equals_the_materialised_gramian(num_tasks: int, rows: int, width: int) -> None:
    """Few rows and wide layers: the Linear rule takes the kernel form ``(x_I x_J^T) * (dy_I dy_J^T)`` over task groups
    (one group of 2 tasks; groups of 2, 2 and 1 task). The Gramian's reference is in float64: at this size the float32
    ``G G^T`` of the materialised gradients sums millions of products and is itself off by more than ``GRAM_RTOL``."""
    assert linear_gram_form(num_tasks, rows, width, width) == "kernel"
    net = MultiTaskMLP(width, [width], OUT, num_tasks)
    x, y = torch.randn(num_tasks, rows, width), torch.rand(num_tasks, rows, OUT)
    balancer = FixedWeights(num_tasks)
    result = gramian_gradients(net, task_mse, (x, y), balancer)
    expected = materialised(copy.deepcopy(net).double(), x.double(), y.double()).gram()
    assert torch.linalg.matrix_norm(balancer.gram.double() - expected) <= GRAM_RTOL * torch.linalg.matrix_norm(expected)
    weights = balancer.weights(expected.float())
    for name, block in materialised(net, x, y).shared_blocks.items():
        torch.testing.assert_close(result.grads[name], torch.tensordot(weights, block, dims=1), atol=1e-6, rtol=1e-4)


def test_the_blocked_form_over_several_row_blocks_equals_the_materialised_gramian() -> None:
    """Many rows and a layer wider than a row block: the per-task weight gradients in blocks, the last one ragged."""
    width = 2 * GRAM_BLOCK_ROWS + 22
    assert linear_gram_form(3, 20, 16, width) == "blocks"
    net = MultiTaskMLP(16, [width], OUT, 3)
    x, y = torch.randn(3, 20, 16), torch.rand(3, 20, OUT)
    balancer = FixedWeights(3)
    result = gramian_gradients(net, task_mse, (x, y), balancer)
    reference = materialised(net, x, y)
    expected = reference.gram()
    assert torch.linalg.matrix_norm(balancer.gram - expected) <= GRAM_RTOL * torch.linalg.matrix_norm(expected)
    weights = balancer.weights(expected)
    for name, block in reference.shared_blocks.items():
        torch.testing.assert_close(result.grads[name], torch.tensordot(weights, block, dims=1), atol=1e-6, rtol=1e-4)

GRAMIAN_BALANCERS = sorted(name for name, cls in BALANCERS.items() if cls.requires_grads)


@pytest.mark.parametrize("name", GRAMIAN_BALANCERS)
def test_every_gramian_balancer_gives_todays_update(name: str) -> None:
    num_tasks = 4
    reference_balancer, balancer = make_balancer(name, num_tasks, seed=3), make_balancer(name, num_tasks, seed=3)
    if needs_full_gradients(balancer):
        pytest.skip(f"{name} reads the per-task gradients themselves or two batches: it always takes the materialised path")
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
    cagrad = make_balancer("cagrad", 50)
    assert resolve_gradient_path("f", "auto", MultiTaskMLP(IN, [1024] * 3, OUT, 50), 50, cagrad) == "materialised"
    wide = MultiTaskMLP(IN, [2048] * 3, OUT, 50)
    assert resolve_gradient_path("f", "auto", wide, 50, cagrad) == "gramian"
    assert resolve_gradient_path("f", "materialised", wide, 50, cagrad) == "materialised"
    with pytest.raises(ValueError, match="f must be one of auto, materialised, gramian, got 'fast'"):
        resolve_gradient_path("f", "fast", wide, 10, cagrad)


def test_auto_takes_the_gramian_path_where_the_kernel_form_makes_it_faster() -> None:
    """Width 2048, T = 10, 128 samples per task: under the memory threshold, but the square layers take the kernel form."""
    cagrad = make_balancer("cagrad", 10)
    wide = MultiTaskMLP(IN, [2048] * 3, OUT, 10)
    square = 2 * 2048 * 2048
    shared = sum(param.numel() for param in wide.shared_parameters().values())
    assert kernel_share(wide, 10, 128) == pytest.approx(square / shared)
    assert kernel_share(wide, 10, 128) > AUTO_GRAMIAN_KERNEL_SHARE
    assert 10 * shared < AUTO_GRAMIAN_MIN_ELEMENTS
    assert resolve_gradient_path("f", "auto", wide, 10, cagrad) == "materialised"  # samples per task unknown: by memory
    assert resolve_gradient_path("f", "auto", wide, 10, cagrad, samples_per_task=128) == "gramian"
    assert resolve_gradient_path("f", "auto", wide, 10, cagrad, samples_per_task=1024) == "materialised"  # blocks cheaper
    assert kernel_share(MultiTaskMLP(IN, [1024] * 3, OUT, 10), 10, 128) == 0.0
    tiny = MultiTaskMLP(64, [64] * 2, OUT, 2)  # the kernel form has fewer multiply-adds at 5 samples per task ...
    assert linear_gram_form(2, 5, 64, 64) == "kernel"
    assert kernel_share(tiny, 2, 5) == 0.0  # ... but a layer this small does not decide the time
    assert resolve_gradient_path("f", "auto", tiny, 2, make_balancer("cagrad", 2), samples_per_task=5) == "materialised"
    assert resolve_gradient_path("f", "auto", wide, 10, FirstTask(10), samples_per_task=128) == "materialised"


# ------------------------------------------------------------------------------------- the agents
SAC_T, SAC_OBS, SAC_ACT, SAC_B = 3, 7, 2, 16


def _sac(path: str, **fields: object):
    import numpy as np

    from agents.sac import MultiTaskSAC, SACConfig

    config = SACConfig(hidden_dims=(16, 16), compile_gradients=False, gradient_path=path, **fields)  # type: ignore[arg-type]
    low, high = -np.ones(SAC_ACT, dtype=np.float32), np.ones(SAC_ACT, dtype=np.float32)
    torch.manual_seed(0)
    balancers = {"critic": make_balancer("cagrad", SAC_T), "actor": make_balancer("mgda", SAC_T)}
    return MultiTaskSAC(SAC_OBS, low, high, SAC_T, config, balancers, seed=0)


def _sac_batch():
    from mtrl.replay import TransitionBatch

    g = torch.Generator().manual_seed(1)
    return TransitionBatch(
        obs=torch.randn(SAC_T, SAC_B, SAC_OBS, generator=g),
        action=torch.rand(SAC_T, SAC_B, SAC_ACT, generator=g) * 2 - 1,
        reward=torch.randn(SAC_T, SAC_B, generator=g),
        next_obs=torch.randn(SAC_T, SAC_B, SAC_OBS, generator=g),
        done=(torch.rand(SAC_T, SAC_B, generator=g) < 0.1).float(),
    )


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        torch.testing.assert_close(state_a[key], state_b[key], atol=2e-5, rtol=1e-4, msg=key)


@pytest.mark.parametrize("critic", ["mlp", "mlp-layer-norm", "brc"])
def test_sac_updates_agree_on_both_paths(critic: str) -> None:
    fields: dict[str, object] = {
        "mlp": {},
        "mlp-layer-norm": {"critic_layer_norm": True},
        "brc": {"critic": "brc", "critic_width": 16, "num_bins": 11},
    }[critic]
    agents = {path: _sac(path, **fields) for path in ("materialised", "gramian")}
    assert agents["gramian"].update_graph == "off"
    assert all(step.takes_gramian_path for step in agents["gramian"].balanced_steps.values())
    metrics = {}
    for path, agent in agents.items():
        for seed in range(2):
            metrics[path] = agent.update(_sac_batch())
    _assert_same_state(agents["materialised"], agents["gramian"])
    for key, value in metrics["materialised"].items():
        torch.testing.assert_close(metrics["gramian"][key], value, atol=2e-5, rtol=1e-4, msg=key)


@pytest.mark.parametrize("log_std", ["per_task", "shared"])
def test_ppo_updates_agree_on_both_paths(log_std: str) -> None:
    import numpy as np

    from agents.ppo import MultiTaskPPO, PPOConfig

    num_tasks, envs, obs_dim, act = 3, 2, 5, 2
    low, high = -np.ones(act, dtype=np.float32), np.ones(act, dtype=np.float32)
    agents = {}
    for path in ("materialised", "gramian"):
        config = PPOConfig(
            compile_gradients=False, hidden_dims=(16, 16), rollout_steps=8, epochs=2, minibatches=2, log_std=log_std, gradient_path=path  # type: ignore[arg-type]
        )
        torch.manual_seed(0)
        balancers = {"critic": make_balancer("pcgrad", num_tasks, seed=1), "actor": make_balancer("cagrad", num_tasks)}
        agents[path] = MultiTaskPPO(obs_dim, low, high, num_tasks, config, balancers, seed=0)
    for path, agent in agents.items():
        g = torch.Generator().manual_seed(2)
        collector = agent.collector(envs)
        zeros = torch.zeros(num_tasks, envs)
        for _ in range(agent.config.rollout_steps):
            collector.act(torch.randn(num_tasks, envs, obs_dim, generator=g))
            collector.record(reward=torch.randn(num_tasks, envs, generator=g), terminated=zeros, truncated=zeros, final_obs=torch.randn(num_tasks, envs, obs_dim, generator=g))
        agent.update(collector.finish(torch.randn(num_tasks, envs, obs_dim, generator=g)))
    _assert_same_state(agents["materialised"], agents["gramian"])


def test_the_gradient_path_is_checked_in_one_line() -> None:
    from agents.sac import SACConfig

    with pytest.raises(ValueError, match="sac.gradient_path"):
        SACConfig(gradient_path="fast")  # type: ignore[arg-type]


def test_a_compiled_update_on_the_gramian_path_is_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="sac.update_graph compiled cannot trace the Gramian path"):
        _sac("gramian", update_graph="compiled")
    assert _sac("gramian", update_graph="auto").update_graph == "off"
