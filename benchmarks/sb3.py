"""stable-baselines3 SAC and PPO set up as a ``mtrl-bench-learning`` training config sets up ours,
trained and evaluated by one protocol (the ``sb3`` and ``ppo-sb3`` parts).

Each model reads its sizes and hyperparameters from the same :class:`launch.config.TrainConfig`
that our trainer runs, on the config's one Meta-World task, and is evaluated on the environments
our trainer evaluates on (:func:`launch.factory.make_eval_envs`), after every ``eval_every`` environment steps, with
``final_eval_episodes`` at the end.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from envs import evaluate
from launch.config import PPOTrainConfig, SACTrainConfig, TrainConfig
from launch.factory import make_eval_envs

importlib.import_module("metaworld")  # registers Meta-World's gymnasium environments (Meta-World/MT1)


def _task_env(config: TrainConfig, seed: int) -> gym.Env:
    """Meta-World's own single-task environment of the config's task, with the config's episode length."""
    return gym.make("Meta-World/MT1", env_name=config.env.benchmark, seed=seed, max_episode_steps=config.env.max_episode_steps)


def learn_and_evaluate(model: BaseAlgorithm, policy: Callable[[np.ndarray], np.ndarray], config: TrainConfig) -> dict[str, Any]:
    """Train ``model`` for ``config.total_steps`` environment steps, evaluating ``policy`` after every ``eval_every``.

    The evaluation environments restart from the same random state at every evaluation, as our
    trainer's do; steps per second count training time only. The model's environment is closed.
    """
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    envs = make_eval_envs(config)
    eval_state = envs.get_rng_state()
    curve, train_seconds = [], 0.0
    try:
        while model.num_timesteps < config.total_steps:
            chunk = min(config.eval_every, config.total_steps - model.num_timesteps)
            started = time.perf_counter()
            model.learn(chunk, reset_num_timesteps=False)
            train_seconds += time.perf_counter() - started
            envs.set_rng_state(eval_state)
            episodes = config.final_eval_episodes if model.num_timesteps >= config.total_steps else config.eval_episodes
            result = evaluate(policy, envs, episodes)
            curve.append({"step": model.num_timesteps, "success_rate": result.success_rate, "episodes_per_task": episodes})
    finally:
        envs.close()
        model.get_env().close()
    return {
        "train_sps": round(model.num_timesteps / train_seconds, 1),
        "final_success_rate": curve[-1]["success_rate"],
        "curve": curve,
    }


def train_sac(config: SACTrainConfig) -> dict[str, Any]:
    """stable-baselines3 SAC with the network sizes, batch size, update ratio, learning rate, warm-up and initial temperature of ``config``."""
    sac, loop = config.sac, config.replay
    model = SAC(
        "MlpPolicy",
        _task_env(config, config.seed),
        learning_rate=sac.critic_optimizer.lr,
        buffer_size=loop.buffer_capacity_per_task,
        learning_starts=loop.warmup_steps,
        batch_size=loop.batch_size_per_task,
        tau=sac.tau,
        gamma=sac.gamma,
        train_freq=1,
        gradient_steps=int(loop.updates_per_step),
        ent_coef=f"auto_{sac.init_temperature}",
        policy_kwargs={"net_arch": list(sac.hidden_dims)},
        seed=config.seed,
        device="cpu",
    )
    return learn_and_evaluate(model, lambda obs: model.predict(obs, deterministic=True)[0], config)


def train_ppo(config: PPOTrainConfig) -> dict[str, Any]:
    """stable-baselines3 PPO with the networks, environments, rollouts, optimisation and observation normalisation of ``config``."""
    ppo = config.ppo
    envs_per_task = config.env.envs_per_task
    venv = VecNormalize(
        DummyVecEnv([lambda index=index: _task_env(config, config.seed + index) for index in range(envs_per_task)]),
        norm_obs=True,
        norm_reward=False,
        clip_obs=ppo.obs_clip,
        gamma=ppo.gamma,
    )
    model = PPO(
        "MlpPolicy",
        venv,
        learning_rate=ppo.actor_optimizer.lr,
        n_steps=ppo.rollout_steps,
        batch_size=ppo.rollout_steps * envs_per_task // ppo.minibatches,
        n_epochs=ppo.epochs,
        gamma=ppo.gamma,
        gae_lambda=ppo.gae_lambda,
        clip_range=ppo.clip_coef,
        ent_coef=ppo.entropy_coef,
        max_grad_norm=ppo.actor_optimizer.max_grad_norm,
        target_kl=ppo.target_kl,
        normalize_advantage=ppo.normalize_advantages,
        policy_kwargs={
            "net_arch": {"pi": list(ppo.hidden_dims), "vf": list(ppo.hidden_dims)},
            "activation_fn": torch.nn.ReLU,
            "log_std_init": ppo.init_log_std,
        },
        seed=config.seed,
        device="cpu",
    )
    return learn_and_evaluate(model, lambda obs: model.predict(venv.normalize_obs(obs), deterministic=True)[0], config)
