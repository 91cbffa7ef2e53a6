"""The update as one compiled function: the optimizer's traced step, the balanced step of every
balancer, the whole SAC update and the PPO minibatch update compiled against the same code run
eagerly (float32 tolerance), and the choice of the update path.

Compiling is what these tests cost (seconds per balancer, about half a minute for the whole SAC
update), so the networks are tiny: the size of a graph, not of its tensors, sets the time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest
import torch

from agents.base import resolve_update_graph
from agents.ppo import MultiTaskPPO, PPOConfig
from agents.sac import MultiTaskSAC, SACConfig
from launch.update_path import AUTO_COMPILED_MIN_UPDATES, auto_update_graph
from mtrl.balanced_step import BalancedStep
from mtrl.balancers import BUILTIN_BALANCERS, make_balancer
from mtrl.compile import GRAPHS_PER_FUNCTION
from mtrl.distributions import gaussian_log_prob
from mtrl.encoders import EncoderConfig, make_network
from mtrl.nn import MultiTaskMLP
from mtrl.optim import NetworkOptimizer, OptimizerConfig
from mtrl.replay import TransitionBatch
from mtrl.rollout import Rollout
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


def _aot_eager(graphs: list[torch.fx.GraphModule]) -> Callable:
    """A stand-in for :func:`mtrl.compile.compile_static` that runs aot_eager and records the graphs it compiles.

    aot_eager runs the graph dynamo traced without inductor's code generation: seconds instead of
    tens of seconds per graph, and what it checks (the traced code computes what the eager code
    does, without recompiling) is the same.
    """
    aot_eager = torch._dynamo.lookup_backend("aot_eager")

    def backend(graph: torch.fx.GraphModule, example_inputs: list) -> Callable:
        graphs.append(graph)
        return aot_eager(graph, example_inputs)

    def compile_static(fn: Callable, mode: str | None = None) -> Callable:
        compiled = torch.compile(fn, backend=backend, dynamic=False)

        def call(*args):
            with torch._dynamo.config.patch(recompile_limit=GRAPHS_PER_FUNCTION):  # no silent eager fallback
                return compiled(*args)

        return call

    return compile_static


@pytest.mark.parametrize("name,weight_decay", [("adam", 0.0), ("adam", 0.1), ("adamw", 0.05)])
def test_the_traced_optimizer_step_is_torchs_step_and_keeps_its_state(name, weight_decay):
    eager_module, traced_module = _module(), _module()
    config = OptimizerConfig(name=name, lr=1e-2, weight_decay=weight_decay)
    eager = NetworkOptimizer.build(eager_module, config, COSINE, total_updates=6)
    traced = NetworkOptimizer.build(traced_module, config, COSINE, total_updates=6)
    graphs: list[torch.fx.GraphModule] = []
    apply = _aot_eager(graphs)(traced.apply)
    for seed in range(5):  # the rate changes every step (warm-up, then cosine): no new graph for it
        grads = [torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + i)) for i, p in enumerate(eager.params)]
        grads[0][0] = 0.0  # entries whose moments stay 0 while the warm-up's rate is 0: no 0/0
        eager.apply(grads)
        apply(grads)
        eager.step_schedule()
        traced.step_schedule()
    assert len(graphs) == 1
    for a, b in zip(eager_module.parameters(), traced_module.parameters()):
        assert _close(a, b)
    assert traced.learning_rate == eager.learning_rate
    eager_state, traced_state = eager.state_dict(), traced.state_dict()
    assert eager_state["schedule"] == traced_state["schedule"]
    for a, b in zip(eager_state["optimizer"]["state"].values(), traced_state["optimizer"]["state"].values()):
        assert a.keys() == b.keys() and a["step"].dtype == b["step"].dtype == torch.float32
        assert a["step"].item() == b["step"].item() == 5 and _close(a["exp_avg"], b["exp_avg"]) and _close(a["exp_avg_sq"], b["exp_avg_sq"])
    # and an eager step continues from the state the traced steps left (a run may change paths on resume)
    traced.apply([torch.zeros_like(p) for p in traced.params])
    assert traced.state_dict()["optimizer"]["state"][0]["step"].item() == 6


def test_lion_is_not_compilable_but_steps_eagerly():
    module = _module()
    optimizer = NetworkOptimizer.build(module, OptimizerConfig(name="lion", lr=1e-4))
    assert not optimizer.compilable
    before = [p.detach().clone() for p in module.parameters()]
    optimizer.apply([torch.ones_like(p) for p in optimizer.params])
    assert all(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def _paco(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return make_network(IN, (8,), OUT, T, True, EncoderConfig(name="paco", num_parameter_sets=2))


def _balanced_step(name: str, module: Callable[[], torch.nn.Module] = _module) -> BalancedStep:
    optimizer = OptimizerConfig(lr=1e-2, max_grad_norm=0.05)  # small enough to clip
    return BalancedStep.build(name, module(), make_balancer(name, T, seed=3, compile_solver=False), optimizer, COSINE, total_updates=4)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, module", [*((name, _module) for name in sorted(BUILTIN_BALANCERS)), ("cagrad", _paco)], ids=[*sorted(BUILTIN_BALANCERS), "cagrad-paco"]
)
def test_a_compiled_balanced_step_agrees_with_the_eager_step(name, module):
    """Every balancer on the MLP; PaCo (factored per-task gradients of its parameter sets) with CAGrad."""
    eager, traced = _balanced_step(name, module), _balanced_step(name, module)
    graphs: list[torch.fx.GraphModule] = []
    step = _aot_eager(graphs)(lambda inputs: traced.step(_loss, inputs, has_aux=True))
    for seed in range(3):
        expected = eager.step(_loss, _inputs(seed), has_aux=True)
        result = step(_inputs(seed))
        eager.optimizer.step_schedule()
        traced.optimizer.step_schedule()
        for a, b in zip(expected, result):
            assert _close(a if isinstance(a, torch.Tensor) else a[0], b if isinstance(b, torch.Tensor) else b[0]), (name, seed)
    assert graphs
    for a, b in zip(eager.module.parameters(), traced.module.parameters()):
        assert _close(a, b), name
    for key, value in eager.metrics().items():
        assert _close(traced.metrics()[key], value), key


def _sac(update_graph: str, auto_update_graph: str = "off", **config) -> MultiTaskSAC:
    torch.manual_seed(0)
    sac = SACConfig(hidden_dims=(16,), compile_gradients=False, update_graph=update_graph, schedule=COSINE, **config)
    balancers = {n: make_balancer(BALANCER, T, compile_solver=False) for n in MultiTaskSAC.BALANCED_NETWORKS}
    box = np.ones(2, dtype=np.float32)
    return MultiTaskSAC(5 + T, -box, box, T, sac, balancers, seed=0, total_updates=8, auto_update_graph=auto_update_graph)


def _batch(seed: int) -> TransitionBatch:
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(T, B, *shape, generator=g)  # noqa: E731
    return TransitionBatch(obs=r(5 + T), action=r(2).tanh(), reward=r(), next_obs=r(5 + T), done=(r() > 1).float())


@pytest.mark.slow
@pytest.mark.parametrize("encoder", [EncoderConfig(), EncoderConfig(name="paco", num_parameter_sets=2)], ids=["mlp", "paco"])
def test_the_whole_sac_update_compiled_agrees_with_the_eager_one(encoder):
    # actor and targets every second update: both branches of the compiled update are taken
    # (the rate follows COSINE, so it changes every update: that must not recompile); PaCo's
    # parameter sets take the factored per-task gradients (mtrl.gradients.LinearComposition)
    eager, compiled = (_sac(mode, actor_update_frequency=2, target_update_frequency=2, encoder=encoder) for mode in ("off", "compiled"))
    assert compiled.update_graph == "compiled"
    graphs = []
    for seed in range(4):
        expected, metrics = eager.update(_batch(seed)), compiled.update(_batch(seed))
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
        assert metrics.keys() == expected.keys()
        for key, value in expected.items():
            assert _close(metrics[key], value), (seed, key)
    assert graphs[3] == graphs[1]  # both branches compiled by the second update, then reused
    for (key, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        assert _close(a, b), key
    assert compiled.generator.get_state().equal(eager.generator.get_state())  # the same noise was drawn
    for name, part in eager.optimizers().items():
        assert part.state_dict().keys() == compiled.optimizers()[name].state_dict().keys()
    assert compiled.actor_step.optimizer.learning_rate == eager.actor_step.optimizer.learning_rate


def test_auto_is_chosen_for_the_run_and_each_balancer_says_whether_it_compiles_well():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    # compiled for long SAC runs on the CPU (the compile pays), off for short ones, on CUDA (until
    # the GPU path is measured), for PPO, and with a balancer that does not compile well
    long_run = AUTO_COMPILED_MIN_UPDATES
    pair = [make_balancer("cagrad", T), make_balancer("pcgrad", T)]
    assert auto_update_graph("sac", cpu, long_run, pair) == "compiled"
    assert auto_update_graph("sac", cpu, long_run - 1, pair) == "off"
    assert auto_update_graph("sac", cuda, 10 * long_run, pair) == "off"
    assert auto_update_graph("ppo", cpu, 10 * long_run, pair) == "off"
    assert not make_balancer("famo", T).compiles_well
    assert auto_update_graph("sac", cpu, long_run, [pair[0], make_balancer("famo", T)]) == "off"
    assert not make_balancer("mean", T, statistics=False).compiles_well  # the loss-weighted path: one ordinary backward
    assert make_balancer("mean", T, statistics=True).compiles_well
    assert {name for name in BUILTIN_BALANCERS if make_balancer(name, T).compiles_well} == set(BUILTIN_BALANCERS) - {"famo", "uw", "dwa", "rlw"}


def test_update_graph_is_resolved_per_device_and_refused_where_it_cannot_run():
    cpu = torch.device("cpu")
    assert resolve_update_graph("sac.update_graph", "auto", cpu, [], auto="compiled") == "compiled"
    assert resolve_update_graph("sac.update_graph", "auto", cpu, ["actor"], auto="compiled") == "off"
    assert resolve_update_graph("sac.update_graph", "auto", cpu, []) == "off"
    assert _sac("auto").update_graph == "off"  # an agent built on its own: auto is off
    assert _sac("auto", auto_update_graph="compiled").update_graph == "compiled"
    assert _sac("auto", auto_update_graph="compiled", actor_optimizer=OptimizerConfig(name="lion", lr=1e-4)).update_graph == "off"
    assert resolve_update_graph("sac.update_graph", "compiled", cpu, []) == "compiled"
    with pytest.raises(ValueError, match="sac.update_graph cuda-graph needs a CUDA device"):
        resolve_update_graph("sac.update_graph", "cuda-graph", cpu, [])
    with pytest.raises(ValueError, match="sac.update_graph compiled needs Adam or AdamW optimizers; the actor optimizer is not"):
        _sac("compiled", actor_optimizer=OptimizerConfig(name="lion", lr=1e-4))
    with pytest.raises(ValueError, match="sac.update_graph must be one of"):
        SACConfig(update_graph="fast")
    assert dataclasses.replace(SACConfig(), update_graph="off").update_graph == "off"


@pytest.mark.slow
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


# ------------------------------------------------------------------------------------- PPO
OBS, ACT, M, S, E = 5, 2, 6, 3, 2
BOX = np.ones(ACT, dtype=np.float32)


def _ppo(update_graph: str, balancer: str = BALANCER, **config) -> MultiTaskPPO:
    # PPO's annealing: the rate changes every minibatch, which must not recompile the compiled function
    torch.manual_seed(0)
    ppo = PPOConfig(
        hidden_dims=(16,), rollout_steps=S, epochs=1, minibatches=2, compile_gradients=False, update_graph=update_graph,
        schedule=ScheduleConfig(name="linear"), **config,
    )
    balancers = {n: make_balancer(balancer, T, seed=3, compile_solver=False) for n in MultiTaskPPO.BALANCED_NETWORKS}
    return MultiTaskPPO(OBS, -BOX, BOX, T, ppo, balancers, seed=0, total_updates=8)


def _minibatch(seed: int) -> dict[str, torch.Tensor]:
    """A ``[T, M, ...]`` minibatch whose old log-probabilities are near the initial policy's (ratios near 1, some clipped)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(T, M, *shape, generator=g)  # noqa: E731
    action = r(ACT)  # [T, M, A]
    log_prob = gaussian_log_prob(action, torch.zeros_like(action), torch.zeros_like(action)) + 0.3 * r()  # [T, M]
    return {"obs": r(OBS), "action": action, "log_prob": log_prob, "advantages": r(), "returns": r()}


