"""The PPO loop: collect a rollout of every environment, update on it, bookkeeping between rollouts.

A rollout is ``ppo.rollout_steps`` vector steps, then the PPO update on it. Logging, evaluation
and checkpoints happen between rollouts (at the first rollout boundary after they are due); only a
stop signal checkpoints inside a rollout, at an episode boundary, with the steps collected so far.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agents.ppo import MultiTaskPPO
from launch.trainer import Trainer
from mtrl.logging import Progress


class PPOTrainer(Trainer):
    """Multi-task PPO: collect a rollout of every environment, update on it, bookkeeping between rollouts.

    The agent's collector (:meth:`agents.ppo.MultiTaskPPO.collector`) owns the rollout: it samples
    the actions (clipped to the action box by the agent; the rollout keeps the raw samples, whose
    log-probabilities are what the update compares against), stores the value of the real final
    observation where an episode ends (the truncation bootstrap) and the value after the last step.
    This loop steps the environments and checks the actions they get.
    """

    algo = "ppo"
    agent: MultiTaskPPO

    def _build_state(self) -> None:
        self.collector = self.agent.collector(self.envs_per_task)

    def _train(self, progress: Progress) -> None:
        obs = self.envs.reset()  # [N, obs_dim]
        while self.global_step < self.config.total_steps:
            obs = self._collect_rollout(obs, progress)
            metrics = self.agent.update(self.collector.finish(self._task_tensor(obs)))
            self._log_evaluate_checkpoint(metrics, progress)

    def _collect_rollout(self, obs: np.ndarray, progress: Progress) -> np.ndarray:
        """Fill the rollout from ``obs`` on; returns the observations after its last step.

        A resumed run may start with a partly filled buffer (a stop checkpointed at an episode
        boundary inside the rollout). A stop is checked after every step for the same reason: it
        never waits for the end of a long rollout.
        """
        envs = self.envs
        while not self.collector.full:
            action = self.collector.act(self._task_tensor(obs))  # [T, E, A] in the action box
            step = envs.step(self._finite_actions(action.reshape(envs.num_envs, -1).cpu().numpy()))
            self.collector.record(
                reward=self._task_tensor(step.reward),  # [T, E]
                terminated=self._task_tensor(step.terminated),  # [T, E]
                truncated=self._task_tensor(step.truncated),  # [T, E]
                final_obs=self._task_tensor(step.final_obs),  # [T, E, obs_dim]
            )
            obs = step.obs
            self._record_step(step, progress)
            if self.stop.requested:
                self._stop_here({})
        return obs

    def _algo_state(self) -> dict[str, Any]:
        return {"rollout": self.collector.state_dict()}

    def _load_algo_state(self, payload: dict[str, Any]) -> None:
        self.collector.load_state_dict(payload["rollout"])
