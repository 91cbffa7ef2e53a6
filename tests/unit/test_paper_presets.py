"""The presets named after the 2025 network stack's papers: each validates, names its paper and lists its departures."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from envs import task_names
from launch.config import PPOTrainConfig, SACTrainConfig, config_from_plain
from launch.presets import PRESETS, mt10_mhsac_wide, mt10_paco, mt10_ppo_popart, mt10_soft_modularization, mt50_brc, mt_moore

PAPER_PRESETS: dict[str, tuple[Callable[[], SACTrainConfig | PPOTrainConfig], str]] = {
    "mt10-moore": (partial(mt_moore, "MT10", 4, 1_000_000), "Multi-Task Reinforcement Learning with Mixture of Orthogonal Experts"),
    "mt50-moore": (partial(mt_moore, "MT50", 6, 100_000), "Multi-Task Reinforcement Learning with Mixture of Orthogonal Experts"),
    "mt10-sm": (mt10_soft_modularization, "Multi-Task Reinforcement Learning with Soft Modularization"),
    "mt10-paco": (mt10_paco, "PaCo: Parameter-Compositional Multi-Task Reinforcement Learning"),
    "mt50-brc": (mt50_brc, "Bigger, Regularized, Categorical"),
    "mt10-mhsac-wide": (mt10_mhsac_wide, "Multi-Task Reinforcement Learning Enables Parameter Scaling"),
    "mt10-ppo-popart": (mt10_ppo_popart, "Multi-task Deep Reinforcement Learning with PopArt"),
}
"""Each paper preset's factory and the title of the paper its docstring must cite."""


@pytest.mark.parametrize("name", sorted(PAPER_PRESETS))
def test_a_paper_preset_validates_names_its_paper_and_lists_its_departures(name: str) -> None:
    factory, title = PAPER_PRESETS[name]
    description, config = PRESETS[name]
    assert factory() == config and description
    doc = " ".join(getattr(factory, "func", factory).__doc__.split())
    assert title in doc and "Departures:" in doc
    num_tasks = len(task_names(config.env.benchmark))
    config.balancer.check(num_tasks, given=[])
    assert config.balancer.name == "mean"  # the papers' mean gradient; --balancer.name chooses another
    saved = dataclasses.replace(config, run_dir=Path("runs/x"))
    assert config_from_plain(saved.to_plain()) == saved  # config.json reads back as the preset


def test_the_paper_presets_hold_their_papers_networks() -> None:
    moore10, moore50 = PRESETS["mt10-moore"][1].sac, PRESETS["mt50-moore"][1].sac
    assert (moore10.encoder.name, moore10.encoder.option("num_experts"), moore50.encoder.option("num_experts")) == ("moore", 4, 6)
    assert moore10.hidden_dims == (400, 400, 400) and moore10.temperature_optimizer.lr == 1e-4
    sm = PRESETS["mt10-sm"][1].sac
    assert (sm.encoder.name, sm.encoder.num_modules, sm.encoder.module_layers, sm.encoder.module_width) == ("softmod", 2, 2, 256)
    assert sm.hidden_dims == (400, 400) and not sm.per_task_heads
    paco = PRESETS["mt10-paco"][1].sac
    assert (paco.encoder.name, paco.encoder.num_parameter_sets) == ("paco", 5)
    brc = PRESETS["mt50-brc"][1]
    assert (brc.sac.critic, brc.sac.critic_width, brc.sac.critic_blocks, brc.sac.num_bins) == ("brc", 4096, 2, 101)
    assert brc.sac.reward_normalization == "per-task" and brc.sac.encoder.task_conditioning == "embedding"
    assert (brc.replay.updates_per_step, brc.env.benchmark) == (2.0, "MT50")
    assert not brc.balancer.statistics  # no [50, D] per-task gradients of the 4096-wide critics under the mean
    wide = PRESETS["mt10-mhsac-wide"][1].sac
    assert wide.hidden_dims == (1024, 1024, 1024) and wide.per_task_heads
    ppo = PRESETS["mt10-ppo-popart"][1]
    assert isinstance(ppo, PPOTrainConfig) and ppo.ppo.value_normalization == "popart" and ppo.ppo.critic_layer_norm
    assert dataclasses.replace(ppo.ppo, value_normalization="none", critic_layer_norm=False) == PRESETS["mt10-ppo"][1].ppo
