import dataclasses
import io

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from agents.ppo import MultiTaskPPO, PPOConfig
from mtrl.balancers import BUILTIN_BALANCERS, Mean, make_balancer
from mtrl.optim import OptimizerConfig
from mtrl.rollout import Rollout
from mtrl.schedules import ScheduleConfig

T, E, S, OBS, ACT = 3, 2, 8, 5, 2
LOW, HIGH = -np.ones(ACT, dtype=np.float32), np.ones(ACT, dtype=np.float32)
SMALL = PPOConfig(compile_gradients=False, hidden_dims=(16, 16), rollout_steps=S, epochs=2, minibatches=4)


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)  # tests/conftest.py gives the thread count back


def _agent(config: PPOConfig = SMALL, critic=None, actor=None, seed: int = 0, device: str = "cpu") -> MultiTaskPPO:
    torch.manual_seed(seed)
    balancers = {"critic": critic or Mean(T), "actor": actor or Mean(T)}
    return MultiTaskPPO(OBS, LOW, HIGH, T, config, balancers, device=device, seed=seed)


def _rollout(agent: MultiTaskPPO, seed: int = 0) -> Rollout:
    """A rollout of random observations and rewards collected by the agent's collector, episodes truncated at step 3."""
    g = torch.Generator().manual_seed(seed)
    device = agent.device

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device)

    collector = agent.collector(E)
    zeros = torch.zeros(T, E, device=device)
    for step in range(agent.config.rollout_steps):
        collector.act(randn(T, E, OBS))
        truncated = torch.full((T, E), float(step == 3), device=device)
        collector.record(reward=randn(T, E), terminated=zeros, truncated=truncated, final_obs=randn(T, E, OBS))
    return collector.finish(randn(T, E, OBS))


# ------------------------------------------------------------------------------------- the policy
def test_explore_log_prob_matches_torch_distributions_and_act_is_clipped():
    agent = _agent()
    obs = torch.randn(T, E, OBS)
    env_action, action, log_prob, value = agent.explore(obs)
    mean, log_std = agent.actor(agent.normalize(obs))
    assert torch.allclose(log_prob, Normal(mean, log_std.exp()).log_prob(action).sum(-1), atol=1e-5)
    assert action.shape == (T, E, ACT) and value.shape == (T, E)
    assert torch.equal(env_action, action.clamp(-1, 1))
    assert torch.equal(agent.act(obs, deterministic=True), mean.clamp(-1, 1))
    assert agent.act(obs * 100).abs().max() <= 1


def test_actions_are_clipped_to_a_non_symmetric_box():
    low, high = np.array([-0.5, 0.0], dtype=np.float32), np.array([0.25, 2.0], dtype=np.float32)
    config = dataclasses.replace(SMALL, init_log_std=3.0)  # wide samples: most fall outside the box
    agent = MultiTaskPPO(OBS, low, high, T, config, {"critic": Mean(T), "actor": Mean(T)})
    low_t, high_t = torch.as_tensor(low), torch.as_tensor(high)
    obs = torch.randn(T, 64, OBS)
    env_action, action, _, _ = agent.explore(obs)
    assert torch.equal(env_action, torch.minimum(torch.maximum(action, low_t), high_t))
    assert (action < low_t).any() and (action > high_t).any()  # the stored sample itself is not clipped
    for actions in (agent.act(obs), agent.act(obs, deterministic=True), agent.collector(64).act(obs)):
        assert ((actions >= low_t) & (actions <= high_t)).all()
    assert agent.act(obs).eq(low_t).any() and agent.act(obs).eq(high_t).any()


def test_update_shapes_and_finite_metrics():
    agent = _agent()
    metrics = agent.update(_rollout(agent))
    for tag in ("losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/approx_kl", "balancer/actor/weights"):
        assert metrics[tag].shape == (T,), tag
    assert metrics["losses/epochs"].item() == SMALL.epochs
    assert all(torch.isfinite(v).all() for v in metrics.values())


