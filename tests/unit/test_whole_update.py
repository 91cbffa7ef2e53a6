"""The update as one compiled function: the tensor-only optimizer step, the tensor-only balanced step
of every balancer, and the whole SAC update compiled against the eager one (float32 tolerance).

Compiling is what these tests cost (seconds per balancer, about half a minute for the whole SAC
update), so the networks are tiny: the size of a graph, not of its tensors, sets the time.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from agents.sac import MultiTaskSAC, SACConfig, resolve_update_graph
from mtrl.balanced_step import BalancedStep
from mtrl.balancers import BALANCERS, make_balancer
from mtrl.nn import MultiTaskMLP
from mtrl.optim import NetworkOptimizer, OptimizerConfig, clip_by_global_norm, clip_gradients
from mtrl.replay import TransitionBatch
from mtrl.schedules import ScheduleConfig

T, B, IN, OUT = 3, 8, 4, 2
BALANCER = "cagrad"
COSINE = ScheduleConfig(name="warmup_cosine", warmup_updates=2)


def _module(seed: int = 0) -> MultiTaskMLP:
    torch.manual_seed(seed)
    return MultiTaskMLP(IN, (8,), OUT, T)


def _inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, B, IN, generator=g), torch.randn(T, B, OUT, generator=g)


def _loss(forward, x, y):
    prediction = forward(x)  # [B, OUT]
    return (prediction - y).pow(2).mean(), prediction.mean()


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name,weight_decay", [("adam", 0.0), ("adam", 0.1), ("adamw", 0.05)])
def test_the_tensor_only_optimizer_step_agrees_with_torch_and_keeps_its_state_layout(name, weight_decay):
    eager_module, graph_module = _module(), _module()
    config = OptimizerConfig(name=name, lr=1e-2, weight_decay=weight_decay)
    eager = NetworkOptimizer.build(eager_module, config, COSINE, total_updates=6)
    graph = NetworkOptimizer.build(graph_module, config, COSINE, total_updates=6)
    for seed in range(4):
        grads = [torch.randn_like(p, generator=torch.Generator().manual_seed(seed + i)) for i, p in enumerate(eager_module.parameters())]
        for param, grad in zip(eager_module.parameters(), grads):
            param.grad = grad.clone()
        eager.step()
        groups = graph.graph_groups()
        by_param = {id(p): g for p, g in zip(graph_module.parameters(), grads)}
        graph.graph_step(groups, [[by_param[id(p)] for p in group.params] for group in groups])
        graph.after_graph_step()
    for a, b in zip(eager_module.parameters(), graph_module.parameters()):
        assert _close(a, b)
    assert graph.learning_rate == eager.learning_rate  # the schedule stepped once per step on the host
    eager_state, graph_state = eager.state_dict(), graph.state_dict()
    assert eager_state["schedule"] == graph_state["schedule"]
    for a, b in zip(eager_state["optimizer"]["state"].values(), graph_state["optimizer"]["state"].values()):
        assert a.keys() == b.keys() and a["step"].dtype == b["step"].dtype and a["step"].item() == b["step"].item() == 4
        assert _close(a["exp_avg"], b["exp_avg"]) and _close(a["exp_avg_sq"], b["exp_avg_sq"])
    # and an eager step continues from the state the graph steps left (a run may change paths on resume)
    for param in graph_module.parameters():
        param.grad = torch.ones_like(param)
    graph.step()


def test_lion_cannot_step_inside_a_graph():
    optimizer = NetworkOptimizer.build(_module(), OptimizerConfig(name="lion", lr=1e-4))
    assert not optimizer.graph_capable
    with pytest.raises(ValueError, match="Adam or AdamW, got Lion"):
        optimizer.graph_groups()


@pytest.mark.parametrize("max_norm", [0.0, 0.5, 100.0])
def test_functional_clipping_is_clip_gradients(max_norm):
    module = _module()
    for i, param in enumerate(module.parameters()):
        param.grad = torch.randn_like(param, generator=torch.Generator().manual_seed(i))
    grads = [p.grad.clone() for p in module.parameters()]
    clipped, norm = clip_by_global_norm(grads, max_norm)
    assert torch.equal(norm, clip_gradients(module, max_norm))
    for a, param in zip(clipped, module.parameters()):
        assert torch.allclose(a, param.grad)


def _balanced_step(name: str) -> BalancedStep:
    balancer = make_balancer(name, T, seed=3, compile_solver=False)
    return BalancedStep.build("critic", _module(), balancer, OptimizerConfig(lr=1e-2, max_grad_norm=1.0), COSINE, total_updates=6)


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_a_compiled_tensor_only_balanced_step_agrees_with_the_eager_step(name):
    """Traced by dynamo and functionalised as the whole update is, but run by aot_eager rather than
    inductor: the same graph without inductor's code generation (seconds instead of ~15 s per
    balancer). The whole SAC update below goes through inductor."""
    eager, graph = _balanced_step(name), _balanced_step(name)
    compiled = torch.compile(lambda inputs, groups: graph.graph_step(_loss, inputs, groups, has_aux=True), backend="aot_eager", dynamic=False)
    for seed in range(3):
        expected = eager.step(_loss, _inputs(seed), has_aux=True)
        result = compiled(_inputs(seed), graph.optimizer.graph_groups())
        graph.optimizer.after_graph_step()
        assert _close(result.losses, expected.losses) and _close(result.aux, expected.aux)
        assert _close(result.grad_norm, expected.grad_norm)
    for a, b in zip(eager.module.parameters(), graph.module.parameters()):
        assert _close(a, b), name
    for key, value in eager.metrics().items():
        assert _close(graph.metrics()[key], value), key


def _sac(update_graph: str, **config) -> MultiTaskSAC:
    torch.manual_seed(0)
    sac = SACConfig(hidden_dims=(16,), compile_gradients=False, update_graph=update_graph, schedule=COSINE, **config)
    balancers = {n: make_balancer(BALANCER, T, compile_solver=False) for n in MultiTaskSAC.BALANCED_NETWORKS}
    box = np.ones(2, dtype=np.float32)
    return MultiTaskSAC(5 + T, -box, box, T, sac, balancers, seed=0, total_updates=8)


def _batch(seed: int) -> TransitionBatch:
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(T, B, *shape, generator=g)  # noqa: E731
    return TransitionBatch(obs=r(5 + T), action=r(2).tanh(), reward=r(), next_obs=r(5 + T), done=(r() > 1).float())


def test_the_whole_sac_update_compiled_agrees_with_the_eager_one():
    # actor and targets every second update: both branches of the compiled update are taken
    eager, compiled = (_sac(mode, actor_update_frequency=2, target_update_frequency=2) for mode in ("off", "compiled"))
    assert compiled.update_graph == "compiled" and compiled._whole_update is not None
    for seed in range(4):
        expected, metrics = eager.update(_batch(seed)), compiled.update(_batch(seed))
        assert metrics.keys() == expected.keys()
        for key, value in expected.items():
            assert _close(metrics[key], value), (seed, key)
    for (key, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        assert _close(a, b), key
    assert compiled.generator.get_state().equal(eager.generator.get_state())  # the same noise was drawn
    for name, part in eager.optimizers().items():
        assert part.state_dict().keys() == compiled.optimizers()[name].state_dict().keys()
    assert compiled.actor_step.optimizer.learning_rate == eager.actor_step.optimizer.learning_rate


def test_update_graph_is_resolved_per_device_and_refused_where_it_cannot_run():
    assert resolve_update_graph("auto", torch.device("cpu"), []) == "off"
    assert resolve_update_graph("auto", torch.device("cuda"), []) == "off"  # until the GPU path is measured
    assert resolve_update_graph("compiled", torch.device("cpu"), []) == "compiled"
    with pytest.raises(ValueError, match="cuda-graph needs a CUDA device"):
        resolve_update_graph("cuda-graph", torch.device("cpu"), [])
    with pytest.raises(ValueError, match="the actor optimizer is not"):
        _sac("compiled", actor_optimizer=OptimizerConfig(name="lion", lr=1e-4))
    with pytest.raises(ValueError, match="sac.update_graph must be one of"):
        SACConfig(update_graph="fast")
    assert dataclasses.replace(SACConfig(), update_graph="off").update_graph == "off"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_cuda_graph_update_agrees_with_the_eager_one_and_never_synchronises():
    box = np.ones(2, dtype=np.float32)
    agents = {}
    for mode in ("off", "cuda-graph"):
        torch.manual_seed(0)
        sac = SACConfig(hidden_dims=(16,), update_graph=mode, schedule=COSINE)
        balancers = {n: make_balancer("cagrad", T) for n in MultiTaskSAC.BALANCED_NETWORKS}
        agents[mode] = MultiTaskSAC(5 + T, -box, box, T, sac, balancers, device="cuda", seed=0, total_updates=8)
    batches = [TransitionBatch(**{k: v.cuda() for k, v in dataclasses.asdict(_batch(seed)).items()}) for seed in range(4)]
    for batch in batches[:3]:
        expected, metrics = agents["off"].update(batch), agents["cuda-graph"].update(batch)
        for key, value in expected.items():
            assert _close(metrics[key].cpu(), value.cpu()), key
    torch.cuda.set_sync_debug_mode("error")
    try:
        agents["cuda-graph"].update(batches[3])
    finally:
        torch.cuda.set_sync_debug_mode(0)
