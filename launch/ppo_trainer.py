"""The PPO loop: collect a rollout of every environment, update on it, bookkeeping between rollouts.

A rollout is ``ppo.rollout_steps`` vector steps, then the PPO update on it. Logging, evaluation
and checkpoints happen between rollouts (at the first rollout boundary after they are due); only a
stop signal checkpoints inside a rollout, at an episode boundary, with the steps collected so far.

Per vector step one copy crosses each way: the sampled actions come to the host once, and the
step's observations, rewards, flags and final observations go to the device in one packed copy
(:class:`mtrl.transfer.StepUpload`); whether an episode ended is read from the host's flags.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from agents.ppo import MultiTaskPPO
from launch.trainer import Trainer
from mtrl.logging import Progress
from mtrl.transfer import StepUpload


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
        obs_dim = (self.envs.obs_dim,)
        fields = {"obs": obs_dim, "reward": (), "terminated": (), "truncated": (), "final_obs": obs_dim}
        self.upload = StepUpload(fields, self.num_tasks, self.envs_per_task, self.device)

    def _train(self, progress: Progress) -> None:
        obs = self._task_tensor(self.envs.reset())  # [T, E, obs_dim] on the device
        while self.global_step < self.config.total_steps:
            obs = self._collect_rollout(obs, progress)
            metrics = self.agent.update(self.collector.finish(obs))
            self._log_evaluate_checkpoint(metrics, progress)

    def _collect_rollout(self, obs: Tensor, progress: Progress) -> Tensor:
        """Fill the rollout from ``obs`` (``[T, E, obs_dim]``) on; returns the observations after its last step.

        A resumed run may start with a partly filled buffer (a stop checkpointed at an episode
        boundary inside the rollout). A stop is checked after every step for the same reason: it
        never waits for the end of a long rollout.
        """
        envs = self.envs
        while not self.collector.full:
            step = envs.step(self._host_actions(self.collector.act(obs)))  # actions [T, E, A] in the action box
            sent = self.upload(
                obs=step.obs, reward=step.reward, terminated=step.terminated, truncated=step.truncated, final_obs=step.final_obs
            )  # [T, E, ...] each
            self.collector.record(
                reward=sent["reward"],
                terminated=sent["terminated"],
                truncated=sent["truncated"],
                final_obs=sent["final_obs"],
                any_ended=bool((step.terminated | step.truncated).any()),
            )
            obs = sent["obs"]
            self._record_step(step, progress)
            if self.stop.requested:
                self._stop_here({})
        return obs

    def _algo_state(self) -> dict[str, Any]:
        return {"rollout": self.collector.state_dict()}

    def _load_algo_state(self, payload: dict[str, Any]) -> None:
        self.collector.load_state_dict(payload["rollout"])