def test_a_head_only_changes_from_its_own_task_loss():
    unclipped = OptimizerConfig(max_grad_norm=0.0)  # clipping would scale every head by the shared norm
    config = PPOConfig(
        compile_gradients=False,
        hidden_dims=(16, 16),
        rollout_steps=S,
        epochs=1,
        minibatches=1,
        actor_optimizer=unclipped,
        critic_optimizer=unclipped,
    )
    a, b = _agent(config, seed=3), _agent(config, seed=3)
    rollout = _rollout(_agent(config, seed=3))  # a and b keep equal generators (equal permutations)
    reward = rollout.reward.clone()
    reward[:, 1] += 5.0  # only task 1's data differs
    other = Rollout(**{**rollout.__dict__, "reward": reward})
    a.update(rollout)
    b.update(other)
    # gradients, not parameters: Adam's first step is lr * sign(grad) and can hide a difference
    for module, name in ((a.actor, "net.head.weight"), (a.actor, "log_std"), (a.critic, "net.head.bias")):
        ga, gb = module.get_parameter(name).grad, (b.actor if module is a.actor else b.critic).get_parameter(name).grad
        assert torch.equal(ga[0], gb[0]) and torch.equal(ga[2], gb[2]), name  # tasks 0 and 2 untouched
        assert not torch.equal(ga[1], gb[1]), name
    assert not torch.equal(a.critic.net.trunk[0].weight.grad, b.critic.net.trunk[0].weight.grad)  # the trunk is shared


def test_minibatches_are_task_grouped_and_cover_each_task_once_per_epoch(monkeypatch):
    config = PPOConfig(compile_gradients=False, hidden_dims=(8,), rollout_steps=S, epochs=2, minibatches=3, normalize_obs=False)
    agent = _agent(config)
    rollout = _rollout(agent)
    sample_id = torch.arange(S * T * E, dtype=torch.float32).reshape(S, T, E)
    task_id = torch.arange(T, dtype=torch.float32)[None, :, None].expand(S, T, E)
    obs, action = rollout.obs.clone(), rollout.action.clone()
    obs[..., 0], obs[..., 1], action[..., 0] = task_id, sample_id, sample_id
    seen: list[dict[str, torch.Tensor]] = []
    original = agent._update_minibatch
    monkeypatch.setattr(agent, "_update_minibatch", lambda minibatch: seen.append(minibatch) or original(minibatch))
    agent.update(Rollout(**{**rollout.__dict__, "obs": obs, "action": action}))

    assert len(seen) == config.epochs * config.minibatches
    samples = S * E
    for epoch in range(config.epochs):
        minibatches = seen[epoch * config.minibatches : (epoch + 1) * config.minibatches]
        assert sum(mb["obs"].shape[1] for mb in minibatches) == samples
        ids = torch.cat([mb["obs"][..., 1] for mb in minibatches], dim=1)  # [T, N]
        for task in range(T):
            assert torch.equal(ids[task].sort().values, sample_id[:, task].flatten().sort().values)
    for minibatch in seen:
        assert minibatch["obs"].shape[0] == T  # [T, M, ...]: the same M samples for every task
        task_of_row = minibatch["obs"][..., 0]  # [T, M]
        assert torch.equal(task_of_row, torch.arange(T, dtype=torch.float32)[:, None].expand_as(task_of_row))
        assert torch.equal(minibatch["action"][..., 0], minibatch["obs"][..., 1])  # fields stay aligned
    first = seen[0]["obs"][..., 1] - torch.arange(T)[:, None] * E  # sample ids relative to each task
    assert not all(torch.equal(first[0], first[t]) for t in range(1, T))  # tasks draw their own permutations


class Recording(Mean):
    """Mean that records the shape of every per-task gradient matrix it combines."""

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks)
        self.seen: list[tuple[int, int]] = []

    def combine(self, grads, losses=None):
        self.seen.append(tuple(grads.shape))
        return super().combine(grads, losses)


