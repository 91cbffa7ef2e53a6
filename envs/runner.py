"""Steps a group of task environments in turn against the step buffers.

The same code runs inside a worker process and in-process, so both give identical results.
Auto-reset follows gymnasium's SAME_STEP mode: an environment whose episode ended is reset in the
same step; `obs` holds the first observation of the new episode and `final_obs` the observation
the action actually led to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from envs.buffers import StepBuffers
from envs.specs import EnvSpec
from envs.task_env import RngState, TaskEnv
from envs.tasks import RAW_OBS_DIM

EnvFactory = Callable[[EnvSpec], TaskEnv]
"""Builds one environment from its spec (TaskEnv by default; a picklable top-level callable)."""


class CommandError(Exception):
    """An environment raised; carries which one, for the learner's error message."""

    def __init__(self, env_index: int, command: str, cause: BaseException) -> None:
        super().__init__(f"env {env_index} raised during {command}: {cause!r}")
        self.env_index = env_index
        self.command = command


class EnvGroup:
    """The environments one worker (or the in-process backend) owns, stepped one after another."""

    def __init__(
        self,
        specs: Sequence[EnvSpec],
        buffers: StepBuffers,
        slot: int,
        factory: EnvFactory = TaskEnv,
    ) -> None:
        self.buffers = buffers
        self.slot = slot
        self.indices = [spec.env_index for spec in specs]
        self.envs: list[TaskEnv] = []
        for spec in specs:
            with self._current(spec.env_index, "build"):
                self.envs.append(factory(spec))
        self._return = np.zeros(len(specs), dtype=np.float64)
        self._success_any = np.zeros(len(specs), dtype=np.bool_)

    def _current(self, env_index: int, command: str) -> _Current:
        return _Current(self, env_index, command)

    def reset(self) -> None:
        b = self.buffers
        for k, (e, env) in enumerate(zip(self.indices, self.envs, strict=True)):
            with self._current(e, "reset"):
                b.obs[e, :RAW_OBS_DIM] = env.reset()
            self._return[k] = 0.0
            self._success_any[k] = False
        b.terminated[self.indices] = False
        b.truncated[self.indices] = False

    def step(self) -> None:
        b = self.buffers
        for k, (e, env) in enumerate(zip(self.indices, self.envs, strict=True)):
            with self._current(e, "step"):
                obs, reward, terminated, truncated, success = env.step(b.actions[e])
                b.final_obs[e, :RAW_OBS_DIM] = obs
                self._return[k] += reward
                self._success_any[k] |= success
                ended = terminated or truncated
                if ended:
                    b.episode_return[e] = self._return[k]
                    b.episode_length[e] = env.episode_step
                    b.episode_success[e] = self._success_any[k]
                    self._return[k] = 0.0
                    self._success_any[k] = False
                    obs = env.reset()
                b.obs[e, :RAW_OBS_DIM] = obs
                b.reward[e] = reward
                b.terminated[e] = terminated
                b.truncated[e] = truncated
                b.success[e] = success

    def get_rng_state(self) -> list[RngState]:
        return [env.get_rng_state() for env in self.envs]

    def set_rng_state(self, states: Sequence[RngState]) -> None:
        for e, env, state in zip(self.indices, self.envs, states, strict=True):
            with self._current(e, "set_rng_state"):
                env.set_rng_state(state)

    def set_terminate_on_success(self, flag: bool) -> None:
        for env in self.envs:
            env.terminate_on_success = flag

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self.envs = []

    def handle(self, command: str, argument: object) -> object:
        """Run one learner command; the worker loop and the in-process backend both use this."""
        if command == "step":
            self.step()
            return None
        if command == "reset":
            self.reset()
            return None
        if command == "get_rng_state":
            return self.get_rng_state()
        if command == "set_rng_state":
            self.set_rng_state(argument)  # type: ignore[arg-type]
            return None
        if command == "set_terminate_on_success":
            self.set_terminate_on_success(bool(argument))
            return None
        raise ValueError(f"unknown command {command!r}")


class _Current:
    """Marks the environment being worked on in shared memory (current_env, and one more in
    progress, which the learner's hang detection watches); wraps its errors in CommandError."""

    def __init__(self, group: EnvGroup, env_index: int, command: str) -> None:
        self.group, self.env_index, self.command = group, env_index, command

    def __enter__(self) -> None:
        self.group.buffers.current_env[self.group.slot] = self.env_index
        self.group.buffers.progress[self.group.slot] += 1

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> bool:
        if exc is not None and not isinstance(exc, (CommandError, KeyboardInterrupt)):
            raise CommandError(self.env_index, self.command, exc) from exc
        self.group.buffers.current_env[self.group.slot] = -1
        return False