def _assert_same_ppo(eager: MultiTaskPPO, compiled: MultiTaskPPO, expected: dict, metrics: dict, tag: object) -> None:
    assert metrics.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(metrics[key], value, rtol=1e-5, atol=1e-5, msg=f"{tag} {key}")
    for (key, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=f"{tag} {key}")
    for network, step in eager.balanced_steps.items():
        eager_state, compiled_state = step.state_dict(), compiled.balanced_steps[network].state_dict()
        assert eager_state["schedule"] == compiled_state["schedule"]  # stepped once per minibatch on the host
        for a, b in zip(eager_state["optimizer"]["state"].values(), compiled_state["optimizer"]["state"].values()):
            assert a.keys() == b.keys() and a["step"].item() == b["step"].item()
            torch.testing.assert_close(b["exp_avg"], a["exp_avg"], rtol=1e-5, atol=1e-5, msg=f"{tag} {network}")
            torch.testing.assert_close(b["exp_avg_sq"], a["exp_avg_sq"], rtol=1e-5, atol=1e-8, msg=f"{tag} {network}")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BUILTIN_BALANCERS))
def test_a_compiled_ppo_minibatch_update_agrees_with_the_eager_one(name, monkeypatch):
    """The agent's own compiled minibatch function, traced by dynamo but run by aot_eager (as the balanced step above)."""
    graphs: list[torch.fx.GraphModule] = []
    monkeypatch.setattr("agents.base.compile_static", _aot_eager(graphs))
    eager, compiled = _ppo("off", name), _ppo("compiled", name)
    assert compiled.update_graph == "compiled"
    graphs_per_call = []
    for seed in range(3):
        expected, metrics = eager._update_minibatch(_minibatch(seed)), compiled._update_minibatch(_minibatch(seed))
        _assert_same_ppo(eager, compiled, expected, metrics, (name, seed))
        graphs_per_call.append(len(graphs))
    assert graphs_per_call[0] > 0 and graphs_per_call == graphs_per_call[:1] * 3  # compiled at the first call, then reused


