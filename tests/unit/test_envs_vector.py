"""MultiTaskVectorEnv stepped in-process: ordering, one-hot ids, seeding, episode ends, RNG state."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode

from envs import EnvConfig, MultiTaskVectorEnv, make_envs
from envs.specs import env_specs, goal_position
from envs.task_env import TaskEnv

pytestmark = pytest.mark.slow  # every test builds Meta-World environments

TASKS = "reach-v3,push-v3"


def random_actions(envs: MultiTaskVectorEnv, steps: int, seed: int = 0) -> np.ndarray:
    """[steps, N, 4] uniform actions."""
    return np.random.default_rng(seed).uniform(-1, 1, (steps, envs.num_envs, envs.action_dim))


def rollout(envs: MultiTaskVectorEnv, actions: np.ndarray) -> dict[str, np.ndarray]:
    """Reset, then step through actions [steps, N, 4]; every result stacked over steps."""
    out: dict[str, list[np.ndarray]] = {"reset": [envs.reset()]}
    for a in actions:
        result = envs.step(a)
        for name in ("obs", "final_obs", "reward", "terminated", "truncated", "success"):
            out.setdefault(name, []).append(getattr(result, name))
    return {name: np.stack(values) for name, values in out.items()}


def test_order_one_hot_and_shapes() -> None:
    config = EnvConfig(benchmark=TASKS, envs_per_task=3)
    with make_envs(config, seed=0) as envs:
        assert envs.num_envs == 6 and envs.num_tasks == 2
        assert envs.task_names == ["reach-v3", "push-v3"]
        assert envs.task_index.tolist() == [0, 0, 0, 1, 1, 1]
        assert envs.obs_dim == 41 and envs.action_dim == 4
        assert envs.action_low.tolist() == [-1.0] * 4 and envs.action_high.tolist() == [1.0] * 4
        assert envs.autoreset_mode == AutoresetMode.SAME_STEP
        obs = envs.reset()
        assert obs.shape == (6, 41) and obs.dtype == np.float32
        np.testing.assert_array_equal(obs[:, 39:], np.eye(2)[envs.task_index])
        result = envs.step(random_actions(envs, 1)[0])
        np.testing.assert_array_equal(result.obs[:, 39:], np.eye(2)[envs.task_index])
        np.testing.assert_array_equal(result.final_obs[:, 39:], np.eye(2)[envs.task_index])
        assert result.reward.shape == (6,) and result.terminated.dtype == np.bool_
    with make_envs(config.replace(one_hot=False), seed=0) as envs:
        assert envs.reset().shape == (6, 39)


def test_same_seed_same_observations_and_different_seed_differs() -> None:
    config = EnvConfig(benchmark=TASKS, envs_per_task=2, max_episode_steps=4)
    runs = []
    for seed in (1, 1, 2):
        with make_envs(config, seed=seed) as envs:
            runs.append(rollout(envs, random_actions(envs, 9)))
    for name in runs[0]:
        np.testing.assert_array_equal(runs[0][name], runs[1][name])
    assert not np.array_equal(runs[0]["reset"], runs[2]["reset"])
    # copies of one task draw their own goals (goal = last 3 raw observation entries)
    goals = runs[0]["reset"][0, :, 36:39]
    assert not np.array_equal(goals[0], goals[1])


def test_truncation_final_obs_and_autoreset_match_a_single_env() -> None:
    config = EnvConfig(benchmark=TASKS, max_episode_steps=3, one_hot=False)
    with make_envs(config, seed=1) as envs:
        actions = random_actions(envs, 7, seed=1)
        run = rollout(envs, actions)
        assert run["truncated"][:, 0].tolist() == [False, False, True, False, False, True, False]
        assert not run["terminated"].any()
        ended = run["truncated"][2]
        assert ended.all()
        assert not np.array_equal(run["final_obs"][2], run["obs"][2])
        np.testing.assert_array_equal(run["final_obs"][[0, 1, 3]], run["obs"][[0, 1, 3]])
    # the same environment stepped by hand: final_obs is the real last observation, obs the
    # first observation of the next episode (gymnasium's SAME_STEP autoreset)
    spec = env_specs(config, seed=1)[1]
    env = TaskEnv(spec)
    np.testing.assert_array_equal(env.reset().astype(np.float32), run["reset"][0, 1])
    rewards = []
    for t in range(3):
        obs, reward, terminated, truncated, _ = env.step(actions[t, 1])
        rewards.append(reward)
        np.testing.assert_array_equal(obs.astype(np.float32), run["final_obs"][t, 1])
    assert truncated and not terminated
    np.testing.assert_array_equal(env.reset().astype(np.float32), run["obs"][2, 1])
    np.testing.assert_array_equal(run["reward"][:3, 1], rewards)


def test_episode_statistics_of_ended_episodes() -> None:
    config = EnvConfig(benchmark=TASKS, max_episode_steps=4)
    with make_envs(config, seed=2) as envs:
        envs.reset()
        rewards = []
        for a in random_actions(envs, 4):
            result = envs.step(a)
            rewards.append(result.reward)
        assert result.truncated.all()
        np.testing.assert_allclose(result.episode_return, np.sum(rewards, axis=0))
        assert result.episode_length.tolist() == [4, 4]
        assert result.done.all()


def reach_expert(obs: np.ndarray) -> np.ndarray:
    """Meta-World's scripted reach policy, vectorised: move the hand towards the goal."""
    action = np.zeros((len(obs), 4))
    action[:, :3] = np.clip(5.0 * (obs[:, 36:39] - obs[:, 0:3]), -1, 1)
    return action


