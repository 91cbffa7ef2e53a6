"""The composition root of a run: device, seeds, environments, agent and trainer, built from a config.

:func:`make_trainer` is the one place a training run is assembled; :mod:`launch.evaluate` builds
the same agent with :func:`build_agent`. :data:`ALGORITHMS` registers each algorithm once: its
agent class and its training loop.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch

from agents.base import MultiTaskAgent
from agents.ppo import MultiTaskPPO
from agents.sac import MultiTaskSAC
from envs import EnvConfig, MultiTaskVectorEnv, make_envs
from launch.config import TrainConfig
from launch.ppo_trainer import PPOTrainer
from launch.sac_trainer import SACTrainer
from launch.stop import StopRequest
from launch.trainer import Trainer
from mtrl.seeding import RunSeeds


class Algorithm(NamedTuple):
    agent: type[MultiTaskAgent]
    trainer: type[Trainer]


ALGORITHMS: dict[str, Algorithm] = {
    "sac": Algorithm(MultiTaskSAC, SACTrainer),
    "ppo": Algorithm(MultiTaskPPO, PPOTrainer),
}


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU; ``cuda`` without CUDA is refused with a one-line error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available; use --device cpu or auto")
    return torch.device(device)


def seed_globals(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (the networks' initialisation draws from torch's)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_agent(
    config: TrainConfig,
    obs_dim: int,
    action_dim: int,
    num_tasks: int,
    device: torch.device,
    seeds: RunSeeds | None = None,
    action_low: np.ndarray | None = None,
    action_high: np.ndarray | None = None,
) -> MultiTaskAgent:
    """The ``config.algo`` agent with one balancer per balanced network, each seeded from the run's seeds.

    ``action_low`` and ``action_high`` (``[action_dim]``, the environments' ``action_low`` and
    ``action_high``) are the action box the agent acts in; not given, it is ``[-1, 1]`` (Meta-World's).
    """
    seeds = seeds or RunSeeds.from_seed(config.seed)
    agent_class = ALGORITHMS[config.algo].agent
    agent_config = getattr(config, config.algo)
    low = -np.ones(action_dim, dtype=np.float32) if action_low is None else action_low
    high = np.ones(action_dim, dtype=np.float32) if action_high is None else action_high
    if np.shape(low) != (action_dim,) or np.shape(high) != (action_dim,):
        raise ValueError(f"the action box needs [{action_dim}] bounds, got {np.shape(low)} and {np.shape(high)}")
    return agent_class(
        obs_dim,
        low,
        high,
        num_tasks,
        agent_config,
        balancers={name: config.balancer.build(num_tasks, seed=seeds.balancer(name)) for name in agent_class.BALANCED_NETWORKS},
        device=device,
        seed=seeds["agent"],
        total_updates=config.total_updates(num_envs=num_tasks * config.env.envs_per_task),
    )


def make_trainer(
    config: TrainConfig,
    run_dir: Path,
    resume: dict[str, Any] | None = None,
    stop: StopRequest | None = None,
    build_envs: Callable[[EnvConfig, int], MultiTaskVectorEnv] = make_envs,
) -> Trainer:
    """The trainer of ``config.algo`` with its environments and agent, optionally continuing from a checkpoint's payload.

    ``build_envs(env_config, seed)`` builds the training and the evaluation environments (tests
    give :func:`envs.testing.make_scripted_envs`). The evaluation environments are one per task,
    with the training environments' goals (the seed is the same), built at the first evaluation.
    """
    device = resolve_device(config.device)
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    seeds = RunSeeds.from_seed(config.seed)
    seed_globals(seeds["global"])
    envs = build_envs(config.env, seeds.envs)
    try:
        agent = build_agent(config, envs.obs_dim, envs.action_dim, envs.num_tasks, device, seeds)
        trainer_class = ALGORITHMS[config.algo].trainer
        eval_envs = lambda: build_envs(dataclasses.replace(config.env, envs_per_task=1), seeds.envs)  # noqa: E731
        return trainer_class(config, run_dir, envs, agent, seeds, eval_envs, resume, stop)
    except BaseException:
        envs.close()
        raise
