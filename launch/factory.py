"""The composition root of a run: device, seeds, environments, agent and trainer, built from a config.

:func:`make_trainer` is the one place a training run is assembled; :mod:`launch.evaluate` builds
the same agent with :func:`build_agent`. :data:`ALGORITHMS` registers each algorithm once: its
agent class and its training loop.
"""

from __future__ import annotations

import dataclasses
import random
import sys
import warnings
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
from launch.update_path import auto_update_graph
from mtrl.balancers import Balancer, HostSyncWarning
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
    config: TrainConfig, envs: MultiTaskVectorEnv, device: torch.device, seeds: RunSeeds | None = None
) -> MultiTaskAgent:
    """The ``config.algo`` agent for ``envs`` (their observations, with the one-hot task id when
    ``config.env.one_hot``, action box and tasks), with one
    balancer per balanced network, each seeded from the run's seeds, and the update path that
    ``update_graph auto`` means for this run (:func:`launch.update_path.auto_update_graph`)."""
    seeds = seeds or RunSeeds.from_seed(config.seed)
    agent_class = ALGORITHMS[config.algo].agent
    num_tasks = envs.num_tasks
    balancers = build_balancers(config, num_tasks, seeds, agent_class.BALANCED_NETWORKS)
    total_updates = config.total_updates(num_envs=num_tasks * config.env.envs_per_task)
    return agent_class(
        envs.obs_dim,
        envs.action_low,
        envs.action_high,
        num_tasks,
        config.algorithm,
        balancers=balancers,
        device=device,
        seed=seeds["agent"],
        total_updates=total_updates,
        auto_update_graph=auto_update_graph(config.algo, device, total_updates, balancers.values()),
        one_hot_in_obs=config.env.one_hot,
        samples_per_task=config.samples_per_task(),
    )


def make_eval_envs(config: TrainConfig, build_envs: Callable[[EnvConfig, int], MultiTaskVectorEnv] | None = None) -> MultiTaskVectorEnv:
    """The evaluation environments of a run: one per task, with the training environments' goals (the seed is the same)."""
    return (build_envs or make_envs)(dataclasses.replace(config.env, envs_per_task=1), RunSeeds.from_seed(config.seed).envs)


def make_trainer(
    config: TrainConfig,
    run_dir: Path,
    resume: dict[str, Any] | None = None,
    stop: StopRequest | None = None,
    build_envs: Callable[[EnvConfig, int], MultiTaskVectorEnv] | None = None,
) -> Trainer:
    """The trainer of ``config.algo`` with its environments and agent, optionally continuing from a checkpoint's payload.

    ``build_envs(env_config, seed)`` builds the training and the evaluation environments (default
    :func:`envs.make_envs`; tests give :func:`envs.testing.make_scripted_envs`); the evaluation
    environments (:func:`make_eval_envs`) are built at the first evaluation.
    """
    device = resolve_device(config.device)
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    seeds = RunSeeds.from_seed(config.seed)
    seed_globals(seeds["global"])
    envs = (build_envs or make_envs)(config.env, seeds.envs)
    try:
        agent = build_agent(config, envs, device, seeds)
        trainer_class = ALGORITHMS[config.algo].trainer
        return trainer_class(config, run_dir, envs, agent, seeds, lambda: make_eval_envs(config, build_envs), resume, stop)
    except BaseException:
        envs.close()
        raise


def build_balancers(config: TrainConfig, num_tasks: int, seeds: RunSeeds, networks: tuple[str, ...]) -> dict[str, Balancer]:
    """One balancer per network, each seeded from the run's seeds; a balancer that synchronises with
    the host every step (:class:`mtrl.balancers.HostSyncWarning`) is said once, in one line on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        balancers = {name: config.balancer.build(num_tasks, seed=seeds.balancer(name)) for name in networks}
    said = set()
    for warning in caught:
        if not issubclass(warning.category, HostSyncWarning):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        elif str(warning.message) not in said:
            said.add(str(warning.message))
            print(f"warning: {warning.message}", file=sys.stderr)
    return balancers
