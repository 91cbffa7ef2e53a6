"""Per-task reward normalisation (mtrl.reward_normalization) against BRC's formula, in the SAC update and across a resume."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.sac import MultiTaskSAC, SACConfig
from envs import EnvConfig
from envs.testing import make_scripted_envs
from launch.config import BalancerConfig, SACTrainConfig
from launch.factory import make_trainer
from launch.replay_loop import ReplayLoopConfig
from mtrl.balancers import Mean
from mtrl.checkpoint import load_latest
from mtrl.replay import TransitionBatch
from mtrl.reward_normalization import EpisodeReturns, RewardScale

GAMMA = 0.9
H = 1.0 / (1.0 - GAMMA)


def brute_force_largest_abs_return(rewards: list[float], truncated: bool) -> float:
    """``max_k |G_k|`` with every ``G_k`` summed out: ``sum_j gamma^(j-k) r_j + gamma^(n-k) G_n``."""
    n = len(rewards)
    bootstrap = H * sum(rewards) / n if truncated else 0.0
    returns = [sum(GAMMA ** (j - k) * rewards[j] for j in range(k, n)) + GAMMA ** (n - k) * bootstrap for k in range(n)]
    return max(abs(g) for g in returns)


def _play(tracker: EpisodeReturns, episodes: np.ndarray, ends: np.ndarray, terminated: np.ndarray) -> list:
    """Feed ``episodes [N, L]`` step by step; ``ends[i]``: the step (exclusive) at which environment ``i``'s episode ends."""
    results = []
    for k in range(episodes.shape[1]):
        done = k + 1 == ends
        results.append(tracker.step(episodes[:, k], done & terminated, done & ~terminated))
    return results


def test_each_tasks_scale_is_the_largest_absolute_discounted_return_of_its_finished_episodes():
    rng = np.random.default_rng(0)
    task_of_env = np.array([0, 0, 1, 1])  # two environments per task
    tracker = EpisodeReturns(task_of_env, GAMMA, capacity=3)  # episodes longer than the capacity: it grows
    rewards = rng.normal(size=(4, 7)) + np.array([[1.0], [-2.0], [0.5], [3.0]])
    ends = np.array([7, 5, 6, 7])
    terminated = np.array([False, True, False, True])
    results = _play(tracker, rewards, ends, terminated)
    finished = [r for r in results if r is not None]
    assert len(finished) == 3  # at steps 5, 6 and 7
    largest = [brute_force_largest_abs_return(list(rewards[i, : ends[i]]), truncated=not terminated[i]) for i in range(4)]
    merged_task0 = max(finished[0][0][0], finished[2][0][0])  # env 1 ended at 5, env 0 at 7
    assert merged_task0 == pytest.approx(max(largest[0], largest[1]), rel=1e-12)
    assert finished[1][0][1] == pytest.approx(largest[2], rel=1e-12) and finished[2][0][1] == pytest.approx(largest[3], rel=1e-12)
    assert [list(f[1]) for f in finished] == [[1, 0], [0, 1], [1, 1]]
    assert tracker.lengths.tolist() == [0, 2, 1, 0]  # the next episodes of environments 1 and 2 have begun


def test_rewards_are_divided_by_the_return_scale_plus_the_entropy_term_over_v_max():
    scale = RewardScale(num_tasks=3, gamma=GAMMA, target_entropy=-4.0, v_max=10.0)
    scale.update(torch.tensor([50.0, 0.0, 7.0]), torch.tensor([1.0, 1.0, 0.0]))  # task 2: no finished episode
    scale.update(torch.tensor([20.0, 0.0, 0.0]), torch.tensor([2.0, 0.0, 0.0]))  # a smaller return keeps the maximum
    alpha = torch.tensor([0.5, 0.2, 0.3])
    reward = torch.randn(3, 5)
    expected_scale = torch.tensor([(50.0 - 0.5 * H * -4.0 / 2) / 10.0, (0.0 - 0.2 * H * -4.0 / 2) / 10.0, 1.0])
    torch.testing.assert_close(scale.scale(alpha), expected_scale)
    torch.testing.assert_close(scale(reward, alpha), reward / expected_scale[:, None])
    assert scale.episodes.tolist() == [3.0, 1.0, 0.0] and scale.max_abs_return.tolist() == [50.0, 0.0, 0.0]


def test_one_tasks_normalisation_is_independent_of_the_other_tasks_rewards():
    rng = np.random.default_rng(1)
    task_of_env = np.array([0, 1, 2])
    rewards = rng.normal(size=(3, 6))
    other = rewards.copy()
    other[1] *= 100.0  # task 1's rewards only
    other[2] = -other[2] + 5.0  # and task 2's
    normalised = []
    for episode in (rewards, other):
        tracker, scale = EpisodeReturns(task_of_env, GAMMA), RewardScale(3, GAMMA, -2.0, 10.0)
        for result in _play(tracker, episode, np.full(3, 6), np.zeros(3, dtype=bool)):
            if result is not None:
                scale.update(*map(torch.as_tensor, result))
        normalised.append(scale(torch.ones(3, 4), torch.full((3,), 0.1)))
    assert torch.equal(normalised[0][0], normalised[1][0])
    assert not torch.equal(normalised[0][1], normalised[1][1]) and not torch.equal(normalised[0][2], normalised[1][2])


