"""The multi-task SAC training loop: environments, agent, replay, evaluation, logs and checkpoints.

One iteration steps every environment once (a vector step). The simulators run while the learner
updates: ``step_async(actions)``, then the gradient updates on the replay as it was, then
``step_wait()``, so an iteration costs about the larger of the two, not their sum.

Checkpoints are taken at the first step after each ``checkpoint_every`` at which every
environment has just finished an episode (Meta-World episodes all have the same length, so with
``terminate_on_success`` off this is every episode end). The environments' state is then only
their RNG, and a resumed run continues exactly as the uninterrupted run would have on the CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from agents.sac import MultiTaskSAC
from envs import EvalResult, MultiTaskVectorEnv, evaluate, make_envs
from launch.config import TrainConfig
from mtrl.checkpoint import capture_rng_states, list_checkpoints, restore_rng_states, save_checkpoint
from mtrl.logging import Progress, RunLogger
from mtrl.replay import MultiTaskReplay

CHECKPOINT_DIR = "checkpoints"
EVAL_DIR = "eval"


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; the run stops with its last good checkpoint intact."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available; use --device cpu or auto")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_agent(config: TrainConfig, obs_dim: int, action_dim: int, num_tasks: int, device: torch.device) -> MultiTaskSAC:
    """The agent with its two balancers (critic and actor), each seeded from the run's seed."""
    return MultiTaskSAC(
        obs_dim,
        action_dim,
        num_tasks,
        config.sac,
        critic_balancer=config.balancer.build(num_tasks, seed=config.seed + 101),
        actor_balancer=config.balancer.build(num_tasks, seed=config.seed + 102),
        device=device,
        seed=config.seed + 103,
    )


def policy_function(agent: MultiTaskSAC, num_tasks: int, deterministic: bool = True):
    """Wrap the agent as ``numpy obs [N, obs_dim] -> numpy actions [N, A]`` (envs ordered by task)."""

    def policy(obs: np.ndarray) -> np.ndarray:
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=agent.device).reshape(num_tasks, -1, obs.shape[-1])
        return agent.act(obs_t, deterministic=deterministic).reshape(obs.shape[0], -1).cpu().numpy()

    return policy


def scalars(metrics: dict[str, Tensor], task_names: list[str]) -> dict[str, float]:
    """Device metrics to floats with one host sync: per-task ``[T]`` values get a mean and a tag per task."""
    if not metrics:
        return {}
    flat = torch.cat([v.detach().reshape(-1).float() for v in metrics.values()]).cpu().tolist()
    out: dict[str, float] = {}
    offset = 0
    for tag, value in metrics.items():
        size = value.numel()
        chunk = flat[offset : offset + size]
        offset += size
        if value.dim() == 0:
            out[tag] = chunk[0]
        else:
            out[tag] = sum(chunk) / size
            out |= {f"{tag}/{name}": v for name, v in zip(task_names, chunk)}
    return out


def eval_scalars(result: EvalResult, prefix: str = "eval") -> dict[str, float]:
    out = {f"{prefix}/success_rate": result.success_rate, f"{prefix}/mean_return": float(np.mean(list(result.per_task_return.values())))}
    for task, rate in result.per_task_success.items():
        out[f"{prefix}/{task}/success_rate"] = rate
        out[f"{prefix}/{task}/return"] = result.per_task_return[task]
    return out