def _rollout(agent: MultiTaskPPO, seed: int) -> Rollout:
    """A rollout of random observations and rewards collected by the agent's collector, episodes truncated at step 1."""
    g = torch.Generator().manual_seed(seed)
    collector = agent.collector(E)
    zeros = torch.zeros(T, E)
    for step in range(agent.config.rollout_steps):
        collector.act(torch.randn(T, E, OBS, generator=g))
        truncated = torch.full((T, E), float(step == 1))
        collector.record(reward=torch.randn(T, E, generator=g), terminated=zeros, truncated=truncated, final_obs=torch.randn(T, E, OBS, generator=g))
    return collector.finish(torch.randn(T, E, OBS, generator=g))


@pytest.mark.slow
def test_the_compiled_ppo_update_agrees_with_the_eager_one_through_inductor():
    # two minibatches of 3 samples per update; each agent collects its own rollouts, so the actions,
    # the permutations and the observation statistics must agree too
    eager, compiled = _ppo("off", "mean"), _ppo("compiled", "mean")
    for seed in range(2):
        expected, metrics = eager.update(_rollout(eager, seed)), compiled.update(_rollout(compiled, seed))
        _assert_same_ppo(eager, compiled, expected, metrics, seed)
    assert compiled.generator.get_state().equal(eager.generator.get_state())