def test_the_running_episodes_round_trip_mid_episode():
    rng = np.random.default_rng(2)
    rewards = rng.normal(size=(2, 9))
    ends, terminated = np.array([9, 9]), np.zeros(2, dtype=bool)
    straight = EpisodeReturns(np.array([0, 1]), GAMMA, capacity=4)
    expected = _play(straight, rewards, ends, terminated)[-1]
    first = EpisodeReturns(np.array([0, 1]), GAMMA, capacity=4)
    _play(first, rewards[:, :6], ends, terminated)
    state = copy.deepcopy(first.state_dict())
    resumed = EpisodeReturns(np.array([0, 1]), GAMMA, capacity=4)
    resumed.load_state_dict(state)
    result = _play(resumed, rewards[:, 6:], ends - 6, terminated)[-1]
    np.testing.assert_array_equal(result[0], expected[0])
    np.testing.assert_array_equal(result[1], expected[1])


T, OBS, ACT, B = 2, 5, 2, 8
NORMALISED = SACConfig(hidden_dims=(16,), compile_gradients=False, reward_normalization="per-task", v_max=5.0)


def test_the_sac_update_trains_on_the_normalised_rewards():
    torch.manual_seed(0)
    agent = MultiTaskSAC(OBS, -np.ones(ACT), np.ones(ACT), T, NORMALISED, {"critic": Mean(T), "actor": Mean(T)})
    torch.manual_seed(0)
    plain = MultiTaskSAC(OBS, -np.ones(ACT), np.ones(ACT), T, dataclasses.replace(NORMALISED, reward_normalization="none", v_max=10.0),
                         {"critic": Mean(T), "actor": Mean(T)})
    agent.take_in_episode_returns(np.array([30.0, 2.0]), np.array([1.0, 3.0]))
    g = torch.Generator().manual_seed(0)
    batch = TransitionBatch(
        obs=torch.randn(T, B, OBS, generator=g), action=torch.rand(T, B, ACT, generator=g) * 2 - 1,
        reward=torch.rand(T, B, generator=g) * 10, next_obs=torch.randn(T, B, OBS, generator=g), done=torch.zeros(T, B),
    )
    scale = (torch.tensor([30.0, 2.0]) - agent.alpha().detach() * 100.0 * agent.target_entropy / 2) / 5.0  # gamma 0.99
    scaled = TransitionBatch(**{**batch.__dict__, "reward": batch.reward / scale[:, None]})
    ma, mb = agent.update(batch), plain.update(scaled)
    for key in ma:
        torch.testing.assert_close(ma[key], mb[key], atol=1e-6, rtol=1e-5)
    assert "reward_scale.max_abs_return" in agent.state_dict() and "reward_scale.max_abs_return" not in plain.state_dict()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"reward_normalization": "batch"}, r"^sac\.reward_normalization must be one of 'none', 'per-task', got 'batch'$"),
        ({"reward_normalization": "per-task", "gamma": 1.0}, r"^sac\.reward_normalization per-task needs sac\.gamma < 1"),
        ({"v_max": 20.0}, r"^sac\.v_max is an option of the brc critic, not of sac\.critic 'mlp'"),
    ],
)
def test_bad_normalisation_settings_are_refused_naming_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        SACConfig(**fields)
    SACConfig(reward_normalization="per-task", v_max=20.0)  # the bound the returns are scaled to


EPISODE = 5
RUN = SACTrainConfig(
    env=EnvConfig(benchmark="reach-v3,drawer-close-v3", max_episode_steps=EPISODE),
    sac=SACConfig(
        hidden_dims=(16,), compile_gradients=False, critic="brc", critic_width=16, num_bins=11, reward_normalization="per-task"
    ),
    replay=ReplayLoopConfig(warmup_steps=20, updates_per_step=0.5, batch_size_per_task=8, buffer_capacity_per_task=200),
    balancer=BalancerConfig(name="mean", statistics=True),
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


def _trainer(config: SACTrainConfig, run_dir: Path, **kwargs):
    run_dir.mkdir(exist_ok=True)
    return make_trainer(config, run_dir, build_envs=make_scripted_envs, **kwargs)


def test_a_run_with_the_brc_critic_and_normalised_rewards_resumes_exactly(tmp_path):
    straight = _trainer(RUN, tmp_path / "straight")
    straight.run()
    first = _trainer(dataclasses.replace(RUN, total_steps=50), tmp_path / "resumed")
    first.run()
    _, payload = load_latest(tmp_path / "resumed" / "checkpoints")
    assert payload["global_step"] == 50 and "episode_returns" in payload
    scale = payload["agent"]["modules"]["reward_scale.episodes"]
    assert scale.tolist() == [5.0, 5.0]  # 50 steps of two environments: five 5-step episodes per task
    resumed = _trainer(RUN, tmp_path / "resumed", resume=payload)
    resumed.run()
    for name, value in straight.agent.state_dict().items():
        assert torch.equal(value, resumed.agent.state_dict()[name]), name
    assert straight.agent.reward_scale.max_abs_return.gt(0).all()
    assert resumed.agent.num_updates == straight.agent.num_updates > 0
