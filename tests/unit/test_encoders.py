"""The encoder networks (mtrl.encoders): the config, each paper's equations, and per-task gradients through them.

Every network must run on a whole ``[T, B, in]`` batch and on one task's slice under ``vmap``, and
the per-task gradients that every balancer receives must equal a loop of per-task backward passes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from agents.ppo import MultiTaskPPO, PPOConfig
from benchmarks.update import Args as BenchArgs
from benchmarks.update import main as bench_main
from benchmarks.update import run as bench_run
from benchmarks.update import sac_config
from agents.sac import MultiTaskSAC, SACConfig
from envs import EnvConfig
from envs.testing import make_scripted_envs
from launch.config import BalancerConfig, PPOTrainConfig, SACTrainConfig, TrainConfig, config_from_plain
from launch.factory import make_trainer
from launch.replay_loop import ReplayLoopConfig
from launch.train import main as train_main
from launch.trainer import Trainer
from mtrl.balancers import Mean, make_balancer
from mtrl.checkpoint import load_latest
from mtrl.encoders import (
    EncoderConfig,
    MooreNetwork,
    PaCoNetwork,
    SoftModularNetwork,
    gram_schmidt,
    make_network,
    observation_width,
)
from mtrl.encoders.config import ENCODER_DEFAULTS
from mtrl.gradients import module_task_loss, per_task_gradients
from mtrl.nn import MultiTaskMLP
from mtrl.replay import TransitionBatch

T, B, IN, OUT = 3, 5, 6, 2
HIDDEN = (8, 7)
ATOL, RTOL = 1e-5, 1e-4

NETWORKS = {
    "mlp": (EncoderConfig(), True),
    "mlp-shared-head": (EncoderConfig(), False),
    "mlp-embedding": (EncoderConfig(task_conditioning="embedding", task_embedding_dim=3), True),
    "moore": (EncoderConfig(name="moore", num_experts=3), True),
    "moore-shared-head": (EncoderConfig(name="moore", num_experts=3), False),
    "moore-embedding": (EncoderConfig(name="moore", num_experts=2, task_conditioning="embedding", task_embedding_dim=4), True),
    "softmod": (EncoderConfig(name="softmod", num_modules=2, module_layers=2, module_width=5), True),
    "softmod-deep": (EncoderConfig(name="softmod", num_modules=3, module_layers=3, module_width=4), True),
    "softmod-one-layer": (EncoderConfig(name="softmod", num_modules=2, module_layers=1, module_width=4), True),
    "softmod-shared-head": (EncoderConfig(name="softmod", num_modules=2, module_layers=2, module_width=5), False),
    "softmod-embedding": (
        EncoderConfig(name="softmod", num_modules=2, module_layers=2, module_width=5, task_conditioning="embedding", task_embedding_dim=3),
        True,
    ),
    "paco": (EncoderConfig(name="paco", num_parameter_sets=3), True),
    "paco-shared-head": (EncoderConfig(name="paco", num_parameter_sets=3), False),
    "paco-embedding": (EncoderConfig(name="paco", num_parameter_sets=2, task_conditioning="embedding", task_embedding_dim=3), True),
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _network(key: str) -> nn.Module:
    encoder, per_task_head = NETWORKS[key]
    return make_network(IN, HIDDEN, OUT, T, per_task_head, encoder)


# ----------------------------------------------------------------------------- the config


def test_the_default_encoder_is_todays_mlp_drawing_the_same_parameters() -> None:
    torch.manual_seed(3)
    built = make_network(IN, HIDDEN, OUT, T, True, EncoderConfig())
    torch.manual_seed(3)
    reference = MultiTaskMLP(IN, HIDDEN, OUT, T, True)
    assert type(built) is MultiTaskMLP
    assert built.state_dict().keys() == reference.state_dict().keys()
    assert all(torch.equal(value, reference.state_dict()[name]) for name, value in built.state_dict().items())


def test_a_saved_config_without_an_encoder_section_loads_as_the_mlp() -> None:
    plain = SACTrainConfig().to_plain()
    del plain["sac"]["encoder"]
    assert config_from_plain(plain) == SACTrainConfig()
    assert config_from_plain(plain).sac.encoder == EncoderConfig(name="mlp", task_conditioning="onehot")


def test_options_take_their_defaults_until_given() -> None:
    assert EncoderConfig(name="moore").option("num_experts") == ENCODER_DEFAULTS["num_experts"] == 4
    assert EncoderConfig(name="moore", num_experts=6).option("num_experts") == 6
    assert EncoderConfig(task_conditioning="embedding").option("task_embedding_dim") == ENCODER_DEFAULTS["task_embedding_dim"]
    with pytest.raises(KeyError):
        EncoderConfig().option("num_experts")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "transformer"}, r"^encoder.name must be one of 'mlp', 'moore', 'softmod', 'paco', got 'transformer'$"),
        ({"name": "paco", "num_parameter_sets": 0}, r"^encoder.num_parameter_sets must be an integer >= 1, got 0$"),
        ({"name": "softmod", "num_parameter_sets": 2}, r"^encoder.num_parameter_sets is not an option of encoder 'softmod' .*; encoder 'paco' takes it$"),
        ({"name": "softmod", "num_modules": 0}, r"^encoder.num_modules must be an integer >= 1, got 0$"),
        ({"name": "softmod", "module_width": -3}, r"^encoder.module_width must be an integer >= 1, got -3$"),
        (
            {"name": "moore", "num_modules": 2},
            r"^encoder.num_modules is not an option of encoder 'moore' \(it takes: encoder.num_experts\); encoder 'softmod' takes it$",
        ),
        ({"task_conditioning": "text"}, r"^encoder.task_conditioning must be one of 'onehot', 'embedding', got 'text'$"),
        ({"name": "moore", "num_experts": 0}, r"^encoder.num_experts must be an integer >= 1, got 0$"),
        ({"name": "moore", "num_experts": True}, r"^encoder.num_experts must be an integer >= 1, got True$"),
        ({"num_experts": 4}, r"^encoder.num_experts is not an option of encoder 'mlp' \(it takes: none\); encoder 'moore' takes it$"),
        (
            {"name": "moore", "task_embedding_dim": 8},
            r"^encoder.task_embedding_dim is only taken with encoder.task_conditioning embedding, not 'onehot'$",
        ),
        ({"task_conditioning": "embedding", "task_embedding_dim": 0}, r"^encoder.task_embedding_dim must be an integer >= 1, got 0$"),
    ],
)
def test_bad_encoder_options_are_refused_in_one_line_naming_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EncoderConfig(**kwargs)


def test_more_experts_than_the_expert_width_are_refused_naming_the_field() -> None:
    moore = EncoderConfig(name="moore", num_experts=5)
    with pytest.raises(ValueError, match=r"^sac.encoder.num_experts must be <= the last of sac.hidden_dims \(4\)"):
        SACConfig(hidden_dims=(16, 4), encoder=moore)
    with pytest.raises(ValueError, match=r"^ppo.encoder.num_experts must be <= the last of ppo.hidden_dims \(4\)"):
        PPOConfig(hidden_dims=(4,), encoder=moore)
    SACConfig(hidden_dims=(4, 5), encoder=moore)


def test_the_command_line_refuses_an_option_of_another_encoder_and_creates_nothing(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train_main(["smoke", "--run-dir", str(run_dir), "--sac.encoder.num-experts", "3"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "encoder.num_experts is not an option of encoder 'mlp'" in " ".join(err.replace("│", " ").split())
    assert not run_dir.exists()


def test_only_the_one_hot_mlp_reads_the_task_id_from_the_observation() -> None:
    obs_dim = 39 + T
    assert observation_width(obs_dim, T, True, EncoderConfig()) == obs_dim
    assert observation_width(obs_dim, T, True, EncoderConfig(task_conditioning="embedding")) == 39
    assert observation_width(obs_dim, T, True, EncoderConfig(name="moore")) == 39
    assert observation_width(39, T, False, EncoderConfig(name="moore")) == 39


# ----------------------------------------------------------------------------- the common interface


@pytest.mark.parametrize("key", sorted(NETWORKS))
def test_every_network_splits_its_parameters_and_runs_on_a_task_slice_under_vmap(key: str) -> None:
    net = _network(key)
    shared, task = net.shared_parameters(), net.task_parameters()
    assert set(shared) | set(task) == {name for name, _ in net.named_parameters()} and not set(shared) & set(task)
    assert all(p.shape[0] == T for p in task.values())
    assert all(param is net.get_parameter(name) for name, param in {**shared, **task}.items())
    x = torch.randn(T, B, IN)
    out = net(x)
    assert out.shape == (T, B, OUT) and torch.isfinite(out).all()

    def one_task(task_slice: dict[str, Tensor], xs: Tensor) -> Tensor:
        return functional_call(net, {**shared, **task_slice}, (xs,))

    torch.testing.assert_close(vmap(one_task)(task, x), out)
    assert hasattr(net.head, "weight") and hasattr(net.head, "bias")


def _loop_reference(net: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-task gradients the slow way: one backward pass of each task's loss on the whole batch."""
    shared, task = net.shared_parameters(), net.task_parameters()
    losses = F.mse_loss(net(x), y, reduction="none").mean(dim=(1, 2))  # [T]
    rows, task_grads = [], {name: torch.zeros_like(p) for name, p in task.items()}
    for t in range(T):
        grads = torch.autograd.grad(losses[t], [*shared.values(), *task.values()], retain_graph=True, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, [*shared.values(), *task.values()])]
        rows.append(torch.cat([g.reshape(-1) for g in grads[: len(shared)]]))
        for name, grad in zip(task, grads[len(shared) :]):
            others = [s for s in range(T) if s != t]
            assert torch.count_nonzero(grad[others]) == 0, f"task {t}'s loss reaches another task's slice of {name}"
            task_grads[name][t] = grad[t]
    return torch.stack(rows), task_grads


