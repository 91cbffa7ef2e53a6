"""The SAC loop: one vector step, the gradient updates overlapping it, store, bookkeeping.

One iteration steps every environment once (a vector step). The simulators run while the learner
updates: ``step_async(actions)``, then the gradient updates on the replay as it was, then
``step_wait()``, so an iteration costs about the larger of the two, not their sum.

Per vector step one copy crosses each way: the policy's actions come to the host once, and the
step's observations, final observations, actions, rewards and flags go to the device in one
packed copy (:class:`mtrl.transfer.StepUpload`), from which the replay stores the transition and
the policy takes its next input.

:meth:`SACTrainer.iteration` is that one vector step, made of :meth:`SACTrainer.act`,
:meth:`SACTrainer.learn` and :meth:`SACTrainer.store`; the training loop calls it, then logs,
evaluates and checkpoints where due, and mtrl-bench-overlap times it (:data:`ITERATION_PHASES`).
The loop's settings are the run's ``replay`` section (:class:`launch.replay_loop.ReplayLoopConfig`).

With ``sac.reward_normalization per-task`` the loop also keeps every environment's running episode
(:class:`mtrl.reward_normalization.EpisodeReturns`, on the host, from the step's host arrays) and
hands the agent each task's return scale when episodes end: one small upload at episode ends.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from agents.sac import MultiTaskSAC
from envs import StepResult
from launch.config import SACTrainConfig
from launch.trainer import Trainer
from mtrl.logging import Progress
from mtrl.replay import MultiTaskReplay
from mtrl.reward_normalization import EpisodeReturns
from mtrl.transfer import StepUpload


def step_fields(obs_dim: int, action_dim: int) -> dict[str, tuple[int, ...]]:
    """What one vector step uploads for the replay and the next policy input (:class:`mtrl.transfer.StepUpload` fields)."""
    return {"obs": (obs_dim,), "next_obs": (obs_dim,), "action": (action_dim,), "reward": (), "terminated": ()}


ITERATION_PHASES = ("policy", "step_async_and_update", "wait", "store")
"""The parts of :meth:`SACTrainer.iteration`, in order: the actions (the policy's, or random ones in the
warm-up), ``step_async`` and the updates overlapping it, ``step_wait``, and storing the step. The
iteration's ``mark`` is called with each name as that part ends (mtrl-bench-overlap times them)."""


def _no_mark(phase: str) -> None:
    """The default ``mark`` of :meth:`SACTrainer.iteration`: nothing."""


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
        self.obs: Tensor | None = None  # [T, E, obs_dim] on the device: what the next iteration acts on (set by reset)
        self.episode_returns: EpisodeReturns | None = None  # per-task reward normalisation's running episodes
        if config.sac.reward_normalization == "per-task":
            task_of_env = np.arange(self.envs.num_envs) // self.envs_per_task  # environments are ordered by task
            self.episode_returns = EpisodeReturns(task_of_env, config.sac.gamma, config.env.max_episode_steps)

    def _train(self, progress: Progress) -> None:
        self.reset()
        metrics: dict[str, Tensor] = {}
        while self.global_step < self.config.total_steps:
            metrics = self.iteration(progress) or metrics
            self._log_evaluate_checkpoint(metrics, progress)

    def reset(self) -> None:
        """Reset the environments: their observations are the next iteration's input."""
        self.obs = self._task_tensor(self.envs.reset())  # [T, E, obs_dim]

    def iteration(self, progress: Progress, mark: Callable[[str], None] = _no_mark) -> dict[str, Tensor] | None:
        """One vector step of the loop: act on :attr:`obs`, start the simulators, run the updates due
        while they step, collect and store the step, and count it. ``mark(phase)`` is called as each
        of :data:`ITERATION_PHASES` ends. Returns the last update's metrics (None when none ran)."""
        envs = self.envs
        actions = self.act()  # [N, A]
        mark("policy")
        envs.step_async(actions)
        metrics = self.learn()  # overlaps with the simulators
        mark("step_async_and_update")
        step = envs.step_wait()
        mark("wait")
        self.store(actions, step)
        mark("store")
        self._record_step(step, progress)
        return metrics

    def act(self) -> np.ndarray:
        """The actions ``[N, A]`` (float32) for :attr:`obs`: random during the warm-up, else the stochastic policy's."""
        if self.global_step < self.config.replay.warmup_steps:
            actions = self.random_actions()
        else:
            actions = self._host_actions(self.agent.act(self.obs))
        return actions.astype(np.float32, copy=False)

    def random_actions(self) -> np.ndarray:
        """Uniformly random actions ``[N, A]`` from the warm-up's generator."""
        envs = self.envs
        return self.action_rng.uniform(envs.action_low, envs.action_high, (envs.num_envs, envs.action_dim))

    def learn(self) -> dict[str, Tensor] | None:
        """The gradient updates one vector step pays for (none during warm-up); the last one's metrics."""
        if self.global_step < self.config.replay.warmup_steps or len(self.replay) == 0:
            return None
        self.update_credit += self.config.replay.updates_per_step
        metrics = None
        while self.update_credit >= 1.0:
            self.update_credit -= 1.0
            batch, second = self.agent.sample_batches(self.replay, self.config.replay.batch_size_per_task, self.sampler)
            metrics = self.agent.update(batch) if second is None else self.agent.update(batch, second)
        return metrics

    def store(self, actions: np.ndarray, step: StepResult) -> None:
        """Upload the step in one packed copy, store the transition from :attr:`obs` and move :attr:`obs` on.

        An environment whose episode ended stores its final observation as the next one (the step's
        ``obs`` is then the next episode's first)."""
        ended = step.terminated | step.truncated  # [N]
        real_next_obs = np.where(ended[:, None], step.final_obs, step.obs)
        sent = self.upload(
            obs=step.obs, next_obs=real_next_obs, action=actions, reward=step.reward, terminated=step.terminated
        )  # [T, E, ...] each
        self.replay.add(self.obs, sent["action"], sent["reward"], sent["next_obs"], sent["terminated"])
        self.obs = sent["obs"]
        if self.episode_returns is not None:
            finished = self.episode_returns.step(step.reward, step.terminated, step.truncated)
            if finished is not None:
                self.agent.take_in_episode_returns(*finished)

    def _algo_state(self) -> dict[str, Any]:
        state = {
            "update_credit": self.update_credit,
            "replay": self.replay.state_dict(),
            "sampler": self.sampler.get_state(),
            "action_rng": self.action_rng.bit_generator.state,
        }
        if self.episode_returns is not None:
            state["episode_returns"] = self.episode_returns.state_dict()
        return state

    def _load_algo_state(self, payload: dict[str, Any]) -> None:
        self.update_credit = payload["update_credit"]
        self.replay.load_state_dict(payload["replay"])
        self.sampler.set_state(payload["sampler"])
        self.action_rng.bit_generator.state = payload["action_rng"]
        if self.episode_returns is not None:
            self.episode_returns.load_state_dict(payload["episode_returns"])
