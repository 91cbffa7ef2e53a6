"""The SAC loop: one vector step, the gradient updates overlapping it, store, bookkeeping.

One iteration steps every environment once (a vector step). The simulators run while the learner
updates: ``step_async(actions)``, then the gradient updates on the replay as it was, then
``step_wait()``, so an iteration costs about the larger of the two, not their sum.

Per vector step one copy crosses each way: the policy's actions come to the host once, and the
step's observations, final observations, actions, rewards and flags go to the device in one
packed copy (:class:`mtrl.transfer.StepUpload`), from which the replay stores the transition and
the policy takes its next input.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from agents.sac import MultiTaskSAC
from launch.config import SACTrainConfig
from launch.trainer import Trainer
from mtrl.logging import Progress
from mtrl.replay import MultiTaskReplay
from mtrl.transfer import StepUpload


def step_fields(obs_dim: int, action_dim: int) -> dict[str, tuple[int, ...]]:
    """What one vector step uploads for the replay and the next policy input (:class:`mtrl.transfer.StepUpload` fields)."""
    return {"obs": (obs_dim,), "next_obs": (obs_dim,), "action": (action_dim,), "reward": (), "terminated": ()}


class SACTrainer(Trainer):
    """Multi-task SAC: one vector step, the gradient updates overlapping it, store, bookkeeping."""

    algo = "sac"
    agent: MultiTaskSAC
    config: SACTrainConfig

    def _build_state(self) -> None:
        config = self.config
        self.replay = MultiTaskReplay(
            self.num_tasks, config.replay.buffer_capacity_per_task, self.envs.obs_dim, self.envs.action_dim, self.device
        )
        self.sampler = torch.Generator(self.device).manual_seed(self.seeds["replay"])
        self.action_rng = np.random.default_rng(self.seeds["warmup"])
        self.update_credit = 0.0
        self.upload = StepUpload(step_fields(self.envs.obs_dim, self.envs.action_dim), self.num_tasks, self.envs_per_task, self.device)

    def _train(self, progress: Progress) -> None:
        config, envs = self.config, self.envs
        obs = self._task_tensor(envs.reset())  # [T, E, obs_dim] on the device
        metrics: dict[str, Tensor] = {}
        while self.global_step < config.total_steps:
            if self.global_step < config.replay.warmup_steps:
                actions = self.action_rng.uniform(envs.action_low, envs.action_high, (envs.num_envs, envs.action_dim))
            else:
                actions = self._host_actions(self.agent.act(obs))  # [N, A]
            actions = actions.astype(np.float32, copy=False)
            envs.step_async(actions)
            metrics = self._learn() or metrics  # overlaps with the simulators
            step = envs.step_wait()
            ended = step.terminated | step.truncated  # [N]
            real_next_obs = np.where(ended[:, None], step.final_obs, step.obs)
            sent = self.upload(
                obs=step.obs, next_obs=real_next_obs, action=actions, reward=step.reward, terminated=step.terminated
            )  # [T, E, ...] each
            self.replay.add(obs, sent["action"], sent["reward"], sent["next_obs"], sent["terminated"])
            obs = sent["obs"]
            self._record_step(step, progress)
            self._log_evaluate_checkpoint(metrics, progress)

    def _learn(self) -> dict[str, Tensor] | None:
        """The gradient updates of one iteration (none during warm-up)."""
        if self.global_step < self.config.replay.warmup_steps or len(self.replay) == 0:
            return None
        self.update_credit += self.config.replay.updates_per_step
        metrics = None
        while self.update_credit >= 1.0:
            self.update_credit -= 1.0
            metrics = self.agent.update(self.replay.sample(self.config.replay.batch_size_per_task, self.sampler))
        return metrics

    def _algo_state(self) -> dict[str, Any]:
        return {
            "update_credit": self.update_credit,
            "replay": self.replay.state_dict(),
            "sampler": self.sampler.get_state(),
            "action_rng": self.action_rng.bit_generator.state,
        }

    def _load_algo_state(self, payload: dict[str, Any]) -> None:
        self.update_credit = payload["update_credit"]
        self.replay.load_state_dict(payload["replay"])
        self.sampler.set_state(payload["sampler"])
        self.action_rng.bit_generator.state = payload["action_rng"]