@pytest.mark.parametrize("per_task_heads,log_std", [(True, "per_task"), (True, "shared"), (False, "shared")])
def test_balancers_receive_the_shared_parameters_of_each_minibatch(per_task_heads, log_std):
    critic, actor = Recording(T), Recording(T)
    config = PPOConfig(compile_gradients=False, hidden_dims=(8,), rollout_steps=S, epochs=2, minibatches=2, per_task_heads=per_task_heads, log_std=log_std)
    agent = _agent(config, critic=critic, actor=actor)
    agent.update(_rollout(agent))
    actor_shared = sum(p.numel() for p in agent.actor.shared_parameters().values())
    critic_shared = sum(p.numel() for p in agent.critic.shared_parameters().values())
    assert actor.seen == [(T, actor_shared)] * 4 and critic.seen == [(T, critic_shared)] * 4
    assert ("log_std" in agent.actor.shared_parameters()) == (log_std == "shared")
    if not per_task_heads:
        assert critic_shared == sum(p.numel() for p in agent.critic.parameters())


@pytest.mark.parametrize("name", sorted(BUILTIN_BALANCERS))
def test_every_balancer_plugs_in_unchanged(name):
    kwargs = {"num_sampled": 2} if name == "cagrad_fast" else {}
    agent = _agent(critic=make_balancer(name, T, **kwargs), actor=make_balancer(name, T, **kwargs))
    for seed in range(2):
        metrics = agent.update(_rollout(agent, seed))
    assert all(torch.isfinite(v).all() for v in metrics.values())


def test_approximate_kl_stops_after_the_first_epoch_above_the_target():
    agent = _agent(PPOConfig(compile_gradients=False, hidden_dims=(8,), rollout_steps=S, epochs=5, minibatches=2, target_kl=1e-12))
    assert agent.update(_rollout(agent))["losses/epochs"].item() == 1


def test_linear_schedule_anneals_both_learning_rates_once_per_minibatch():
    config = PPOConfig(compile_gradients=False, hidden_dims=(8,), rollout_steps=S, epochs=2, minibatches=2, schedule=ScheduleConfig(name="linear"))
    torch.manual_seed(0)
    agent = MultiTaskPPO(OBS, LOW, HIGH, T, config, {"critic": Mean(T), "actor": Mean(T)}, total_updates=8)
    actor_optimizer, critic_optimizer = agent.actor_step.optimizer.optimizer, agent.critic_step.optimizer.optimizer
    first = agent.update(_rollout(agent))  # 4 updates: the rate falls from the peak to half of it
    assert first["charts/learning_rate"].item() == pytest.approx(3e-4)
    assert actor_optimizer.param_groups[0]["lr"] == pytest.approx(1.5e-4)
    assert critic_optimizer.param_groups[0]["lr"] == pytest.approx(1.5e-4)
    assert agent.update(_rollout(agent, 1))["charts/learning_rate"].item() == pytest.approx(1.5e-4)
    assert actor_optimizer.param_groups[0]["lr"] == 0.0


# ------------------------------------------------------------------------------------- normaliser
def test_observation_statistics_take_in_the_rollout_after_its_update():
    agent = _agent()
    rollout = _rollout(agent)
    metrics = agent.update(rollout)
    assert agent.obs_normalizer.count.item() == S * T * E
    assert torch.allclose(agent.obs_normalizer.mean, rollout.obs.reshape(-1, OBS).double().mean(0))
    assert metrics["losses/approx_kl"].max() < 0.1  # the update saw the statistics the actions were sampled with
    assert "obs_normalizer.mean" in agent.training_state()["modules"]


# ------------------------------------------------------------------------------------- state and config
def test_training_state_round_trip_continues_identically():
    a = _agent(seed=1)
    a.update(_rollout(a, 0))
    saved = io.BytesIO()
    torch.save(a.training_state(), saved)  # as a checkpoint does: no tensor shared between a and b
    saved.seek(0)
    b = _agent(seed=2)
    b.load_training_state(torch.load(saved, weights_only=False))
    ra, rb = _rollout(a, 1), _rollout(b, 1)
    assert all(torch.equal(x, y) for x, y in zip(ra.__dict__.values(), rb.__dict__.values()))
    ma, mb = a.update(ra), b.update(rb)
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.num_updates == b.num_updates == 2


