"""Configs to plain data and back: every preset round-trips through JSON, bad data names its field."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from agents.sac import SACConfig
from launch.config import BalancerConfig, SACTrainConfig, config_from_plain
from launch.presets import PRESETS
from launch.replay_loop import ReplayLoopConfig
from mtrl.config_io import ConfigDataError, flatten, from_plain, non_finite_floats, to_plain


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_json(name):
    config = dataclasses.replace(PRESETS[name][1], run_dir=Path("runs/x"))
    assert config_from_plain(json.loads(json.dumps(config.to_plain()))) == config


def test_missing_fields_take_their_defaults_and_unknown_ones_are_refused():
    assert config_from_plain({"algo": "sac", "seed": 3}) == SACTrainConfig(seed=3)
    with pytest.raises(ConfigDataError, match=r"sac\.no_such_field: no such field in SACConfig"):
        config_from_plain({"algo": "sac", "sac": {"no_such_field": 1}})
    with pytest.raises(ConfigDataError, match=r"ppo: no such field in SACTrainConfig"):
        config_from_plain({"algo": "sac", "ppo": {}})  # a SAC run has no PPO section
    with pytest.raises(ConfigDataError, match=r"config\.algo: 'dqn' is not one of 'sac', 'ppo'"):
        config_from_plain({"algo": "dqn"})
    with pytest.raises(ConfigDataError, match=r"seed: expected int"):
        from_plain(SACTrainConfig, {"seed": "1"})


def test_the_config_checks_still_run_on_decoding():
    with pytest.raises(ValueError, match="total_steps must be > 0"):
        from_plain(SACTrainConfig, {"total_steps": -5})


def test_flatten_and_non_finite_floats_name_dotted_fields():
    plain = to_plain(SACTrainConfig())
    assert flatten(plain)["sac.critic_optimizer.lr"] == 3e-4
    assert flatten(plain)["sac.hidden_dims"] == [400, 400, 400]
    assert non_finite_floats(SACTrainConfig()) == []
    assert non_finite_floats(SACTrainConfig(replay=ReplayLoopConfig(warmup_steps=1)), prefix="x") == []


def test_train_config_refuses_non_finite_numbers_and_bad_seeds():
    with pytest.raises(ValueError, match="replay.updates_per_step must be a finite number, got nan"):
        SACTrainConfig(replay=ReplayLoopConfig(updates_per_step=float("nan")))
    with pytest.raises(ValueError, match="sac.gamma must be a finite number, got nan"):
        SACTrainConfig(sac=SACConfig(gamma=float("nan")))
    with pytest.raises(ValueError, match="balancer.c must be a finite number, got inf"):
        SACTrainConfig(balancer=dataclasses.replace(SACTrainConfig().balancer, c=float("inf")))
    for seed in (-1, 2**32):
        with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2147483647\]"):
            SACTrainConfig(seed=seed)


def test_an_older_runs_balancer_section_still_loads():
    """The flat ``balancer`` mapping that runs have saved, every option of every balancer in it."""
    saved = {"name": "cagrad_fast", "c": 0.9, "num_sampled": 4, "rescale": 1, "lr": 0.025, "alpha": 1.5,
             "statistics": True, "compile_solver": True}
    config = config_from_plain({"algo": "sac", "balancer": saved})
    plain = to_plain(config.balancer)
    assert {key: plain[key] for key in saved} == saved  # options added since keep their defaults
    assert {key: plain[key] for key in set(plain) - set(saved)} == {key: field.default for key, field in BalancerConfig.__dataclass_fields__.items() if key not in saved}
    assert config.balancer.build(10, seed=1).num_sampled == 4
