"""PPO's value network options: the LayerNorm critic and PopArt's per-task value normalisation."""

from __future__ import annotations

import dataclasses

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