@pytest.mark.parametrize("key", sorted(NETWORKS))
def test_per_task_gradients_through_every_network_equal_a_loop_of_backward_passes(key: str) -> None:
    net = _network(key)
    x, y = torch.randn(T, B, IN), torch.randn(T, B, OUT)
    loss = module_task_loss(net, lambda forward, xs, ys: F.mse_loss(forward(xs), ys))
    grads = per_task_gradients(loss, net.shared_parameters(), net.task_parameters(), (x, y))
    shared_ref, task_ref = _loop_reference(net, x, y)
    torch.testing.assert_close(grads.shared, shared_ref, atol=ATOL, rtol=RTOL)
    assert grads.task.keys() == task_ref.keys()
    for name, expected in task_ref.items():
        torch.testing.assert_close(grads.task[name], expected, atol=ATOL, rtol=RTOL)
    assert grads.shared.abs().sum(dim=1).gt(0).all()  # every task's loss reaches the shared parameters


# ----------------------------------------------------------------------------- MOORE


def test_gram_schmidt_gives_an_orthonormal_basis_of_the_same_nested_spans() -> None:
    vectors = torch.randn(4, 6, 5, 9, dtype=torch.float64)  # [..., k, d]
    basis = gram_schmidt(vectors)
    torch.testing.assert_close(basis @ basis.transpose(-1, -2), torch.eye(5, dtype=torch.float64).expand(4, 6, 5, 5))
    # the span of the first i vectors is the span of the first i basis vectors: the QR factorisation
    q, r = torch.linalg.qr(vectors.transpose(-1, -2))  # [..., d, k], [..., k, k]
    torch.testing.assert_close(basis, (q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)).transpose(-1, -2))


