"""One Meta-World task environment with goal sampling, time limit and RNG state.

This is the stack `metaworld._init_each_env` builds (SawyerXYZEnv, TimeLimit,
AutoTerminateOnSuccessWrapper, RandomTaskSelectWrapper), flattened into one small class: the goal
of every episode is drawn exactly as `RandomTaskSelectWrapper` draws it (one
`np_random.choice(len(goals))` on the Meta-World environment's generator, then `set_task`), so
the same seed gives the same goals and observations as Meta-World's own vector environments.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import metaworld.env_dict as mw_env_dict
import numpy as np

from envs.specs import EnvSpec
from envs.tasks import ACTION_DIM, RAW_OBS_DIM

RngState = dict[str, Any]
"""The bit-generator states of one environment: plain, picklable data."""


class RenderOptions(NamedTuple):
    """Offscreen rendering of a TaskEnv (used for videos only)."""

    camera_name: str = "corner"
    width: int = 256
    height: int = 256


class TaskEnv:
    """A Meta-World v3 environment for one task (Yu et al. 2019; McLean et al. 2025).

    reset() draws a goal from `spec.goals`, step() returns
    (obs [39] float64, reward, terminated, truncated, success). Episodes are truncated after
    `spec.max_episode_steps` steps; terminated is only ever set when terminate_on_success is on.
    """

    def __init__(self, spec: EnvSpec, render: RenderOptions | None = None) -> None:
        self.spec = spec
        env_cls = mw_env_dict.ALL_V3_ENVIRONMENTS[spec.task_name]
        render_kwargs = {} if render is None else {"render_mode": "rgb_array", **render._asdict()}
        self.env = env_cls(reward_function_version=spec.reward_function_version, **render_kwargs)
        # Meta-World raises once its own horizon (500) is passed; make it ours so that any
        # episode length works and the environment's own truncation agrees with the time limit.
        self.env.max_path_length = spec.max_episode_steps
        self.env.seed(spec.seed)
        self.terminate_on_success = spec.terminate_on_success
        self.episode_step = 0
        self._episode_start_rng: RngState | None = None
        obs_shape = self.env.observation_space.shape
        if obs_shape != (RAW_OBS_DIM,) or self.env.action_space.shape != (ACTION_DIM,):
            raise RuntimeError(
                f"{spec.task_name}: expected Meta-World observation ({RAW_OBS_DIM},) and action "
                f"({ACTION_DIM},), got {obs_shape} and {self.env.action_space.shape}"
            )

    def reset(self) -> np.ndarray:
        """Start an episode with a goal drawn from the task's goals; the first observation [39]."""
        self._episode_start_rng = self._read_rng()
        goal_index = self.env.np_random.choice(len(self.spec.goals))
        self.env.set_task(self.spec.goals[goal_index])
        obs, _ = self.env.reset()
        self.episode_step = 0
        return obs

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, bool]:
        """Apply `action` [4]; (next obs [39], reward, terminated, truncated, success)."""
        obs, reward, _, _, info = self.env.step(action)
        self.episode_step += 1
        success = bool(info["success"] == 1.0)
        terminated = self.terminate_on_success and success
        truncated = self.episode_step >= self.spec.max_episode_steps
        return obs, float(reward), terminated, truncated, success

    def get_rng_state(self) -> RngState:
        """The generators' states at the start of the current episode (before its goal was drawn),
        so that set_rng_state() then reset() replays that episode from its first observation.
        Before the first reset it is the state as seeded."""
        state = self._episode_start_rng if self._episode_start_rng is not None else self._read_rng()
        return {**state, "episode_step": self.episode_step}

    def set_rng_state(self, state: RngState) -> None:
        """Restore states from get_rng_state(); the next reset() draws what that episode drew."""
        env = self.env
        env.np_random.bit_generator.state = state["np_random"]
        env.action_space.np_random.bit_generator.state = state["action_space"]
        env.observation_space.np_random.bit_generator.state = state["observation_space"]
        env.goal_space.np_random.bit_generator.state = state["goal_space"]
        self._episode_start_rng = None

    def _read_rng(self) -> RngState:
        # Meta-World's own checkpoint (metaworld.wrappers.get_env_rng_checkpoint) holds the same
        # four generators; the goal draw only uses np_random, the others are kept for completeness.
        env = self.env
        return {
            "np_random": env.np_random.bit_generator.state,
            "action_space": env.action_space.np_random.bit_generator.state,
            "observation_space": env.observation_space.np_random.bit_generator.state,
            "goal_space": env.goal_space.np_random.bit_generator.state,
        }

    def render(self) -> np.ndarray:
        """The current frame [height, width, 3] uint8 (needs RenderOptions at construction).

        Meta-World's cameras were placed for mujoco-py, whose images came bottom row first;
        gymnasium's renderer returns them top row first, so the frame is flipped vertically to
        look as in the Meta-World papers."""
        return np.ascontiguousarray(np.flipud(self.env.render()))

    def close(self) -> None:
        self.env.close()
