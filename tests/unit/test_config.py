"""launch.config: the balancer names, every preset, and the training configuration's checks."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from envs import task_names
from launch.config import PRESETS, BalancerConfig, BalancerName, PPOTrainConfig, SACTrainConfig, balancer_options_given
from mtrl.balancers import BALANCERS


def test_the_command_lines_balancer_names_are_the_registry() -> None:
    assert set(typing.get_args(BalancerName)) == set(BALANCERS)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_builds_its_balancer_for_its_benchmark(preset: str) -> None:
    description, config = PRESETS[preset]
    assert description
    num_tasks = len(task_names(config.env.benchmark))
    balancer = config.balancer.build(num_tasks, seed=config.seed)
    assert type(balancer) is BALANCERS[config.balancer.name] and balancer.num_tasks == num_tasks


def test_build_passes_only_the_hyperparameters_a_method_takes() -> None:
    config = BalancerConfig(name="cagrad_fast", c=0.3, num_sampled=2, rescale=0, alpha=9.0, compile_solver=False)
    balancer = config.build(4, seed=5)
    assert (balancer.c, balancer.num_sampled, balancer.rescale, balancer.compile_solver) == (0.3, 2, 0, False)


def test_unknown_balancer_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown balancer 'cagard'; valid names: mean, cagrad, "):
        BalancerConfig(name="cagard").build(4, seed=0)  # type: ignore[arg-type]


def test_an_option_given_for_a_balancer_that_does_not_take_it_is_refused_by_name() -> None:
    argv = ["mt10", "--balancer.name", "pcgrad", "--balancer.c=0.3", "--balancer.no-statistics"]
    assert balancer_options_given(argv) == ["c", "statistics"]
    with pytest.raises(ValueError, match=r"^--balancer.c is not an option of balancer 'pcgrad'; it takes: none$"):
        BalancerConfig(name="pcgrad", c=0.3).check_options_given(["c"])
    with pytest.raises(ValueError, match=r"--balancer.statistics is not an option of balancer 'cagrad'; it takes: --balancer.c, "):
        BalancerConfig(name="cagrad").check_options_given(["statistics"])
    BalancerConfig(name="cagrad_fast").check_options_given(["c", "num_sampled", "rescale", "compile_solver"])
    BalancerConfig(name="pcgrad", c=0.9).check_options_given([])  # a preset's value, not given: left unused


@pytest.mark.parametrize(
    ("section", "field", "value", "message"),
    [
        (None, "total_steps", 0, "total_steps must be > 0, got 0"),
        ("sac", "batch_size_per_task", -1, "sac.batch_size_per_task must be > 0, got -1"),
        ("sac", "warmup_steps", -1, "sac.warmup_steps must be >= 0, got -1"),
        ("sac", "updates_per_step", -0.5, "sac.updates_per_step must be >= 0, got -0.5"),
        ("sac", "updates_per_step", float("nan"), "sac.updates_per_step must be a finite number, got nan"),
    ],
)
def test_train_config_checks_name_the_field(section: str | None, field: str, value: float, message: str) -> None:
    config = PRESETS["smoke"][1]
    with pytest.raises(ValueError, match=message):
        if section is None:
            dataclasses.replace(config, **{field: value})
        else:
            dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **{field: value})})


def test_a_runs_config_holds_only_its_algorithms_section() -> None:
    sac, ppo = PRESETS["smoke"][1], PRESETS["ppo-smoke"][1]
    assert (type(sac), type(ppo)) == (SACTrainConfig, PPOTrainConfig)
    assert "sac" in sac.to_plain() and "ppo" not in sac.to_plain() and sac.to_plain()["algo"] == "sac"
    assert "ppo" in ppo.to_plain() and "sac" not in ppo.to_plain() and ppo.to_plain()["algo"] == "ppo"
    assert sac.algorithm is sac.sac and ppo.algorithm is ppo.ppo


def test_total_updates_counts_each_algorithms_updates() -> None:
    sac = PRESETS["smoke"][1]  # 4000 steps on 10 environments, 1000 of them warm-up, 1 update per vector step
    assert sac.total_updates(num_envs=10) == 300
    assert dataclasses.replace(sac, sac=dataclasses.replace(sac.sac, updates_per_step=0.5)).total_updates(10) == 150
    ppo = PRESETS["ppo-smoke"][1]  # 20000 steps on 10 environments: 20 rollouts of 100 steps, 4 epochs of 4 minibatches
    assert ppo.total_updates(num_envs=10) == 20 * 4 * 4
