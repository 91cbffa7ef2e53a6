"""Benchmark names, configuration checks and environment specs (no simulation)."""

from __future__ import annotations

import metaworld.env_dict as mw_env_dict
import numpy as np
import pytest

from envs import BENCHMARKS, EnvConfig, task_names
from envs.buffers import BufferLayout, StepBuffers
from envs.specs import EnvSpec, env_specs
from envs.tasks import step_cost
from envs.worker import assign_to_workers


def test_benchmark_task_lists_follow_metaworld_order() -> None:
    assert task_names("MT10") == list(mw_env_dict.MT10_V3)
    assert task_names("MT50") == list(mw_env_dict.MT50_V3)
    assert len(task_names("MT10")) == 10 and len(task_names("MT50")) == 50
    assert task_names("MT10")[:3] == ["reach-v3", "push-v3", "pick-place-v3"]
    assert set(BENCHMARKS) == {"MT10", "MT25", "MT50"}


def test_single_task_and_custom_lists_keep_their_order() -> None:
    assert task_names("reach-v3") == ["reach-v3"]
    assert task_names("push-v3, reach-v3") == ["push-v3", "reach-v3"]


@pytest.mark.parametrize("name", ["MT11", "reach-v2", "reach-v3,nope-v3", "", "mt10"])
def test_unknown_names_list_the_valid_ones(name: str) -> None:
    with pytest.raises(ValueError) as info:
        task_names(name)
    message = str(info.value)
    assert "MT10" in message and "MT50" in message and "reach-v3" in message
    assert "\n" not in message
    if name:
        assert repr(name.split(",")[-1].strip()) in message


def test_duplicate_tasks_point_to_envs_per_task() -> None:
    with pytest.raises(ValueError, match="more than once.*envs_per_task"):
        task_names("reach-v3,push-v3,reach-v3")


@pytest.mark.parametrize(
    ("field", "value", "error", "expected"),
    [
        ("benchmark", "MT11", ValueError, "valid benchmarks: MT10, MT25, MT50"),
        ("goal_mode", "random", ValueError, "'resample', 'fixed'"),
        ("reward_function_version", "v3", ValueError, "'v2', 'v1'"),
        ("envs_per_task", 0, ValueError, ">= 1"),
        ("num_workers", -1, ValueError, ">= 0"),
        ("max_episode_steps", 0, ValueError, ">= 1"),
        ("max_episode_steps", 10**6, ValueError, "500"),
        ("envs_per_task", 2.0, TypeError, "int"),
        ("one_hot", 1, TypeError, "bool"),
        ("worker_timeout_s", 0, ValueError, "finite number of seconds > 0"),
        ("worker_timeout_s", -1.0, ValueError, "finite number of seconds > 0"),
        ("worker_timeout_s", float("nan"), ValueError, "=nan is not allowed"),
        ("worker_timeout_s", float("inf"), ValueError, "=inf is not allowed"),
        ("worker_timeout_s", "30", TypeError, "number of seconds"),
        ("worker_timeout_s", True, TypeError, "number of seconds"),
    ],
)
def test_bad_config_values_name_the_value_and_the_allowed_ones(
    field: str, value: object, error: type[Exception], expected: str
) -> None:
    with pytest.raises(error) as info:
        EnvConfig(**{field: value})
    assert field in str(info.value) and expected in str(info.value)
    assert "\n" not in str(info.value)


def test_worker_timeout_defaults_to_seconds_not_minutes() -> None:
    assert 10 <= EnvConfig().worker_timeout_s <= 30
    config = EnvConfig(worker_timeout_s=5)
    assert config.worker_timeout_s == 5.0 and isinstance(config.worker_timeout_s, float)
    assert config.replace(worker_timeout_s=7.5).worker_timeout_s == 7.5


@pytest.mark.slow
def test_specs_follow_metaworld_seeding_for_custom_lists() -> None:
    config = EnvConfig(benchmark="reach-v3,push-v3", envs_per_task=3)
    specs = env_specs(config, seed=7)
    assert [s.task_name for s in specs] == ["reach-v3"] * 3 + ["push-v3"] * 3
    assert [s.task_index for s in specs] == [0, 0, 0, 1, 1, 1]
    assert [s.env_index for s in specs] == list(range(6))
    # copy 0 of task i: seed + i, as Meta-World's custom-mt-envs; other copies: distinct seeds
    assert specs[0].seed == 7 and specs[3].seed == 8
    assert len({s.seed for s in specs}) == 6
    assert all(len(s.goals) == 50 for s in specs)
    assert env_specs(config, seed=7) == specs


@pytest.mark.slow
def test_fixed_goal_mode_keeps_one_goal_shared_by_the_copies() -> None:
    resample = env_specs(EnvConfig(benchmark="reach-v3", envs_per_task=2), seed=3)
    fixed = env_specs(EnvConfig(benchmark="reach-v3", envs_per_task=2, goal_mode="fixed"), seed=3)
    assert len(fixed[0].goals) == 1 and fixed[0].goals == fixed[1].goals
    assert fixed[0].goals[0] in resample[0].goals


@pytest.mark.parametrize("seed", [-1, 1.5, None, True])
def test_bad_seed(seed: object) -> None:
    with pytest.raises(ValueError, match="seed"):
        env_specs(EnvConfig(benchmark="reach-v3"), seed=seed)  # type: ignore[arg-type]


def fake_specs(benchmark: str, envs_per_task: int = 1) -> list[EnvSpec]:
    """Specs without goals: enough to plan the workers."""
    names = task_names(benchmark)
    return [
        EnvSpec(
            env_index=t * envs_per_task + j,
            task_index=t,
            task_name=name,
            copy_index=j,
            goals=(),
            seed=0,
            max_episode_steps=1,
            reward_function_version="v2",
            terminate_on_success=False,
        )
        for t, name in enumerate(names)
        for j in range(envs_per_task)
    ]


@pytest.mark.parametrize(("suite", "workers"), [("MT10", 2), ("MT10", 4), ("MT50", 3), ("MT50", 16)])
def test_workers_get_every_env_once_and_balanced_costs(suite: str, workers: int) -> None:
    specs = fake_specs(suite, envs_per_task=2)
    groups = assign_to_workers(specs, workers)
    assert len(groups) == workers and all(groups) and all(g == sorted(g) for g in groups)
    assert sorted(sum(groups, [])) == list(range(len(specs)))
    loads = [sum(step_cost(specs[e].task_name) for e in g) for g in groups]
    assert max(loads) <= np.mean(loads) + max(step_cost(s.task_name) for s in specs)
    assert max(loads) < 1.1 * np.mean(loads)
    assert assign_to_workers(specs, workers) == groups


def test_worker_count_is_checked() -> None:
    with pytest.raises(ValueError, match=r"num_workers must be in \[1, 2\], got 3"):
        assign_to_workers(fake_specs("reach-v3,push-v3"), 3)


def test_buffer_views_do_not_overlap() -> None:
    layout = BufferLayout(num_envs=5, obs_dim=41, action_dim=4, num_workers=2)
    buffers = StepBuffers.allocate(layout)
    names = [name for name, _, _ in layout.fields()]
    for k, name in enumerate(names):
        getattr(buffers, name).reshape(-1).view(np.uint8)[:] = k + 1
    for k, name in enumerate(names):
        assert np.all(getattr(buffers, name).reshape(-1).view(np.uint8) == k + 1), name
    offsets, _ = layout.offsets()
    assert all(offset % 64 == 0 for offset in offsets.values())
    assert buffers.obs.shape == (5, 41) and buffers.actions.dtype == np.float64
