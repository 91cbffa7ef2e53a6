"""MultiTaskVectorEnv: every environment of a multi-task Meta-World benchmark, stepped as one batch.

Episode ends follow gymnasium's SAME_STEP autoreset mode (gymnasium.vector.AutoresetMode.SAME_STEP):
an environment whose episode ended (terminated or truncated) is reset inside the same step, so
`obs[i]` is already the first observation of its next episode, while `final_obs[i]` is the
observation the action really led to. `final_obs` is filled for every environment (it equals
`obs` where no episode ended), so a replay buffer can always store (obs, action, final_obs).
Meta-World episodes end by truncation at max_episode_steps: bootstrap through `truncated`, treat
only `terminated` as a true end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode

from envs.buffers import BufferLayout, StepBuffers
from envs.config import EnvConfig
from envs.runner import CommandError, EnvFactory, EnvGroup
from envs.specs import EnvSpec, env_specs
from envs.task_env import TaskEnv
from envs.tasks import ACTION_DIM, RAW_OBS_DIM, task_names
from envs.worker import DEFAULT_START_METHOD, EnvWorkerError, WorkerPool, one_line


@dataclass(frozen=True)
class StepResult:
    """One step of every environment (arrays are the caller's own copies)."""

    obs: np.ndarray
    """[N, obs_dim] float32: next observation; the first one of a new episode where one ended."""
    reward: np.ndarray
    """[N] float64."""
    terminated: np.ndarray
    """[N] bool: true end of episode (only with terminate_on_success)."""
    truncated: np.ndarray
    """[N] bool: time limit reached (bootstrap through it)."""
    final_obs: np.ndarray
    """[N, obs_dim] float32: the observation the action led to (the real last observation of an
    ended episode; equal to obs elsewhere)."""
    success: np.ndarray
    """[N] bool: Meta-World's success flag at this step."""
    episode_return: np.ndarray
    """[N] float64: return of the episode that just ended (valid where terminated | truncated)."""
    episode_length: np.ndarray
    """[N] int64: length of the episode that just ended (valid where terminated | truncated)."""
    episode_success: np.ndarray
    """[N] bool: success flag set at any step of the episode that just ended (valid where ended)."""

    @property
    def done(self) -> np.ndarray:
        """[N] bool: terminated | truncated."""
        return self.terminated | self.truncated


class _InProcess:
    """Backend that steps every environment in the calling process (same code as a worker)."""

    num_workers = 0

    def __init__(self, specs: Sequence[EnvSpec], layout: BufferLayout, factory: EnvFactory) -> None:
        self.buffers = StepBuffers.allocate(layout)
        self.specs = list(specs)
        self.closed = False
        self._pending: list[tuple[str, Any]] = []
        self.group = self._run(lambda: EnvGroup(specs, self.buffers, 0, factory))

    def send(self, command: str, arguments: Sequence[Any] | None = None) -> None:
        if self._pending:
            raise RuntimeError(f"still busy with {self._pending[0][0]!r}")
        self._pending.append((command, None if arguments is None else arguments[0]))

    def wait(self) -> list[Any]:
        command, argument = self._pending.pop()
        return [self._run(lambda: self.group.handle(command, argument))]

    def call(self, command: str, arguments: Sequence[Any] | None = None) -> list[Any]:
        self.send(command, arguments)
        return self.wait()

    def _run(self, function: Any) -> Any:
        try:
            return function()
        except CommandError as error:
            task = self.specs[error.env_index].task_name
            cause = error.__cause__
            raise EnvWorkerError(
                f"env {error.env_index} (task {task!r}) raised during {error.command}: "
                + one_line(f"{type(cause).__name__}: {cause}"),
                kind="raised",
                command=error.command,
                env_index=error.env_index,
                task=task,
                tasks=tuple(spec.task_name for spec in self.specs),
            ) from cause

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.group.close()


class MultiTaskVectorEnv:
    """The environments of one benchmark, ordered by task (env e runs task e // envs_per_task).

    Build with `make_envs`. Observations are Meta-World's 39 numbers, followed by the one-hot
    task id when config.one_hot is set. `autoreset_mode` is gymnasium's SAME_STEP (module doc).
    """

    def __init__(
        self,
        config: EnvConfig,
        specs: Sequence[EnvSpec],
        env_factory: EnvFactory = TaskEnv,
        start_method: str = DEFAULT_START_METHOD,
        timeout_s: float | None = None,
    ) -> None:
        self.config = config
        self.specs = list(specs)
        self.task_names: list[str] = task_names(config.benchmark)
        self.num_tasks = len(self.task_names)
        self.num_envs = len(self.specs)
        self.envs_per_task = config.envs_per_task
        self.task_index = np.array([s.task_index for s in self.specs], dtype=np.int64)  # [N]
        self.copy_index = np.array([s.copy_index for s in self.specs], dtype=np.int64)  # [N]
        self.obs_dim = RAW_OBS_DIM + (self.num_tasks if config.one_hot else 0)
        self.action_dim = ACTION_DIM
        self.action_low = -np.ones(ACTION_DIM, dtype=np.float32)
        self.action_high = np.ones(ACTION_DIM, dtype=np.float32)
        self.num_workers = min(config.num_workers, self.num_envs)
        self.terminate_on_success = config.terminate_on_success
        self.autoreset_mode = AutoresetMode.SAME_STEP
        layout = BufferLayout(self.num_envs, self.obs_dim, ACTION_DIM, self.num_workers)
        self._backend: _InProcess | WorkerPool
        if self.num_workers == 0:
            self._backend = _InProcess(self.specs, layout, env_factory)
        else:
            self._backend = WorkerPool(
                self.specs,
                layout,
                self.num_workers,
                env_factory,
                start_method,
                config.worker_timeout_s if timeout_s is None else timeout_s,
            )
        self._closed = False
        self._buffers = self._backend.buffers
        if config.one_hot:
            one_hot = np.eye(self.num_tasks, dtype=np.float32)[self.task_index]  # [N, T]
            self._buffers.obs[:, RAW_OBS_DIM:] = one_hot
            self._buffers.final_obs[:, RAW_OBS_DIM:] = one_hot
        self._needs_reset = True
        self._stepping = False

    # stepping

    def reset(self) -> np.ndarray:
        """Start a new episode in every environment; obs [N, obs_dim] float32."""
        self._check_open()
        if self._stepping:
            self.step_wait()
        self._backend.call("reset")
        self._needs_reset = False
        return self._buffers.obs.copy()

    def step_async(self, actions: np.ndarray) -> None:
        """Start stepping with actions [N, 4] and return at once; collect with step_wait().

        The actions are copied (as float64, what MuJoCo computes in); with worker processes the
        simulators run while the caller works. In-process, the step runs inside step_wait()."""
        self._check_open()
        if self._needs_reset:
            raise RuntimeError("call reset() before stepping (after construction or set_rng_state)")
        if self._stepping:
            raise RuntimeError("step_async() called twice without step_wait()")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs, self.action_dim):
            raise ValueError(
                f"actions must have shape [num_envs, action_dim] = {(self.num_envs, self.action_dim)}, "
                f"got {actions.shape}"
            )
        self._buffers.actions[:] = actions
        self._backend.send("step")
        self._stepping = True

    def step_wait(self) -> StepResult:
        """Wait for the step started by step_async and return its results."""
        self._check_open()
        if not self._stepping:
            raise RuntimeError("step_wait() called without step_async()")
        self._stepping = False
        self._backend.wait()
        b = self._buffers
        return StepResult(
            obs=b.obs.copy(),
            reward=b.reward.copy(),
            terminated=b.terminated.copy(),
            truncated=b.truncated.copy(),
            final_obs=b.final_obs.copy(),
            success=b.success.copy(),
            episode_return=b.episode_return.copy(),
            episode_length=b.episode_length.copy(),
            episode_success=b.episode_success.copy(),
        )

    def step(self, actions: np.ndarray) -> StepResult:
        """step_async(actions) then step_wait()."""
        self.step_async(actions)
        return self.step_wait()

    # state

    def get_rng_state(self) -> list[dict[str, Any]]:
        """Picklable RNG state of every environment, as of the start of its current episode.

        Entry e: {"env_index", "task", "seed", "episode_step", "rng"}; "rng" holds the bit
        generator states of Meta-World's environment (np_random, which draws the goals, and the
        action, observation and goal spaces). Take it at an episode boundary (episode_step == 0,
        e.g. right after the step where every episode was truncated): set_rng_state(state) and
        reset() then reproduce the current episodes exactly, and so everything after them.
        """
        self._check_open()
        if self._stepping:
            raise RuntimeError("get_rng_state() during a step; call step_wait() first")
        per_worker = self._backend.call("get_rng_state")
        by_env: dict[int, dict[str, Any]] = {}
        for block, states in zip(self._blocks(), per_worker, strict=True):
            by_env.update(zip(block, states, strict=True))
        return [
            {
                "env_index": spec.env_index,
                "task": spec.task_name,
                "seed": spec.seed,
                "episode_step": by_env[spec.env_index].pop("episode_step"),
                "rng": by_env[spec.env_index],
            }
            for spec in self.specs
        ]

    def set_rng_state(self, state: Sequence[dict[str, Any]]) -> None:
        """Restore get_rng_state(); call reset() next (it replays the saved episodes' starts)."""
        self._check_open()
        if self._stepping:
            raise RuntimeError("set_rng_state() during a step; call step_wait() first")
        if len(state) != self.num_envs:
            raise ValueError(f"RNG state holds {len(state)} environments, these envs have {self.num_envs}")
        for spec, entry in zip(self.specs, state, strict=True):
            saved = (entry["task"], entry["seed"])
            if saved != (spec.task_name, spec.seed):
                raise ValueError(
                    f"RNG state of env {spec.env_index} was saved from task {saved[0]!r} seed {saved[1]}, "
                    f"but this env runs task {spec.task_name!r} seed {spec.seed}"
                )
        rngs = [entry["rng"] for entry in state]
        blocks = self._blocks()
        self._backend.call("set_rng_state", [[rngs[e] for e in block] for block in blocks])
        self._needs_reset = True

    def set_terminate_on_success(self, flag: bool) -> None:
        """Turn ending episodes at the first success on or off (evaluation turns it on)."""
        self._check_open()
        if self._stepping:
            raise RuntimeError("set_terminate_on_success() during a step; call step_wait() first")
        self._backend.call("set_terminate_on_success", [bool(flag)] * max(self.num_workers, 1))
        self.terminate_on_success = bool(flag)

    def _blocks(self) -> list[list[int]]:
        if isinstance(self._backend, WorkerPool):
            return [[s.env_index for s in block] for block in self._backend.blocks]
        return [list(range(self.num_envs))]

    # lifetime

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the worker processes (empty in-process)."""
        if isinstance(self._backend, WorkerPool):
            return [p.pid for p in self._backend.processes if p.pid is not None]
        return []

    @property
    def closed(self) -> bool:
        return self._closed or self._backend.closed

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("the environments are closed")

    def close(self) -> None:
        """Stop the workers and release the environments; idempotent."""
        if not self._closed:
            self._closed = True
            self._backend.close()

    def __enter__(self) -> MultiTaskVectorEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"MultiTaskVectorEnv({self.config.benchmark!r}, num_envs={self.num_envs}, "
            f"num_tasks={self.num_tasks}, num_workers={self.num_workers})"
        )


def make_envs(
    config: EnvConfig,
    seed: int,
    *,
    env_factory: EnvFactory = TaskEnv,
    start_method: str = DEFAULT_START_METHOD,
    timeout_s: float | None = None,
) -> MultiTaskVectorEnv:
    """Build the environments of `config`; `seed` fixes every goal and every random draw.

    env_factory builds one environment from its EnvSpec (a picklable top-level callable, e.g. a
    TaskEnv subclass); start_method and timeout_s (None: config.worker_timeout_s) configure the
    worker processes (envs.worker). Worker failures raise envs.EnvWorkerError.
    """
    if not isinstance(config, EnvConfig):
        raise TypeError(f"config must be an EnvConfig, got {type(config).__name__}")
    return MultiTaskVectorEnv(config, env_specs(config, seed), env_factory, start_method, timeout_s)