def test_gram_schmidt_of_half_precision_vectors_is_done_in_float32() -> None:
    basis = gram_schmidt(torch.randn(7, 4, 16).bfloat16())
    assert basis.dtype == torch.float32
    torch.testing.assert_close(basis @ basis.transpose(-1, -2), torch.eye(4).expand(7, 4, 4), atol=1e-5, rtol=0)


def test_moore_expert_outputs_are_orthonormal_per_sample() -> None:
    net = make_network(IN, (32, 16), OUT, T, True, EncoderConfig(name="moore", num_experts=6))
    basis = net.expert_basis(torch.randn(T, 64, IN) * 3)  # [T, B, k, d]
    assert basis.shape == (T, 64, 6, 16)
    torch.testing.assert_close(basis @ basis.transpose(-1, -2), torch.eye(6).expand(T, 64, 6, 6), atol=1e-5, rtol=0)


def test_moore_output_is_the_papers_equations() -> None:
    """y = head_t(tanh(sum_i w_t,i v_i)), v = GS(h_1(s) .. h_k(s)), each expert an MLP with a linear last layer."""
    k = 3
    net = make_network(IN, HIDDEN, OUT, T, True, EncoderConfig(name="moore", num_experts=k))
    assert isinstance(net, MooreNetwork)
    x = torch.randn(T, B, IN, dtype=torch.float64)
    net = net.double()
    first, second = net.experts[0], net.experts[2]
    expected = torch.empty(T, B, OUT, dtype=torch.float64)
    for t in range(T):
        for b in range(B):
            experts = torch.stack(
                [
                    F.linear(F.relu(F.linear(x[t, b], first.weight[i].T, first.bias[i])), second.weight[i].T, second.bias[i])
                    for i in range(k)
                ]
            )  # [k, d]
            q, r = torch.linalg.qr(experts.T)
            orthonormal = (q * torch.sign(torch.diagonal(r))).T  # [k, d]: Gram-Schmidt of the experts' outputs, in order
            features = torch.tanh(net.task_code.table.weight[t] @ orthonormal)  # [d]
            expected[t, b] = features @ net.head.weight[t] + net.head.bias[t]
    torch.testing.assert_close(net(x), expected)


