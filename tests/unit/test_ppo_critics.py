"""PPO's value network options: the LayerNorm critic and PopArt's per-task value normalisation."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from torch import nn

from agents.ppo import MultiTaskPPO, PPOConfig
from mtrl.balancers import BUILTIN_BALANCERS, Mean, make_balancer
from mtrl.rollout import Rollout

T, E, S, OBS, ACT = 3, 2, 8, 6, 2
LOW, HIGH = -np.ones(ACT, dtype=np.float32), np.ones(ACT, dtype=np.float32)
SMALL = PPOConfig(hidden_dims=(16, 16), rollout_steps=S, epochs=2, minibatches=2, compile_gradients=False)
LAYER_NORM = dataclasses.replace(SMALL, critic_layer_norm=True)


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)  # tests/conftest.py gives the thread count back


def _agent(config: PPOConfig = SMALL, critic=None, actor=None, seed: int = 0) -> MultiTaskPPO:
    torch.manual_seed(seed)
    return MultiTaskPPO(OBS, LOW, HIGH, T, config, {"critic": critic or Mean(T), "actor": actor or Mean(T)}, seed=seed)


def _rollout(agent: MultiTaskPPO, seed: int = 0, reward_scale: torch.Tensor | None = None) -> Rollout:
    """A rollout of random observations and rewards (task ``t``'s times ``reward_scale[t]``), episodes truncated at step 3."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.ones(T) if reward_scale is None else reward_scale  # [T]
    collector = agent.collector(E)
    zeros = torch.zeros(T, E)
    for step in range(agent.config.rollout_steps):
        collector.act(torch.randn(T, E, OBS, generator=g))
        truncated = torch.full((T, E), float(step == 3))
        reward = (torch.randn(T, E, generator=g) + 1.0) * scale[:, None]
        collector.record(reward=reward, terminated=zeros, truncated=truncated, final_obs=torch.randn(T, E, OBS, generator=g))
    return collector.finish(torch.randn(T, E, OBS, generator=g))


def test_the_layer_norm_is_in_the_critic_only_and_absent_by_default():
    agent = _agent(LAYER_NORM)
    assert sum(isinstance(m, nn.LayerNorm) for m in agent.critic.modules()) == 2
    assert not any(isinstance(m, nn.LayerNorm) for m in agent.actor.modules())
    assert not any(isinstance(m, nn.LayerNorm) for m in _agent().modules())
    assert "critic.net.trunk.1.weight" in agent.state_dict() and "critic.net.trunk.1.weight" not in _agent().state_dict()


@pytest.mark.parametrize("name", sorted(BUILTIN_BALANCERS))
def test_every_balancer_trains_the_layer_norm_critic(name):
    kwargs = {"num_sampled": 2} if name == "cagrad_fast" else {}
    agent = _agent(LAYER_NORM, critic=make_balancer(name, T, **kwargs), actor=make_balancer(name, T, **kwargs))
    before = {k: v.clone() for k, v in agent.critic.state_dict().items()}
    metrics = agent.update(_rollout(agent))
    assert all(torch.isfinite(v).all() for v in metrics.values())
    assert all(not torch.equal(before[k], v) for k, v in agent.critic.state_dict().items())


# ------------------------------------------------------------------------------------- PopArt
POPART = dataclasses.replace(SMALL, value_normalization="popart", popart_beta=0.5)


def _randomise_head(critic) -> None:
    with torch.no_grad():
        critic.net.head.weight.add_(0.5 * torch.randn_like(critic.net.head.weight))
        critic.net.head.bias.add_(torch.randn_like(critic.net.head.bias))


def test_the_values_are_unchanged_by_a_statistics_update_and_the_head_then_predicts_normalised_values():
    critic = _agent(POPART).critic
    _randomise_head(critic)
    obs = torch.randn(T, 20, OBS)
    for scale, shift in ((10.0, 100.0), (0.01, -3.0), (1000.0, 5.0)):  # statistics moving far in both directions
        before = critic(obs)  # [T, 20]
        normalized_before = critic(obs, normalized=True)
        targets = torch.randn(T, 50) * scale * torch.tensor([1.0, 3.0, 0.2])[:, None] + shift
        normalized_targets = critic.update_value_statistics(targets)
        torch.testing.assert_close(critic(obs), before, atol=1e-4 * max(1.0, before.abs().max().item()), rtol=1e-5)
        assert not torch.allclose(critic(obs, normalized=True), normalized_before)  # the head did move
        mean, std = critic.popart.statistics()
        torch.testing.assert_close(critic(obs, normalized=True), ((before - mean[:, None]) / std[:, None]).float(), atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(normalized_targets, ((targets - mean[:, None]) / std[:, None]).float())


def test_the_statistics_are_debiased_moving_averages_of_each_tasks_targets_alone():
    popart = _agent(POPART).critic.popart
    mean, std = popart.statistics()
    assert mean.tolist() == [0.0] * T and std.tolist() == [1.0] * T  # the identity before any update
    head = _agent(POPART).critic.net.head
    first = torch.randn(T, 40, dtype=torch.float64) * 4 + 2
    popart.update(first, head)
    mean, std = popart.statistics()
    torch.testing.assert_close(mean, first.mean(1))  # the first update: the targets' own statistics
    torch.testing.assert_close(std, first.std(1, correction=0))
    second = torch.randn(T, 40, dtype=torch.float64) - 7
    popart.update(second, head)
    beta, weight = 0.5, 0.5 + 0.5 * 0.5
    m = (beta * (1 - beta) * first.mean(1) + beta * second.mean(1)) / weight
    q = (beta * (1 - beta) * first.square().mean(1) + beta * second.square().mean(1)) / weight
    mean, std = popart.statistics()
    torch.testing.assert_close(mean, m)
    torch.testing.assert_close(std, (q - m.square()).sqrt())
    # task 0's statistics do not depend on the other tasks' targets
    other = _agent(POPART).critic.popart
    changed_first, changed_second = first.clone(), second.clone()
    changed_first[1:] *= 50.0
    changed_second[1:] += 1e3
    other.update(changed_first, _agent(POPART).critic.net.head)
    other.update(changed_second, _agent(POPART).critic.net.head)
    assert other.statistics()[0][0] == mean[0] and other.statistics()[1][0] == std[0]
    assert other.statistics()[0][1] != mean[1]


def test_the_critic_learns_the_normalised_targets_and_the_rollout_values_stay_unnormalised():
    agent = _agent(POPART)
    scales = torch.tensor([1.0, 30.0, 0.05])
    rollout = _rollout(agent, reward_scale=scales)
    metrics = agent.update(rollout)
    assert all(torch.isfinite(v).all() for v in metrics.values())
    mean, std = agent.critic.popart.statistics()
    assert (std[1] > 10 * std[0]) and (std[0] > 10 * std[2])  # each task's own scale
    obs = agent.normalize(rollout.obs[0])
    torch.testing.assert_close(agent.value(rollout.obs[0]), agent.critic(obs, normalized=True) * std[:, None].float() + mean[:, None].float())
    assert metrics["losses/value_loss"].shape == (T,)


@pytest.mark.parametrize("name", sorted(BUILTIN_BALANCERS))
def test_every_balancer_trains_with_popart_and_a_layer_norm_critic(name):
    kwargs = {"num_sampled": 2} if name == "cagrad_fast" else {}
    config = dataclasses.replace(POPART, critic_layer_norm=True)
    agent = _agent(config, critic=make_balancer(name, T, **kwargs), actor=make_balancer(name, T, **kwargs))
    for seed in range(2):
        metrics = agent.update(_rollout(agent, seed, reward_scale=torch.tensor([1.0, 10.0, 100.0])))
    assert all(torch.isfinite(v).all() for v in metrics.values())


def test_the_statistics_are_in_the_training_state_and_a_round_trip_continues_identically():
    a = _agent(POPART, seed=1)
    a.update(_rollout(a, 0, reward_scale=torch.tensor([1.0, 5.0, 20.0])))
    state = a.training_state()
    assert {"critic.popart.first_moment", "critic.popart.second_moment", "critic.popart.weight"} <= state["modules"].keys()
    assert state["modules"]["critic.popart.weight"].item() == 0.5
    saved = io.BytesIO()
    torch.save(state, saved)
    saved.seek(0)
    b = _agent(POPART, seed=2)
    b.load_training_state(torch.load(saved, weights_only=True))
    ra, rb = _rollout(a, 1), _rollout(b, 1)  # the restored values (PopArt's unnormalised outputs) collect the same rollout
    assert all(torch.equal(x, y) for x, y in zip(ra.__dict__.values(), rb.__dict__.values()))
    ma, mb = a.update(ra), b.update(rb)
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert "critic.popart.weight" not in _agent().state_dict()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"value_normalization": "z-score"}, r"^ppo\.value_normalization must be one of 'none', 'popart', got 'z-score'$"),
        ({"value_normalization": "popart", "per_task_heads": False}, r"^ppo\.value_normalization popart needs ppo\.per_task_heads"),
        ({"value_normalization": "popart", "popart_beta": 0.0}, r"^ppo\.popart_beta must be in \(0, 1\], got 0\.0$"),
        ({"popart_beta": 0.3}, r"^ppo\.popart_beta is an option of ppo\.value_normalization popart, not of 'none'$"),
    ],
)
def test_bad_value_normalisation_settings_are_refused_naming_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        PPOConfig(**fields)