def test_ppo_update_graph_is_refused_in_one_line_where_it_cannot_run():
    with pytest.raises(ValueError, match="ppo.update_graph cuda-graph needs a CUDA device") as error:
        _ppo("cuda-graph")
    assert len(str(error.value).splitlines()) == 1
    with pytest.raises(ValueError, match="ppo.update_graph compiled needs Adam or AdamW optimizers; the critic optimizer is not") as error:
        _ppo("compiled", critic_optimizer=OptimizerConfig(name="lion", lr=1e-4))
    assert len(str(error.value).splitlines()) == 1
    with pytest.raises(ValueError, match="ppo.update_graph must be one of"):
        PPOConfig(update_graph="fast")
    auto = _ppo("auto")
    assert auto.update_graph == "off"  # an agent built on its own: auto is off
    assert _ppo("off", actor_optimizer=OptimizerConfig(name="lion", lr=1e-4)).update_graph == "off"  # eager steps any optimizer


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_cuda_graph_ppo_update_agrees_with_the_eager_one_and_never_synchronises():
    agents = {}
    for mode in ("off", "cuda-graph"):
        torch.manual_seed(0)
        ppo = PPOConfig(hidden_dims=(16,), rollout_steps=S, epochs=1, minibatches=2, update_graph=mode)
        balancers = {n: make_balancer("cagrad", T) for n in MultiTaskPPO.BALANCED_NETWORKS}
        agents[mode] = MultiTaskPPO(OBS, -BOX, BOX, T, ppo, balancers, device="cuda", seed=0, total_updates=8)
    minibatches = [{k: v.cuda() for k, v in _minibatch(seed).items()} for seed in range(4)]
    for minibatch in minibatches[:3]:
        expected, metrics = agents["off"]._update_minibatch(minibatch), agents["cuda-graph"]._update_minibatch(minibatch)
        for key, value in expected.items():
            assert _close(metrics[key].cpu(), value.cpu()), key
    torch.cuda.set_sync_debug_mode("error")
    try:
        agents["cuda-graph"]._update_minibatch(minibatches[3])
    finally:
        torch.cuda.set_sync_debug_mode(0)
