"""The PPO loop: collect a rollout of every environment, update on it, bookkeeping between rollouts.

A rollout is ``ppo.rollout_steps`` vector steps, then the PPO update on it. Logging, evaluation
and checkpoints happen between rollouts (at the first rollout boundary after they are due); only a
stop signal checkpoints inside a rollout, at an episode boundary, with the steps collected so far.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from agents.ppo import MultiTaskPPO, RolloutBuffer
from launch.trainer import Trainer
from mtrl.logging import Progress


class PPOTrainer(Trainer):
    """Multi-task PPO: collect a rollout of every environment, update on it, bookkeeping between rollouts.

    Sampled actions are clipped to the action box before stepping; the rollout keeps the raw
    samples (their log-probabilities are what the update compares against). Where an episode ends,
    the critic's value of the real final observation is stored for the truncation bootstrap.
    """

    algo = "ppo"
    agent: MultiTaskPPO

    def _build_state(self) -> None:
        envs = self.envs
        self.rollout = RolloutBuffer(
            self.config.ppo.rollout_steps, self.num_tasks, self.envs_per_task, envs.obs_dim, envs.action_dim, self.device
        )

    def _train(self, progress: Progress) -> None:
        obs = self.envs.reset()  # [N, obs_dim]
        while self.global_step < self.config.total_steps:
            obs = self._collect_rollout(obs, progress)
            last_value = self.agent.value(self._task_tensor(obs))  # [T, E]
            metrics = self.agent.update(self.rollout.finish(last_value))
            self._log_evaluate_checkpoint(metrics, progress)

    def _collect_rollout(self, obs: np.ndarray, progress: Progress) -> np.ndarray:
        """Fill the rollout buffer from ``obs`` on; returns the observations after its last step.

        A resumed run may start with a partly filled buffer (a stop checkpointed at an episode
        boundary inside the rollout). A stop is checked after every step for the same reason: it
        never waits for the end of a long rollout.
        """
        envs = self.envs
        while not self.rollout.full:
            obs_t = self._task_tensor(obs)  # [T, E, obs_dim]
            action, log_prob, value = self.agent.explore(obs_t)  # [T, E, A], [T, E], [T, E]
            env_action = self._finite_actions(action.reshape(envs.num_envs, -1).cpu().numpy()).clip(envs.action_low, envs.action_high)
            step = envs.step(env_action)
            ended = step.terminated | step.truncated  # [N]
            final_value = self.agent.value(self._task_tensor(step.final_obs)) if ended.any() else torch.zeros_like(value)
            self.rollout.add(
                obs=obs_t,
                action=action,
                log_prob=log_prob,
                value=value,
                reward=self._task_tensor(step.reward),
                terminated=self._task_tensor(step.terminated),
                ended=self._task_tensor(ended),
                final_value=final_value,
            )
            obs = step.obs
            self._record_step(step, progress)
            if self.stop.requested:
                self._stop_here({})
        return obs

    def _algo_state(self) -> dict[str, Any]:
        return {"rollout": self.rollout.state_dict()}

    def _load_algo_state(self, payload: dict[str, Any]) -> None:
        self.rollout.load_state_dict(payload["rollout"])
