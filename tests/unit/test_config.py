"""launch.config: the balancer names, every preset, and the training configuration's checks."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from envs import task_names
from launch.config import PRESETS, BalancerConfig, BalancerName, balancer_options_given
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
    ("field", "value", "message"),
    [
        ("total_steps", 0, "total_steps must be > 0, got 0"),
        ("batch_size_per_task", -1, "batch_size_per_task must be > 0, got -1"),
        ("warmup_steps", -1, "warmup_steps must be >= 0, got -1"),
        ("updates_per_step", -0.5, "updates_per_step must be >= 0, got -0.5"),
    ],
)
def test_train_config_checks_name_the_field(field: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(PRESETS["smoke"][1], **{field: value})