def test_moore_task_encoder_is_a_linear_map_of_the_one_hot() -> None:
    net = make_network(IN, HIDDEN, OUT, T, True, EncoderConfig(name="moore", num_experts=3))
    one_hot = torch.eye(T)
    encoder = nn.Linear(T, 3, bias=False)
    with torch.no_grad():
        encoder.weight.copy_(net.task_code.table.weight.T)  # [k, T]
    torch.testing.assert_close(encoder(one_hot), net.task_code())
    bound = (6.0 / (T + 3)) ** 0.5  # Xavier-uniform, as the authors' task encoder
    assert net.task_code.table.weight.abs().max() <= bound


# ----------------------------------------------------------------------------- Soft Modularization


def _softmod(num_modules: int = 3, module_layers: int = 3, per_task_head: bool = True) -> SoftModularNetwork:
    encoder = EncoderConfig(name="softmod", num_modules=num_modules, module_layers=module_layers, module_width=4)
    net = make_network(IN, HIDDEN, OUT, T, per_task_head, encoder)
    assert isinstance(net, SoftModularNetwork)
    with torch.no_grad():  # routing far from uniform, so that a wrong index shows
        for layer in net.routing_out:
            layer.weight.normal_()
            layer.bias.normal_()
    return net


def test_soft_modularization_routing_weights_are_a_distribution_per_module() -> None:
    net = _softmod()
    weights = net.routing_weights(net.state_encoder(torch.randn(T, B, IN)))
    assert [tuple(w.shape) for w in weights] == [(T, B, 3, 3), (T, B, 3, 3), (T, B, 3)]
    for w in weights:
        assert (w >= 0).all()
        torch.testing.assert_close(w.sum(dim=-1), torch.ones(w.shape[:-1]))


def test_soft_modularization_routing_depends_on_both_the_state_and_the_task() -> None:
    net = _softmod()
    state = torch.randn(1, 2, IN).expand(T, 2, IN)  # the same two states for every task
    first = net.routing_weights(net.state_encoder(state))[0]  # [T, 2, n, n]
    assert not torch.allclose(first[0], first[1])  # same states, other task
    assert not torch.allclose(first[:, 0], first[:, 1])  # same task, other state