@pytest.mark.parametrize(
    "field,value",
    [
        ("gamma", 1.5),
        ("gae_lambda", -0.1),
        ("clip_coef", 0.0),
        ("epochs", 0),
        ("minibatches", 0),
        ("hidden_dims", ()),
        ("target_kl", 0.0),
        ("log_std", "state"),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"ppo.{field} must be") as error:
        PPOConfig(**{field: value})
    assert len(str(error.value).splitlines()) == 1


def test_default_optimizers_are_meta_world_plus_adam():
    agent = _agent(PPOConfig(compile_gradients=False, hidden_dims=(8,)))
    for optimizer in (agent.actor_step.optimizer.optimizer, agent.critic_step.optimizer.optimizer):
        assert isinstance(optimizer, torch.optim.Adam)
        assert optimizer.defaults["lr"] == 3e-4 and optimizer.defaults["eps"] == 1e-5
    assert agent.config.actor_optimizer.max_grad_norm == agent.config.critic_optimizer.max_grad_norm == 1.0


def test_shared_balancer_object_is_refused():
    shared = Mean(T)
    with pytest.raises(ValueError, match="separate balancer") as error:
        MultiTaskPPO(OBS, LOW, HIGH, T, SMALL, {"critic": shared, "actor": shared})
    assert len(str(error.value).splitlines()) == 1


@pytest.mark.parametrize("names", [("critic",), ("critic", "actor", "temperature"), ("value", "actor")])
def test_balancers_must_be_keyed_by_the_balanced_networks(names):
    assert MultiTaskPPO.BALANCED_NETWORKS == ("critic", "actor")
    with pytest.raises(ValueError, match="balancers must be keyed by critic, actor") as error:
        MultiTaskPPO(OBS, LOW, HIGH, T, SMALL, {name: Mean(T) for name in names})
    assert len(str(error.value).splitlines()) == 1


def test_a_rollout_too_small_for_the_minibatches_is_refused():
    agent = _agent(PPOConfig(compile_gradients=False, hidden_dims=(8,), rollout_steps=1, minibatches=4))
    with pytest.raises(ValueError, match="cannot fill 4 minibatches"):
        agent.update(_rollout(agent))


@pytest.mark.slow
def test_compiled_update_equals_eager():
    """The default compiled per-task gradients give the eager update (up to float rounding)."""
    agents = [
        _agent(dataclasses.replace(SMALL, compile_gradients=compiled), make_balancer("cagrad", T), make_balancer("cagrad", T), seed=1)
        for compiled in (False, True)
    ]
    rollout = _rollout(_agent(SMALL, seed=1), seed=1)  # the two keep equal generators (equal minibatches)
    eager_metrics, compiled_metrics = (agent.update(rollout) for agent in agents)
    for key, value in eager_metrics.items():
        torch.testing.assert_close(compiled_metrics[key], value, rtol=1e-4, atol=1e-5, msg=key)
    for (name, eager), compiled_param in zip(agents[0].state_dict().items(), agents[1].state_dict().values()):
        torch.testing.assert_close(compiled_param, eager, rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_is_refused_on_the_cpu():
    with pytest.raises(ValueError, match="bf16 autocast needs a CUDA device"):
        _agent(dataclasses.replace(SMALL, bf16=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["mean", "cagrad"])
def test_bf16_training_steps_stay_finite_on_cuda(name):
    config = dataclasses.replace(SMALL, bf16=True)
    agent = _agent(config, make_balancer(name, T), make_balancer(name, T), device="cuda")
    for seed in range(3):
        rollout = _rollout(agent, seed)
        metrics = agent.update(rollout)
    assert all(torch.isfinite(v).all() for v in metrics.values())