@pytest.mark.slow
def test_the_compiled_minibatch_update_with_popart_and_layer_norm_equals_the_eager_one():
    config = dataclasses.replace(POPART, critic_layer_norm=True)
    eager, compiled = (_agent(dataclasses.replace(config, update_graph=graph), seed=1) for graph in ("off", "compiled"))
    rollout = _rollout(_agent(config, seed=1), seed=1)  # both keep equal generators (equal minibatches)
    eager_metrics, compiled_metrics = eager.update(rollout), compiled.update(rollout)
    for key, value in eager_metrics.items():
        torch.testing.assert_close(compiled_metrics[key], value, rtol=1e-4, atol=1e-5, msg=key)
    for (name, value), compiled_value in zip(eager.state_dict().items(), compiled.state_dict().values()):
        torch.testing.assert_close(compiled_value, value, rtol=1e-4, atol=1e-6, msg=name)


def test_a_ppo_run_with_popart_and_a_layer_norm_critic_resumes_exactly(tmp_path):
    from envs import EnvConfig
    from envs.testing import make_scripted_envs
    from launch.config import BalancerConfig, PPOTrainConfig
    from launch.factory import make_trainer
    from mtrl.checkpoint import load_latest

    episode = 5
    run = PPOTrainConfig(
        env=EnvConfig(benchmark="reach-v3,drawer-close-v3", max_episode_steps=episode),
        ppo=dataclasses.replace(POPART, rollout_steps=episode, minibatches=1, critic_layer_norm=True),
        balancer=BalancerConfig(name="mean", statistics=True),
        total_steps=100, eval_every=0, final_eval_episodes=1, checkpoint_every=30, keep_checkpoints=10, log_every=20,
        device="cpu", progress=False, tensorboard=False,
    )

    def trainer(config, name, **kwargs):
        (tmp_path / name).mkdir(exist_ok=True)
        return make_trainer(config, tmp_path / name, build_envs=make_scripted_envs, **kwargs)

    straight = trainer(run, "straight")
    straight.run()
    trainer(dataclasses.replace(run, total_steps=50), "resumed").run()
    _, payload = load_latest(tmp_path / "resumed" / "checkpoints")
    assert payload["agent"]["modules"]["critic.popart.weight"].item() > 0
    resumed = trainer(run, "resumed", resume=payload)
    resumed.run()
    for name, value in straight.agent.state_dict().items():
        assert torch.equal(value, resumed.agent.state_dict()[name]), name