def test_soft_modularization_output_is_the_papers_equations() -> None:
    """Eq. 5-8 of Yang et al. with the authors' code's ReLU after the weighted sum and last routing over the modules."""
    net = _softmod().double()
    n, x = 3, torch.randn(T, B, IN, dtype=torch.float64)
    lin = lambda layer, v: layer.weight @ v + layer.bias  # noqa: E731  (an nn.Linear)
    expected = torch.empty(T, B, OUT, dtype=torch.float64)
    for t in range(T):
        for b in range(B):
            f = lin(net.state_encoder[2], F.relu(lin(net.state_encoder[0], x[t, b])))  # F(s): [D]
            u = f * net.task_code.table.weight[t]  # F(s) * H(z_t)
            p = [torch.softmax(lin(net.routing_out[0], F.relu(u)).view(n, n), dim=-1)]  # Eq. 5, 7
            p.append(torch.softmax(lin(net.routing_out[1], F.relu(lin(net.routing_in[0], p[0].flatten()) * u)).view(n, n), dim=-1))  # Eq. 6
            q = torch.softmax(lin(net.routing_out[2], F.relu(lin(net.routing_in[1], p[1].flatten()) * u)), dim=-1)
            layers = net.layers
            outputs = [F.relu(f) @ layers[0].weight[j] + layers[0].bias[j] for j in range(n)]  # layer 1: every module reads ReLU(F(s))
            for layer, routing in ((layers[1], p[0]), (layers[2], p[1])):  # Eq. 8
                inputs = [F.relu(sum(routing[i, j] * outputs[j] for j in range(n))) for i in range(n)]
                outputs = [inputs[i] @ layer.weight[i] + layer.bias[i] for i in range(n)]
            combined = F.relu(sum(q[j] * outputs[j] for j in range(n)))
            expected[t, b] = combined @ net.head.weight[t] + net.head.bias[t]
    torch.testing.assert_close(net(x), expected)


def test_soft_modularization_starts_with_near_uniform_routing() -> None:
    net = make_network(IN, HIDDEN, OUT, T, True, EncoderConfig(name="softmod", num_modules=4, module_layers=2, module_width=4))
    for w in net.routing_weights(net.state_encoder(torch.randn(T, B, IN))):
        torch.testing.assert_close(w, torch.full_like(w, 0.25), atol=1e-2, rtol=0)


# ----------------------------------------------------------------------------- PaCo


def test_paco_task_parameters_are_the_parameter_set_times_the_tasks_vector() -> None:
    """theta_t = Phi w_t, and task t's output is the plain MLP with theta_t."""
    net = make_network(IN, HIDDEN, OUT, T, True, EncoderConfig(name="paco", num_parameter_sets=4))
    assert isinstance(net, PaCoNetwork)
    phi = net.parameter_set()  # [P, K]
    sizes = [(IN, 8), (8, 7), (7, OUT)]
    assert phi.shape == (sum(i * o + o for i, o in sizes), 4)
    x = torch.randn(T, B, IN)
    out = net(x)
    for t in range(T):
        w_t = net.task_code.table.weight[t]  # [K]
        theta = phi @ w_t  # [P]
        torch.testing.assert_close(net.task_parameter_vector(w_t), theta)
        hidden, offset = x[t], 0
        for index, (fan_in, fan_out) in enumerate(sizes):
            weight = theta[offset : offset + fan_in * fan_out].view(fan_in, fan_out)
            bias = theta[offset + fan_in * fan_out : offset + fan_in * fan_out + fan_out]
            offset += fan_in * fan_out + fan_out
            hidden = hidden @ weight + bias
            hidden = F.relu(hidden) if index < len(sizes) - 1 else hidden
        torch.testing.assert_close(out[t], hidden)


