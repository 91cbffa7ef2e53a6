"""Configs to plain data and back: every preset round-trips through JSON, bad data names its field."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from launch.config import PRESETS, TrainConfig
from mtrl.config_io import ConfigDataError, flatten, from_plain, non_finite_floats, to_plain


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_json(name):
    config = dataclasses.replace(PRESETS[name][1], run_dir=Path("runs/x"))
    assert from_plain(TrainConfig, json.loads(json.dumps(to_plain(config)))) == config


def test_missing_fields_take_their_defaults_and_unknown_ones_are_refused():
    assert from_plain(TrainConfig, {"seed": 3}) == TrainConfig(seed=3)
    with pytest.raises(ConfigDataError, match=r"sac\.no_such_field: no such field in SACConfig"):
        from_plain(TrainConfig, {"sac": {"no_such_field": 1}})
    with pytest.raises(ConfigDataError, match=r"algo: 'dqn' is not one of"):
        from_plain(TrainConfig, {"algo": "dqn"})
    with pytest.raises(ConfigDataError, match=r"seed: expected int"):
        from_plain(TrainConfig, {"seed": "1"})


def test_the_config_checks_still_run_on_decoding():
    with pytest.raises(ValueError, match="total_steps must be > 0"):
        from_plain(TrainConfig, {"total_steps": -5})


def test_flatten_and_non_finite_floats_name_dotted_fields():
    plain = to_plain(TrainConfig())
    assert flatten(plain)["sac.critic_optimizer.lr"] == 3e-4
    assert flatten(plain)["sac.hidden_dims"] == [400, 400, 400]
    assert non_finite_floats(TrainConfig()) == []
    assert non_finite_floats(dataclasses.replace(TrainConfig(), warmup_steps=1), prefix="x") == []


def test_train_config_refuses_non_finite_numbers_and_bad_seeds():
    with pytest.raises(ValueError, match="updates_per_step must be a finite number, got nan"):
        TrainConfig(updates_per_step=float("nan"))
    with pytest.raises(ValueError, match="updates_per_step must be a finite number, got inf"):
        TrainConfig(updates_per_step=float("inf"))
    for seed in (-1, 2**32):
        with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2147483647\]"):
            TrainConfig(seed=seed)
