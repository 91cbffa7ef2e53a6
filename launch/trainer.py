"""What every training loop shares: evaluation, logs, checkpoints, the stop and the non-finite checks.

:class:`Trainer` is composed from its parts (:func:`launch.factory.make_trainer` builds them): the
environments, the agent and the run's seeds. It owns the step count, evaluation on separate
environments, episode statistics, the periodic logging (where device metrics are read back and
non-finite losses stop the run), evaluations and checkpoints, and the checkpoint payload's common
part. An algorithm's loop (:mod:`launch.sac_trainer`, :mod:`launch.ppo_trainer`) subclasses it
and adds its own state.

Checkpoints are taken at the first vector step (SAC) or rollout end (PPO) after each
``checkpoint_every`` at which every environment has just finished an episode (Meta-World episodes
all have the same length, so with ``terminate_on_success`` off this is every episode end for SAC,
and every rollout end for PPO, whose rollouts are whole episodes when checkpointing). The
environments' state is then only their RNG, and a resumed run continues exactly as the
uninterrupted run would have on the CPU.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from agents.base import MultiTaskAgent
from envs import EvalResult, MultiTaskVectorEnv, StepResult, evaluate
from launch.config import TrainConfig
from launch.run_dir import CHECKPOINT_DIR, EVAL_DIR, FINAL_EVAL_FILE, write_atomically
from launch.stop import StopRequest
from mtrl.balancers import PLUGIN_SOURCES
from mtrl.checkpoint import capture_rng_states, list_checkpoints, non_finite_tensors, restore_rng_states, save_checkpoint
from mtrl.logging import Progress, RunLogger
from mtrl.seeding import RunSeeds


class NonFiniteError(RuntimeError):
    """A loss, parameter or action became NaN or infinite; the run stops with its last good checkpoint intact."""


class BalancerFaultError(NonFiniteError):
    """A registered balancer returned non-finite weights for finite gradients: the balancer, not the run, is at fault."""


class TrainingStopped(Exception):
    """The run stopped early on a stop signal, after writing a checkpoint where it could."""

    def __init__(self, signal_name: str, step: int, checkpoint: Path | None) -> None:
        where = f"checkpoint {checkpoint.name} written" if checkpoint else "no checkpoint could be taken"
        super().__init__(f"stopped by {signal_name} at step {step}; {where}")
        self.checkpoint = checkpoint


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


class Trainer:
    """What every algorithm's run shares; a subclass adds its state and :meth:`_train`, its loop.

    :meth:`run` trains until ``total_steps``, checkpoints at the end (at an episode boundary) and
    returns the final evaluation. A subclass calls :meth:`_record_step` after every vector step and
    :meth:`_log_evaluate_checkpoint` wherever logging, evaluation and checkpoints may happen.
    """

    algo: str

    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        envs: MultiTaskVectorEnv,
        agent: MultiTaskAgent,
        seeds: RunSeeds,
        make_eval_envs: Callable[[], MultiTaskVectorEnv],
        resume: dict[str, Any] | None = None,
        stop: StopRequest | None = None,
    ) -> None:
        """``make_eval_envs`` builds the evaluation environments when the first evaluation needs them."""
        if config.algo != self.algo:
            raise ValueError(f"{type(self).__name__} runs algo {self.algo!r}, the config asks for {config.algo!r}")
        self.config, self.run_dir, self.seeds = config, run_dir, seeds
        self.stop = stop or StopRequest("mtrl-train")  # never requested unless installed by the caller
        self._stop_by_step: int | None = None  # past this step a stop no longer waits for a checkpoint
        self.envs, self.agent, self.device = envs, agent, agent.device
        self._make_eval_envs = make_eval_envs
        self.eval_envs: MultiTaskVectorEnv | None = None
        self.task_names = list(self.envs.task_names)
        self.num_tasks = self.envs.num_tasks
        self.envs_per_task = self.envs.num_envs // self.num_tasks
        self.global_step = 0
        self.next_checkpoint = config.checkpoint_every or math.inf
        self.next_eval = config.eval_every or math.inf
        self.next_log = config.log_every
        self.eval_seconds = 0.0  # wall time spent evaluating, so benchmarks can report training SPS alone
        self.episode_return = np.zeros(self.envs.num_envs)
        self.episode_success = np.zeros(self.envs.num_envs, dtype=bool)
        self.at_episode_boundary = True  # every environment just finished an episode (or none started)
        self._window_start, self._window_step = time.perf_counter(), 0
        self._build_state()
        if resume is not None:
            self._load(resume)
        self.logger = RunLogger(
            run_dir,
            tensorboard=config.tensorboard,
            resume_step=self.global_step if resume else None,
            wandb=config.wandb_target(),
        )

    # ----------------------------------------------------------------------------- subclass hooks
    def _build_state(self) -> None:
        """Create the algorithm's own state (called before a checkpoint is loaded)."""

    def _train(self, progress: Progress) -> None:
        """Step, learn and call the bookkeeping until ``total_steps``."""
        raise NotImplementedError

    def _algo_state(self) -> dict[str, Any]:
        """The algorithm's own part of a checkpoint."""
        return {}

    def _load_algo_state(self, payload: dict[str, Any]) -> None:
        """Restore :meth:`_algo_state`."""

    # ----------------------------------------------------------------------------- the run
    def run(self) -> EvalResult:
        config = self.config
        progress = Progress(config.total_steps, self.global_step, enabled=config.progress)
        self._window_start, self._window_step = time.perf_counter(), self.global_step
        failed = True
        try:
            self._train(progress)
            if config.checkpoint_every and self.at_episode_boundary and not self._checkpoint_at(self.global_step):
                self.save_checkpoint()
            final = self._evaluate(config.final_eval_episodes, file_name=FINAL_EVAL_FILE)
            progress.set_success(final.success_rate)
            failed = False
            return final
        except TrainingStopped as stopped:
            failed = stopped.checkpoint is None  # a stop with a checkpoint is a run to resume, not a failure
            raise
        finally:
            progress.close()
            self.close(failed=failed)

    def _task_tensor(self, x: np.ndarray) -> Tensor:
        """``[N, ...]`` numpy (environments ordered by task) -> ``[T, E, ...]`` float32 on the device."""
        return torch.as_tensor(np.asarray(x, dtype=np.float32), device=self.device).reshape(
            self.num_tasks, self.envs_per_task, *x.shape[1:]
        )

    def _record_step(self, step: StepResult, progress: Progress) -> None:
        """Count one vector step and its episode ends."""
        ended = step.terminated | step.truncated  # [N]
        self.global_step += self.envs.num_envs
        progress.update(self.global_step)
        self._track_episodes(step.reward, step.success, ended)
        self.at_episode_boundary = bool(ended.all())

    def _log_evaluate_checkpoint(self, metrics: dict[str, Tensor], progress: Progress) -> None:
        """Log, evaluate and checkpoint where due (a checkpoint only at an episode boundary); stop if asked."""
        config = self.config
        if self.global_step >= self.next_log:
            sps = (self.global_step - self._window_step) / max(time.perf_counter() - self._window_start, 1e-9)
            self._log_training(metrics, sps)
            self._window_start, self._window_step = time.perf_counter(), self.global_step
        if self.global_step >= self.next_eval:
            self.next_eval += config.eval_every
            progress.set_success(self._evaluate(config.eval_episodes).success_rate)
        if self.global_step >= self.next_checkpoint and self.at_episode_boundary:
            # advanced first, so that the checkpoint holds the next one due (a resumed run keeps the schedule)
            self.next_checkpoint = (self.global_step // config.checkpoint_every + 1) * config.checkpoint_every
            self.save_checkpoint(metrics)
        if self.stop.requested:
            self._stop_here(metrics)

    def _stop_here(self, metrics: dict[str, Tensor]) -> None:
        """Checkpoint and stop at an episode boundary; give up waiting for one after a whole episode."""
        if self._stop_by_step is None:
            self._stop_by_step = self.global_step + self.config.env.max_episode_steps * self.envs.num_envs
            self.stop.announce("checkpointing at the next episode boundary, then stopping")
        if self.at_episode_boundary:
            path = self._checkpoint_at(self.global_step) or self.save_checkpoint(metrics)
        elif self.global_step >= self._stop_by_step:
            path = None
        else:
            return
        raise TrainingStopped(self.stop.signal_name or "a stop signal", self.global_step, path)

    def _host_actions(self, actions: Tensor) -> np.ndarray:
        """The policy's task-grouped actions ``[T, E, A]`` as the environments' ``[N, A]``: the step's one copy to the host."""
        return self._finite_actions(actions.reshape(self.envs.num_envs, -1).cpu().numpy())

    def _finite_actions(self, actions: np.ndarray) -> np.ndarray:
        """``actions [N, A]`` unchanged if finite; a NaN action never reaches a simulator (or the replay)."""
        finite = np.isfinite(actions).all(axis=1)  # [N]
        if not finite.all():
            self._check_balancers()
            tasks = sorted({self.task_names[e // self.envs_per_task] for e in np.flatnonzero(~finite)})
            raise NonFiniteError(
                f"non-finite actions from the policy at step {self.global_step} (tasks {', '.join(tasks)}); "
                f"last good checkpoint: {self._last_good_checkpoint()}"
            )
        return actions

    def _check_balancers(self) -> None:
        """Before a run stops on non-finite values: a NonFiniteError naming the registered balancer that
        caused them, if one returned non-finite weights for finite gradients (its device flag, read here)."""
        for network, step in self.agent.balanced_steps.items():
            flag = step.balancer.diagnostics().get("nonfinite_weights")
            if flag is not None and bool(flag):
                name = self.config.balancer.name
                raise BalancerFaultError(
                    f"balancer {name!r} ({PLUGIN_SOURCES.get(name, 'registered')}) returned non-finite weights for finite "
                    f"gradients of the {network} by step {self.global_step}; last good checkpoint: {self._last_good_checkpoint()}"
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
            self._check_balancers()
            raise NonFiniteError(
                f"non-finite {bad[0]} at step {self.global_step}; last good checkpoint: {self._last_good_checkpoint()}"
            )
        self.logger.log(self.global_step, {"charts/SPS": sps, **values})

    def _evaluate(self, episodes_per_task: int, file_name: str | None = None) -> EvalResult:
        """Evaluate on separate environments, reset to the same RNG state every time (comparable, resumable).

        The record goes into ``EVAL_DIR/file_name`` (default ``step_<step>.json``) once the logs hold the
        evaluation, so a final evaluation on disk is in the logs too (a resume of the finished run trusts it).
        """
        started = time.perf_counter()
        if self.eval_envs is None:
            self.eval_envs = self._make_eval_envs()
            self._eval_rng_state = self.eval_envs.get_rng_state()
        self.eval_envs.set_rng_state(self._eval_rng_state)
        result = evaluate(self.agent.numpy_policy(deterministic=True), self.eval_envs, episodes_per_task)
        self.logger.log(self.global_step, eval_scalars(result))
        self.logger.flush()
        out = self.run_dir / EVAL_DIR
        out.mkdir(exist_ok=True)
        record = {"step": self.global_step, "episodes_per_task": episodes_per_task, **result.to_dict()}
        write_atomically(out / (file_name or f"step_{self.global_step:012d}.json"), json.dumps(record, indent=2) + "\n")
        self.eval_seconds += time.perf_counter() - started
        return result

    # ----------------------------------------------------------------------------- checkpoints
    def _checkpoint_at(self, step: int) -> Path | None:
        return next((p for p in list_checkpoints(self.run_dir / CHECKPOINT_DIR) if p.name.endswith(f"{step:012d}")), None)

    def _last_good_checkpoint(self) -> str:
        last = list_checkpoints(self.run_dir / CHECKPOINT_DIR)
        return last[-1].name if last else "none"

    def save_checkpoint(self, metrics: dict[str, Tensor] | None = None) -> Path:
        """Write a checkpoint, refusing one with a non-finite parameter, state or loss (checked on the device)."""
        payload = {
            "config": self.config.to_plain(),
            "global_step": self.global_step,
            "next_eval": self.next_eval,
            "next_log": self.next_log,
            "next_checkpoint": self.next_checkpoint,
            "agent": self.agent.training_state(),
            "global_rng": capture_rng_states(),
            "envs_rng": self.envs.get_rng_state(),
            **self._algo_state(),
        }
        losses = {tag: value for tag, value in (metrics or {}).items() if tag.startswith("losses/")}
        bad = non_finite_tensors({"metrics": losses, **payload})
        if bad:
            self._check_balancers()
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise NonFiniteError(
                f"non-finite values in {bad[0]}{more} at step {self.global_step}; no checkpoint written; "
                f"last good checkpoint: {self._last_good_checkpoint()}"
            )
        return save_checkpoint(self.run_dir / CHECKPOINT_DIR, self.global_step, payload, keep=self.config.keep_checkpoints)

    def _load(self, payload: dict[str, Any]) -> None:
        self.global_step = payload["global_step"]
        self.next_eval, self.next_log = payload["next_eval"], payload["next_log"]
        self.next_checkpoint = payload["next_checkpoint"]
        self.agent.load_training_state(payload["agent"])
        restore_rng_states(payload["global_rng"])
        self.envs.set_rng_state(payload["envs_rng"])
        self._load_algo_state(payload)

    def close(self, failed: bool = False) -> None:
        """Close the environments and the logs (``failed``: the run ended on an error, as its W&B run records)."""
        self.envs.close()
        if self.eval_envs is not None:
            self.eval_envs.close()
        self.logger.close(failed=failed)