def test_paco_shares_the_parameter_set_and_keeps_only_the_vectors_per_task() -> None:
    net = make_network(IN, HIDDEN, OUT, T, True, EncoderConfig(name="paco", num_parameter_sets=4))
    assert set(net.task_parameters()) == {"task_code.table.weight"}
    assert net.task_code.table.weight.shape == (T, 4)
    assert all(param.shape[0] == 4 for param in net.shared_parameters().values())  # the K parameter sets
    shared_head = make_network(IN, HIDDEN, OUT, T, False, EncoderConfig(name="paco", num_parameter_sets=4))
    assert isinstance(shared_head.head, nn.Linear)


# ----------------------------------------------------------------------------- in the agents

OBS_RAW, ACT = 5, 2
BOX = np.ones(ACT, dtype=np.float32)


def _one_hot_obs(*batch: int) -> Tensor:
    """Observations ``[T, *batch, OBS_RAW + T]`` whose last ``T`` entries are the task's one-hot id."""
    raw = torch.randn(T, *batch, OBS_RAW)
    one_hot = torch.eye(T).view(T, *([1] * len(batch)), T).expand(T, *batch, T)
    return torch.cat([raw, one_hot], dim=-1)


@pytest.mark.parametrize(
    "encoder",
    [
        EncoderConfig(name="moore", num_experts=2),
        EncoderConfig(task_conditioning="embedding"),
        EncoderConfig(name="softmod", module_width=4),
        EncoderConfig(name="paco", num_parameter_sets=2),
    ],
    ids=lambda e: f"{e.name}-{e.task_conditioning}",
)
def test_sac_with_an_encoder_drops_the_one_hot_and_updates_with_a_gramian_balancer(encoder: EncoderConfig) -> None:
    config = SACConfig(hidden_dims=(8, 8), compile_gradients=False, encoder=encoder)
    balancers = {"critic": make_balancer("cagrad", T, c=0.5), "actor": make_balancer("pcgrad", T, seed=1)}
    agent = MultiTaskSAC(OBS_RAW + T, -BOX, BOX, T, config, balancers, one_hot_in_obs=True)
    assert agent.actor.obs_width == agent.critic.obs_width == OBS_RAW
    before = {name: value.clone() for name, value in agent.state_dict().items()}
    batch = TransitionBatch(_one_hot_obs(4), torch.rand(T, 4, ACT) * 2 - 1, torch.randn(T, 4), _one_hot_obs(4), torch.zeros(T, 4))
    metrics = agent.update(batch)
    assert all(torch.isfinite(value).all() for value in metrics.values())
    task_names = [name for name in before if "task" in name]
    assert task_names and all(not torch.equal(before[name], agent.state_dict()[name]) for name in task_names if "target" not in name)
    assert agent.act(_one_hot_obs(2)).shape == (T, 2, ACT)


def test_ppo_with_moore_updates_and_keeps_its_task_weights_in_the_state() -> None:
    config = PPOConfig(hidden_dims=(8,), rollout_steps=4, epochs=1, minibatches=2, compile_gradients=False, encoder=EncoderConfig(name="moore", num_experts=2))
    agent = MultiTaskPPO(OBS_RAW + T, -BOX, BOX, T, config, {"critic": Mean(T), "actor": Mean(T)}, one_hot_in_obs=True)
    assert {"actor.net.task_code.table.weight", "critic.net.task_code.table.weight"} <= set(agent.state_dict())
    assert agent.actor.net.head.weight.abs().max() < 0.01  # the policy's small last layer (Andrychowicz et al. 2021)
    collector = agent.collector(1)
    zeros = torch.zeros(T, 1)
    for _ in range(4):
        collector.act(_one_hot_obs(1))
        collector.record(reward=torch.randn(T, 1), terminated=zeros, truncated=zeros, final_obs=_one_hot_obs(1))
    metrics = agent.update(collector.finish(_one_hot_obs(1)))
    assert all(torch.isfinite(value).all() for value in metrics.values())
    copy = MultiTaskPPO(OBS_RAW + T, -BOX, BOX, T, config, {"critic": Mean(T), "actor": Mean(T)}, one_hot_in_obs=True)
    copy.load_training_state(agent.training_state())
    assert all(torch.equal(value, copy.state_dict()[name]) for name, value in agent.state_dict().items())


