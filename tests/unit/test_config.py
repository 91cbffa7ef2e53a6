"""launch.config: the balancer section and its names, every preset, and the training configuration's checks."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import typing

import pytest

from envs import task_names
from launch.config import (
    BALANCER_OPTIONS,
    BalancerConfig,
    BalancerName,
    PPOTrainConfig,
    SACTrainConfig,
    balancer_options_given,
)
from launch.presets import PRESETS
from launch.train import main as train_main
from launch.train import parse_config
from mtrl.balancers import BALANCERS, FAMO, CAGradFast, GradNorm, balancer_takes
from mtrl.balancers.options import run_options


def test_the_command_lines_balancer_names_are_the_registry() -> None:
    assert typing.get_args(BalancerName) == tuple(BALANCERS)


def test_the_balancer_section_is_made_of_the_balancers_declarations() -> None:
    """One field per run option of any balancer (default and type as declared), between name and compile_solver."""
    fields = {f.name: f for f in dataclasses.fields(BalancerConfig)}
    declared = run_options(BALANCERS)
    assert list(fields) == ["name", *declared, "compile_solver"]
    assert list(fields) == [
        "name", "statistics", "c", "rescale", "num_sampled", "lr", "alpha",
        "fairness", "beta", "log_var_lr", "temperature", "window", "norm_decay",
        "lam", "step_size", "momentum", "inner_steps", "compile_solver",
    ]
    hints = typing.get_type_hints(BalancerConfig)
    for name, option in declared.items():
        assert (fields[name].default, hints[name]) == (option.default, option.type), name
    for name, cls in BALANCERS.items():
        assert set(balancer_takes(name)) - {"seed"} <= set(BALANCER_OPTIONS)
        assert BalancerConfig(name=name).options() == cls.Options()  # the section's defaults are the balancer's


def test_the_help_says_what_an_option_means_for_each_balancer_that_takes_it(monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # one column of options (a wide terminal gets several side by side)
    text = io.StringIO()
    with contextlib.redirect_stdout(text), pytest.raises(SystemExit):
        parse_config(["smoke", "--help"])
    help_text = " ".join(text.getvalue().replace("│", " ").split())
    assert "--balancer.lr FLOAT famo: learning rate of the task logits (Adam); gradnorm: learning rate of the loss weights" in help_text
    assert "--balancer.c FLOAT cagrad / cagrad_fast: radius of the conflict-averse ball" in help_text
    assert "cagrad / cagrad_fast / mgda / nashmtl / upgrad / dualproj / fairgrad / sdmgrad: run the solver's iterations through torch.compile" in help_text
    assert "--balancer.max-iter" not in help_text  # fixed in runs


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_builds_its_balancer_for_its_benchmark(preset: str) -> None:
    description, config = PRESETS[preset]
    assert description
    num_tasks = len(task_names(config.env.benchmark))
    config.balancer.check(num_tasks, given=[])
    balancer = config.balancer.build(num_tasks, seed=config.seed)
    assert type(balancer) is BALANCERS[config.balancer.name] and balancer.num_tasks == num_tasks


def test_build_passes_only_the_hyperparameters_a_method_takes() -> None:
    config = BalancerConfig(name="cagrad_fast", c=0.3, num_sampled=2, rescale=0, alpha=9.0, compile_solver=False)
    balancer = config.build(4, seed=5)
    assert balancer.options == CAGradFast.Options(c=0.3, num_sampled=2, rescale=0)
    assert (balancer.num_sampled, balancer.seed, balancer.compile_solver) == (2, 5, False)
    assert BalancerConfig(name="famo", lr=0.1).build(4, seed=5).options == FAMO.Options(lr=0.1)
    assert BalancerConfig(name="gradnorm", lr=0.1).build(4, seed=5).options == GradNorm.Options(lr=0.1)


def test_the_chosen_balancers_values_are_checked_and_the_others_left_unused() -> None:
    with pytest.raises(ValueError, match=r"^c must be a finite number >= 0, got -1.0$"):
        BalancerConfig(name="cagrad", c=-1.0).check(3, given=[])
    with pytest.raises(ValueError, match=r"^num_sampled must be an integer in \[1, num_tasks=3\], got 4$"):
        BalancerConfig(name="cagrad_fast", num_sampled=4).check(3, given=[])
    BalancerConfig(name="pcgrad", c=-1.0).check(3, given=[])
    BalancerConfig(name="cagrad_fast").check(3, given=[])  # num_sampled None: min(4, T)


def test_unknown_balancer_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown balancer 'cagard'; valid names: mean, cagrad, "):
        BalancerConfig(name="cagard").build(4, seed=0)  # type: ignore[arg-type]


def test_an_option_given_for_a_balancer_that_does_not_take_it_is_refused_by_name() -> None:
    argv = ["mt10", "--balancer.name", "pcgrad", "--balancer.c=0.3", "--balancer.no-statistics"]
    assert balancer_options_given(argv) == ["c", "statistics"]
    with pytest.raises(ValueError, match=r"^--balancer.c is not an option of balancer 'pcgrad'; it takes: none$"):
        BalancerConfig(name="pcgrad", c=0.3).check_options_given(["c"])
    with pytest.raises(
        ValueError,
        match=r"^--balancer.statistics is not an option of balancer 'cagrad'; it takes: --balancer.c, --balancer.rescale, --balancer.compile-solver$",
    ):
        BalancerConfig(name="cagrad").check_options_given(["statistics"])
    with pytest.raises(ValueError, match=r"^--balancer.lr is not an option of balancer 'nashmtl'; it takes: --balancer.compile-solver$"):
        BalancerConfig(name="nashmtl").check_options_given(["lr"])
    BalancerConfig(name="cagrad_fast").check_options_given(["c", "num_sampled", "rescale", "compile_solver"])
    BalancerConfig(name="famo").check_options_given(["lr"])
    BalancerConfig(name="gradnorm").check_options_given(["lr", "alpha"])
    BalancerConfig(name="pcgrad", c=0.9).check_options_given([])  # a preset's value, not given: left unused


def test_the_command_line_refuses_a_foreign_option_with_one_line_and_creates_nothing(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    argv = ["smoke", "--run-dir", str(run_dir), "--balancer.name", "famo", "--balancer.alpha", "2"]
    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == "mtrl-train: error: --balancer.alpha is not an option of balancer 'famo'; it takes: --balancer.lr"
    assert not run_dir.exists()


@pytest.mark.parametrize(
    ("section", "field", "value", "message"),
    [
        (None, "total_steps", 0, "total_steps must be > 0, got 0"),
        ("replay", "batch_size_per_task", -1, "replay.batch_size_per_task must be > 0, got -1"),
        ("replay", "buffer_capacity_per_task", 0, "replay.buffer_capacity_per_task must be > 0, got 0"),
        ("replay", "warmup_steps", -1, "replay.warmup_steps must be >= 0, got -1"),
        ("replay", "updates_per_step", -0.5, "replay.updates_per_step must be >= 0, got -0.5"),
        ("replay", "updates_per_step", float("nan"), "replay.updates_per_step must be a finite number, got nan"),
        ("sac", "gamma", 1.5, "sac.gamma must be in \\[0, 1\\], got 1.5"),
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
    assert "replay" in sac.to_plain() and "replay" not in ppo.to_plain()  # SAC's off-policy loop section
    assert sac.algorithm is sac.sac and ppo.algorithm is ppo.ppo


def test_total_updates_counts_each_algorithms_updates() -> None:
    sac = PRESETS["smoke"][1]  # 4000 steps on 10 environments, 1000 of them warm-up, 1 update per vector step
    assert sac.total_updates(num_envs=10) == 300
    assert dataclasses.replace(sac, replay=dataclasses.replace(sac.replay, updates_per_step=0.5)).total_updates(10) == 150
    ppo = PRESETS["ppo-smoke"][1]  # 20000 steps on 10 environments: 20 rollouts of 100 steps, 4 epochs of 4 minibatches
    assert ppo.total_updates(num_envs=10) == 20 * 4 * 4


def test_samples_per_task_is_the_rows_each_task_gives_one_update() -> None:
    sac = PRESETS["smoke"][1]
    assert sac.samples_per_task() == sac.replay.batch_size_per_task
    ppo = PRESETS["quickstart"][1]  # 500-step rollouts of 4 environments per task in 16 minibatches
    assert ppo.samples_per_task() == 500 * 4 // 16
