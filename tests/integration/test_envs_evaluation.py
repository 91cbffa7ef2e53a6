"""evaluate() against Meta-World's scripted experts and against metaworld.evaluation.evaluation."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence

import gymnasium as gym
import numpy as np
import pytest
from metaworld.evaluation import evaluation as metaworld_evaluation
from metaworld.policies import ENV_POLICY_MAP

from envs import EnvConfig, MultiTaskVectorEnv, evaluate, make_envs
from envs.evaluation import episode_quota

pytestmark = pytest.mark.slow  # every test builds Meta-World environments

# Experts that solve these tasks reliably in 500 steps (checked on MT10: 10/10 for every task).
TASKS = ["reach-v3", "push-v3", "drawer-close-v3"]


@pytest.fixture(autouse=True)
def _quiet_experts() -> None:
    warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high")


def expert_policy(tasks_of_rows: Sequence[str]) -> Callable[[np.ndarray], np.ndarray]:
    """Row i acts with the scripted expert of tasks_of_rows[i]; it sees the float32 observation
    (as a learner would) and returns float64 actions, whichever vector env calls it."""
    experts = [ENV_POLICY_MAP[name]() for name in tasks_of_rows]

    def policy(obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float32)[:, :39]
        return np.stack([p.get_action(o) for p, o in zip(experts, obs, strict=True)]).astype(np.float64)

    return policy


def policy_for(envs: MultiTaskVectorEnv) -> Callable[[np.ndarray], np.ndarray]:
    return expert_policy([envs.task_names[t] for t in envs.task_index])


class _MetaWorldAgent:
    """metaworld.evaluation's Agent protocol around a policy callable."""

    def __init__(self, policy: Callable[[np.ndarray], np.ndarray]) -> None:
        self.policy = policy

    def eval_action(self, observations: np.ndarray) -> np.ndarray:
        return self.policy(observations)

    def reset(self, env_mask: np.ndarray) -> None:
        pass


def test_experts_succeed_with_workers() -> None:
    config = EnvConfig(benchmark=",".join(TASKS), num_workers=2)
    with make_envs(config, seed=1) as envs:
        result = evaluate(policy_for(envs), envs, episodes_per_task=3)
        assert envs.terminate_on_success is False  # restored after the evaluation
    assert result.per_task_success == {name: 1.0 for name in TASKS}
    assert result.success_rate == 1.0
    assert all(r > 0 for r in result.per_task_return.values())
    assert json.loads(json.dumps(result.to_dict())) == result.to_dict()


def test_equals_metaworld_evaluation_for_the_same_seed() -> None:
    # 60 steps is too short for some push and drawer-close episodes, so the success rates are
    # not all 1 and the comparison can tell episodes apart.
    seed, steps, episodes = 5, 60, 6
    mw_envs = gym.make_vec(
        "Meta-World/custom-mt-envs",
        vector_strategy="sync",
        envs_list=TASKS,
        seed=seed,
        max_episode_steps=steps,
    )
    mean, _, mw_rates, mw_returns = metaworld_evaluation(
        _MetaWorldAgent(expert_policy(TASKS)), mw_envs, num_episodes=episodes
    )
    mw_envs.close()
    config = EnvConfig(benchmark=",".join(TASKS), one_hot=False, max_episode_steps=steps)
    with make_envs(config, seed=seed) as envs:
        ours = evaluate(policy_for(envs), envs, episodes_per_task=episodes)
    assert ours.per_task_success == mw_rates
    assert ours.success_rate == pytest.approx(mean, abs=1e-12)
    for name in TASKS:
        assert ours.per_task_return[name] == pytest.approx(np.mean(mw_returns[name]), rel=1e-12)
    assert any(0 < rate < 1 for rate in ours.per_task_success.values())


def test_several_envs_per_task_count_exactly_episodes_per_task() -> None:
    config = EnvConfig(benchmark="push-v3,reach-v3", envs_per_task=2, max_episode_steps=60)
    episodes = 5
    with make_envs(config, seed=3) as envs:
        quota = episode_quota(envs, episodes)
        assert quota.tolist() == [3, 2, 3, 2]
        result = evaluate(policy_for(envs), envs, episodes_per_task=episodes)
    # reference: the same episodes collected by hand, the first quota[e] of every env
    with make_envs(config.replace(terminate_on_success=True), seed=3) as envs:
        policy = policy_for(envs)
        ended: list[list[tuple[bool, float]]] = [[] for _ in range(envs.num_envs)]
        obs = envs.reset()
        while any(len(e) < q for e, q in zip(ended, quota, strict=True)):
            step = envs.step(policy(obs))
            obs = step.obs
            for i in np.flatnonzero(step.done):
                ended[i].append((bool(step.episode_success[i]), float(step.episode_return[i])))
    for t, name in enumerate(envs.task_names):
        counted = [ep for e in np.flatnonzero(envs.task_index == t) for ep in ended[e][: quota[e]]]
        assert len(counted) == episodes
        assert result.per_task_success[name] == sum(s for s, _ in counted) / episodes
        assert result.per_task_return[name] == pytest.approx(sum(r for _, r in counted) / episodes, rel=1e-12)
    assert 0 < result.per_task_success["push-v3"] < 1


@pytest.mark.parametrize("episodes", [0, -1, 2.5, True])
def test_bad_episode_count(episodes: object) -> None:
    with make_envs(EnvConfig(benchmark="reach-v3"), seed=0) as envs:
        with pytest.raises(ValueError, match="episodes_per_task"):
            evaluate(policy_for(envs), envs, episodes_per_task=episodes)  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore:.*precision lowered by casting")
def test_mt10_matches_metaworld_entry_point_with_workers() -> None:
    """MT10: task order, one-hot ids and seeding equal gymnasium.make_vec("Meta-World/MT10")."""
    seed = 2
    mw_envs = gym.make_vec("Meta-World/MT10", vector_strategy="sync", seed=seed, use_one_hot=True)
    mw_obs, _ = mw_envs.reset()
    actions = np.random.default_rng(0).uniform(-1, 1, (5, 10, 4))
    mw_next = [mw_envs.step(a)[0] for a in actions]
    mw_envs.close()
    with make_envs(EnvConfig(benchmark="MT10", num_workers=2), seed=seed) as envs:
        obs = envs.reset()
        ours_next = [envs.step(a).obs for a in actions]
    np.testing.assert_array_equal(obs, mw_obs.astype(np.float32))
    np.testing.assert_array_equal(np.stack(ours_next), np.stack(mw_next).astype(np.float32))