def test_default_agents_keep_their_parameter_names() -> None:
    agent = MultiTaskSAC(OBS_RAW + T, -BOX, BOX, T, SACConfig(hidden_dims=(8,), compile_gradients=False), {"critic": Mean(T), "actor": Mean(T)})
    names = {name for name in agent.state_dict() if name.startswith(("actor.", "critic."))}
    assert names == {
        *(f"actor.net.{part}" for part in ("trunk.0.weight", "trunk.0.bias", "head.weight", "head.bias")),
        *(f"critic.{q}.{part}" for q in ("q1", "q2") for part in ("trunk.0.weight", "trunk.0.bias", "head.weight", "head.bias")),
    }
    assert dataclasses.replace(SACConfig(), encoder=EncoderConfig()) == SACConfig()


# ----------------------------------------------------------------------------- an exact resume


def _tiny_run(algo: str, encoder: EncoderConfig) -> TrainConfig:
    """A 2-task run on simulator-free environments (envs.testing), 100 steps, checkpoints every 25."""
    common = dict(
        env=EnvConfig(benchmark="reach-v3,drawer-close-v3", max_episode_steps=5),
        balancer=BalancerConfig(name="pcgrad"),
        total_steps=100,
        eval_every=0,
        final_eval_episodes=1,
        checkpoint_every=25,
        keep_checkpoints=10,
        log_every=30,
        device="cpu",
        progress=False,
        tensorboard=False,
    )
    if algo == "sac":
        sac = SACConfig(hidden_dims=(8, 8), compile_gradients=False, encoder=encoder)
        replay = ReplayLoopConfig(warmup_steps=20, updates_per_step=0.5, batch_size_per_task=8, buffer_capacity_per_task=200)
        return SACTrainConfig(sac=sac, replay=replay, **common)
    ppo = PPOConfig(hidden_dims=(8, 8), rollout_steps=5, epochs=2, minibatches=1, compile_gradients=False, encoder=encoder)
    return PPOTrainConfig(ppo=ppo, **{**common, "checkpoint_every": 30})


@pytest.mark.parametrize("algo", ["sac", "ppo"])
@pytest.mark.parametrize(
    "encoder",
    [EncoderConfig(name="moore", num_experts=2), EncoderConfig(name="softmod", module_width=4), EncoderConfig(name="paco", num_parameter_sets=2)],
    ids=lambda e: e.name,
)
def test_a_run_with_an_encoder_resumed_from_its_checkpoint_ends_exactly_as_the_uninterrupted_one(tmp_path, algo, encoder):
    config = _tiny_run(algo, encoder)

    def trainer(run_config: TrainConfig, run_dir: Path, **kwargs) -> Trainer:
        run_dir.mkdir(exist_ok=True)
        return make_trainer(run_config, run_dir, build_envs=make_scripted_envs, **kwargs)

    straight = trainer(config, tmp_path / "straight")
    straight.run()
    trainer(dataclasses.replace(config, total_steps=50), tmp_path / "resumed").run()  # the run that was cut short
    _, payload = load_latest(tmp_path / "resumed" / "checkpoints")
    assert 0 < payload["global_step"] <= 50
    resumed = trainer(config, tmp_path / "resumed", resume=payload)
    resumed.run()
    state = straight.agent.state_dict()
    assert any("task_code" in name for name in state)
    for name, value in state.items():
        assert torch.equal(value, resumed.agent.state_dict()[name]), name
    assert resumed.agent.num_updates == straight.agent.num_updates


# ----------------------------------------------------------------------------- compiled updates