def test_terminate_on_success_ends_the_episode_at_the_first_success() -> None:
    config = EnvConfig(benchmark="reach-v3", terminate_on_success=True)
    with make_envs(config, seed=0) as envs:
        obs = envs.reset()
        for _ in range(200):
            result = envs.step(reach_expert(obs))
            obs = result.obs
            if result.done[0]:
                break
            assert not result.success[0]  # a success ends the episode at once
        assert result.success[0] and result.terminated[0] and not result.truncated[0]
        assert result.episode_success[0] and 1 < result.episode_length[0] < 200
        assert not np.array_equal(result.final_obs, result.obs)


def test_goal_modes() -> None:
    base = EnvConfig(benchmark="reach-v3", max_episode_steps=2, one_hot=False)
    goals = {}
    for mode in ("resample", "fixed"):
        with make_envs(base.replace(goal_mode=mode), seed=4) as envs:
            run = rollout(envs, np.zeros((8, 1, 4)))
        goals[mode] = np.concatenate([run["reset"][:, 0, 36:39], run["obs"][1::2, 0, 36:39]])  # [5, 3]
    # v3: every reset draws one of the task's 50 goals with the environment's generator
    spec = env_specs(base, seed=4)[0]
    rng, _ = seeding.np_random(spec.seed)
    expected = [goal_position(spec.goals[rng.choice(50)]) for _ in range(5)]
    np.testing.assert_array_equal(goals["resample"], np.float32(expected))
    assert len(np.unique(goals["resample"], axis=0)) > 1
    # legacy: the first of those goals, for good
    np.testing.assert_array_equal(goals["fixed"], np.float32([expected[0]] * 5))


def test_reward_function_versions_differ_on_the_same_trajectory() -> None:
    base = EnvConfig(benchmark="reach-v3")
    runs = {}
    for version in ("v2", "v1"):
        with make_envs(base.replace(reward_function_version=version), seed=0) as envs:
            runs[version] = rollout(envs, random_actions(envs, 5))
    np.testing.assert_array_equal(runs["v1"]["obs"], runs["v2"]["obs"])
    assert not np.allclose(runs["v1"]["reward"], runs["v2"]["reward"])
    assert runs["v2"]["reward"].max() <= 10.0


def test_rng_state_restores_the_next_episode_exactly() -> None:
    config = EnvConfig(benchmark=TASKS, envs_per_task=2, max_episode_steps=3)
    actions = np.random.default_rng(0).uniform(-1, 1, (12, 4, 4))
    with make_envs(config, seed=2) as envs:
        envs.reset()
        for a in actions[:6]:  # two full episodes: the last step truncated and auto-reset
            result = envs.step(a)
        assert result.truncated.all()
        state = pickle.loads(pickle.dumps(envs.get_rng_state()))
        assert all(entry["episode_step"] == 0 for entry in state)
        expected = [result.obs] + [envs.step(a).obs for a in actions[6:]]
    with make_envs(config, seed=2) as resumed:
        resumed.set_rng_state(state)
        got = [resumed.reset()] + [resumed.step(a).obs for a in actions[6:]]
    np.testing.assert_array_equal(np.stack(got), np.stack(expected))
    with make_envs(config, seed=2) as fresh:  # without the state the goals differ
        assert not np.array_equal(fresh.reset(), expected[0])


def test_rng_state_from_other_environments_is_refused() -> None:
    with make_envs(EnvConfig(benchmark=TASKS), seed=1) as envs:
        state = envs.get_rng_state()
    with make_envs(EnvConfig(benchmark=TASKS), seed=2) as other:
        with pytest.raises(ValueError, match="task 'reach-v3' seed 1"):
            other.set_rng_state(state)
        with pytest.raises(ValueError, match="holds 1 environments"):
            other.set_rng_state(state[:1])


def test_misuse_gives_clear_errors() -> None:
    envs = make_envs(EnvConfig(benchmark=TASKS), seed=0)
    with pytest.raises(RuntimeError, match="reset"):
        envs.step(np.zeros((2, 4)))
    envs.reset()
    with pytest.raises(ValueError, match=r"\(2, 4\), got \(3, 4\)"):
        envs.step_async(np.zeros((3, 4)))
    envs.step_async(np.zeros((2, 4)))
    with pytest.raises(RuntimeError, match="twice"):
        envs.step_async(np.zeros((2, 4)))
    envs.step_wait()
    with pytest.raises(RuntimeError, match="without step_async"):
        envs.step_wait()
    envs.close()
    envs.close()
    assert envs.closed
    with pytest.raises(RuntimeError, match="closed"):
        envs.reset()
    with pytest.raises(TypeError, match="EnvConfig"):
        make_envs({"benchmark": "MT10"}, seed=0)  # type: ignore[arg-type]