class SACTrainer:
    """Owns everything a run needs and the loop; :meth:`run` trains until ``total_steps``."""

    def __init__(self, config: TrainConfig, run_dir: Path, resume: dict[str, Any] | None = None) -> None:
        self.config, self.run_dir = config, run_dir
        self.device = resolve_device(config.device)
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        seed_everything(config.seed)
        self.envs: MultiTaskVectorEnv = make_envs(config.env, seed=config.seed)
        self.eval_envs: MultiTaskVectorEnv | None = None
        self.task_names = list(self.envs.task_names)
        self.num_tasks = self.envs.num_tasks
        self.envs_per_task = self.envs.num_envs // self.num_tasks
        self.agent = build_agent(config, self.envs.obs_dim, self.envs.action_dim, self.num_tasks, self.device)
        self.replay = MultiTaskReplay(
            self.num_tasks, config.buffer_capacity_per_task, self.envs.obs_dim, self.envs.action_dim, self.device
        )
        self.sampler = torch.Generator(self.device).manual_seed(config.seed + 104)
        self.action_rng = np.random.default_rng(config.seed + 105)
        self.global_step = 0
        self.update_credit = 0.0
        self.next_checkpoint = config.checkpoint_every or math.inf
        self.next_eval = config.eval_every or math.inf
        self.next_log = config.log_every
        self.eval_seconds = 0.0  # wall time spent evaluating, so benchmarks can report training SPS alone
        self.episode_return = np.zeros(self.envs.num_envs)
        self.episode_success = np.zeros(self.envs.num_envs, dtype=bool)
        if resume is not None:
            self._load(resume)
        self.logger = RunLogger(run_dir, tensorboard=config.tensorboard, resume_step=self.global_step if resume else None)

    # ----------------------------------------------------------------------------- the loop
    def run(self) -> EvalResult:
        config, envs = self.config, self.envs
        progress = Progress(config.total_steps, self.global_step, enabled=config.progress)
        obs = envs.reset()  # [N, obs_dim]
        policy = policy_function(self.agent, self.num_tasks, deterministic=False)
        metrics: dict[str, Tensor] = {}
        ended = np.ones(envs.num_envs, dtype=bool)  # a fresh or resumed run starts at an episode boundary
        window_start, window_step = time.perf_counter(), self.global_step
        try:
            while self.global_step < config.total_steps:
                if self.global_step < config.warmup_steps:
                    actions = self.action_rng.uniform(envs.action_low, envs.action_high, (envs.num_envs, envs.action_dim))
                else:
                    actions = policy(obs)
                envs.step_async(actions.astype(np.float32))
                metrics = self._learn() or metrics  # overlaps with the simulators
                step = envs.step_wait()
                ended = step.terminated | step.truncated  # [N]
                real_next_obs = np.where(ended[:, None], step.final_obs, step.obs)
                self._store(obs, actions, step.reward, real_next_obs, step.terminated)
                obs = step.obs
                self.global_step += envs.num_envs
                progress.update(self.global_step)
                self._track_episodes(step.reward, step.success, ended)
                if self.global_step >= self.next_log:
                    sps = (self.global_step - window_step) / max(time.perf_counter() - window_start, 1e-9)
                    self._log_training(metrics, sps)
                    window_start, window_step = time.perf_counter(), self.global_step
                if self.global_step >= self.next_eval:
                    self.next_eval += config.eval_every
                    progress.set_success(self._evaluate(config.eval_episodes).success_rate)
                if self.global_step >= self.next_checkpoint and ended.all():
                    self.save_checkpoint()
                    self.next_checkpoint = (self.global_step // config.checkpoint_every + 1) * config.checkpoint_every
            if config.checkpoint_every and ended.all() and not self._has_checkpoint_at(self.global_step):
                self.save_checkpoint()
            final = self._evaluate(config.final_eval_episodes, name="final")
            progress.set_success(final.success_rate)
            return final
        finally:
            progress.close()
            self.close()

    def _learn(self) -> dict[str, Tensor] | None:
        """The gradient updates of one iteration (none during warm-up)."""
        if self.global_step < self.config.warmup_steps or len(self.replay) == 0:
            return None
        self.update_credit += self.config.updates_per_step
        metrics = None
        while self.update_credit >= 1.0:
            self.update_credit -= 1.0
            metrics = self.agent.update(self.replay.sample(self.config.batch_size_per_task, self.sampler))
        return metrics

    def _store(self, obs: np.ndarray, actions: np.ndarray, reward: np.ndarray, next_obs: np.ndarray, terminated: np.ndarray) -> None:
        T, E = self.num_tasks, self.envs_per_task
        as_tensor = lambda x, *shape: torch.as_tensor(np.asarray(x, dtype=np.float32)).reshape(T, E, *shape)  # noqa: E731
        self.replay.add(
            as_tensor(obs, -1), as_tensor(actions, -1), as_tensor(reward), as_tensor(next_obs, -1), as_tensor(terminated)
        )

    def _track_episodes(self, reward: np.ndarray, success: np.ndarray, ended: np.ndarray) -> None:
        self.episode_return += reward
        self.episode_success |= success.astype(bool)
        if ended.any():
            self.logger.log(
                self.global_step,
                {
                    "charts/episodic_return": float(self.episode_return[ended].mean()),
                    "charts/episodic_success": float(self.episode_success[ended].mean()),
                },
            )
            self.episode_return[ended] = 0.0
            self.episode_success[ended] = False

    def _log_training(self, metrics: dict[str, Tensor], sps: float) -> None:
        self.next_log += self.config.log_every
        values = scalars(metrics, self.task_names)
        bad = [tag for tag, v in values.items() if tag.startswith("losses/") and not math.isfinite(v)]
        if bad:
            last = list_checkpoints(self.run_dir / CHECKPOINT_DIR)
            where = last[-1] if last else "none"
            raise NonFiniteLossError(f"non-finite {bad[0]} at step {self.global_step}; last good checkpoint: {where}")
        self.logger.log(self.global_step, {"charts/SPS": sps, **values})

    def _evaluate(self, episodes_per_task: int, name: str | None = None) -> EvalResult:
        """Evaluate on separate environments, reset to the same RNG state every time (comparable, resumable)."""
        started = time.perf_counter()
        if self.eval_envs is None:
            self.eval_envs = make_envs(dataclasses.replace(self.config.env, envs_per_task=1), seed=self.config.seed)
            self._eval_rng_state = self.eval_envs.get_rng_state()
        self.eval_envs.set_rng_state(self._eval_rng_state)
        result = evaluate(policy_function(self.agent, self.num_tasks), self.eval_envs, episodes_per_task)
        self.logger.log(self.global_step, eval_scalars(result))
        out = self.run_dir / EVAL_DIR
        out.mkdir(exist_ok=True)
        record = {"step": self.global_step, "episodes_per_task": episodes_per_task, **result.to_dict()}
        (out / f"{name or f'step_{self.global_step:012d}'}.json").write_text(json.dumps(record, indent=2) + "\n")
        self.eval_seconds += time.perf_counter() - started
        return result

    # ----------------------------------------------------------------------------- checkpoints
    def _has_checkpoint_at(self, step: int) -> bool:
        return any(p.name.endswith(f"{step:012d}") for p in list_checkpoints(self.run_dir / CHECKPOINT_DIR))

    def save_checkpoint(self) -> Path:
        payload = {
            "config": self.config,
            "global_step": self.global_step,
            "update_credit": self.update_credit,
            "next_eval": self.next_eval,
            "next_log": self.next_log,
            "next_checkpoint": self.next_checkpoint,
            "agent": self.agent.training_state(),
            "replay": self.replay.state_dict(),
            "sampler": self.sampler.get_state(),
            "action_rng": self.action_rng.bit_generator.state,
            "global_rng": capture_rng_states(),
            "envs_rng": self.envs.get_rng_state(),
        }
        return save_checkpoint(self.run_dir / CHECKPOINT_DIR, self.global_step, payload, keep=self.config.keep_checkpoints)

    def _load(self, payload: dict[str, Any]) -> None:
        self.global_step = payload["global_step"]
        self.update_credit = payload["update_credit"]
        self.next_eval, self.next_log = payload["next_eval"], payload["next_log"]
        self.next_checkpoint = payload["next_checkpoint"]
        self.agent.load_training_state(payload["agent"])
        self.replay.load_state_dict(payload["replay"])
        self.sampler.set_state(payload["sampler"])
        self.action_rng.bit_generator.state = payload["action_rng"]
        restore_rng_states(payload["global_rng"])
        self.envs.set_rng_state(payload["envs_rng"])

    def close(self) -> None:
        self.envs.close()
        if self.eval_envs is not None:
            self.eval_envs.close()
        self.logger.close()