def _close(a: Tensor, b: Tensor) -> bool:
    return torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "encoder",
    [EncoderConfig(name="moore", num_experts=2), EncoderConfig(name="softmod", module_width=4), EncoderConfig(name="paco", num_parameter_sets=2)],
    ids=lambda e: e.name,
)
def test_compiled_sac_updates_through_each_encoder_agree_with_the_eager_one(
    encoder: EncoderConfig, monkeypatch: pytest.MonkeyPatch, aot_eager_gradients: Callable
) -> None:
    """The compiled per-task gradients and the whole update compiled as one function give the eager update.

    Both through ``aot_eager`` (tests/conftest.py): what is checked is that the traced code of each
    encoder computes the eager update; inductor's code for the same operations is tested on the MLP.
    """
    monkeypatch.setattr("agents.base.compile_static", aot_eager_gradients)

    def agent(compile_gradients: bool, update_graph: str) -> MultiTaskSAC:
        torch.manual_seed(0)
        config = SACConfig(hidden_dims=(8, 8), compile_gradients=compile_gradients, update_graph=update_graph, encoder=encoder)
        balancers = {name: make_balancer("cagrad", T, compile_solver=False) for name in MultiTaskSAC.BALANCED_NETWORKS}
        return MultiTaskSAC(OBS_RAW + T, -BOX, BOX, T, config, balancers, seed=0, one_hot_in_obs=True)

    eager, gradients, whole = agent(False, "off"), agent(True, "off"), agent(False, "compiled")
    assert whole.update_graph == "compiled"
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        obs, next_obs = _one_hot_obs(4), _one_hot_obs(4)
        batch = TransitionBatch(obs, torch.rand(T, 4, ACT, generator=g) * 2 - 1, torch.randn(T, 4, generator=g), next_obs, torch.zeros(T, 4))
        expected = eager.update(batch)
        for compiled in (gradients, whole):
            metrics = compiled.update(batch)
            assert all(_close(metrics[key], value) for key, value in expected.items())
    for compiled in (gradients, whole):
        for (name, value), other in zip(eager.state_dict().items(), compiled.state_dict().values()):
            assert _close(value, other), name


# ----------------------------------------------------------------------------- mtrl-bench-update


@pytest.mark.slow
def test_bench_update_times_the_sac_rows_with_the_chosen_encoder(capsys, monkeypatch, aot_eager_gradients) -> None:
    # the compiled per-task gradients run through aot_eager (tests/conftest.py): the rows are what is checked here
    monkeypatch.setattr("benchmarks.update.compile_static", aot_eager_gradients)
    common = ["--tasks", "2", "--hidden", "8", "8", "--batch-size", "4", "--repeats", "1", "--warmup", "1", "--no-compile-solver"]
    bench_main([*common, "--balancers", "mean", "--loop-balancers", "--sac-balancers", "cagrad", "--no-whole-update", "--encoder", "moore"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["encoder"] == "moore"
    rows = printed["results"]["2"]
    assert {"sac-plain", "sac-lean", "sac/cagrad", "sac/cagrad/compiled"} <= set(rows)
    assert rows["sac/cagrad"]["ratio_to_sac_plain"] > 0
    config = sac_config(BenchArgs(hidden=(8, 8), encoder="moore"))
    assert config.encoder.name == "moore" and config.hidden_dims == (8, 8)


def test_bench_update_refuses_an_encoder_its_hidden_sizes_cannot_hold() -> None:
    with pytest.raises(SystemExit, match=r"^--encoder moore --critic mlp: sac.encoder.num_experts must be <= the last of sac.hidden_dims \(2\)"):
        bench_run(BenchArgs(tasks=(2,), hidden=(8, 2), encoder="moore"))


@pytest.mark.parametrize("section,config", [("sac", SACConfig), ("ppo", PPOConfig)])
def test_a_layer_norm_critic_needs_the_one_hot_mlp(section, config):
    """The critics' LayerNorm is an option of the MLP that reads the one-hot; another encoder refuses it in one line."""
    assert config(critic_layer_norm=True).critic_layer_norm
    with pytest.raises(ValueError, match=rf"^{section}.critic_layer_norm needs the mlp encoder with one-hot task conditioning[^\n]*$"):
        config(critic_layer_norm=True, encoder=EncoderConfig(name="moore"))
    with pytest.raises(ValueError, match="layer_norm is an option of the mlp encoder with one-hot task conditioning, not of encoder 'moore'"):
        make_network(4, (8,), 1, 2, True, EncoderConfig(name="moore"), layer_norm=True)
