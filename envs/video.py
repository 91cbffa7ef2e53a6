"""Videos of evaluation episodes with MuJoCo's offscreen renderer (GIF, or MP4 with ffmpeg).

Offscreen rendering needs an OpenGL backend chosen by MUJOCO_GL: "egl" (libEGL, headless; Mesa's
software EGL works without a GPU) or "osmesa" (libOSMesa, pure software). When MUJOCO_GL is unset
this module probes egl, then osmesa (then glfw if a display is set), each in a short subprocess
(an OpenGL platform cannot be switched inside a process, and a broken driver can crash it), and
sets MUJOCO_GL to the first that works. When none works, `RendererUnavailableError` says so in one
line. GIF is written with Pillow; MP4 needs the imageio-ffmpeg (or av) package.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from envs.config import EnvConfig
from envs.specs import env_specs
from envs.task_env import RenderOptions, TaskEnv
from envs.tasks import task_names

Policy = Callable[[np.ndarray], np.ndarray]

BACKENDS = ("egl", "osmesa", "glfw")
RENDER_FPS = 80
"""Meta-World's simulation rate: 0.0025 s timestep x frame_skip 5."""

_PROBE = """
import os, sys, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        import mujoco
        model = mujoco.MjModel.from_xml_string('<mujoco><worldbody><geom size=".1"/></worldbody></mujoco>')
        data = mujoco.MjData(model)
        renderer = mujoco.Renderer(model, 8, 8)
        renderer.update_scene(data)
        renderer.render()
        renderer.close()
    except Exception as error:
        first = f"{caught[0].message}; " if caught else ""
        sys.stderr.write(f"PROBE-FAILED {first}{type(error).__name__}: {error}\\n")
        sys.stderr.flush()
        os._exit(1)
"""
_MAX_REASON = 200
DEFAULT_RENDER = RenderOptions()


class RendererUnavailableError(RuntimeError):
    """No MuJoCo offscreen renderer works on this machine."""


def probe_backend(backend: str, timeout_s: float = 60.0) -> str | None:
    """None if MuJoCo renders offscreen with MUJOCO_GL=backend (tried in a subprocess), else why not."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown MuJoCo GL backend {backend!r}; valid: {', '.join(BACKENDS)}")
    env = {k: v for k, v in os.environ.items() if k != "PYOPENGL_PLATFORM"}
    env["MUJOCO_GL"] = backend
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout_s:.0f} s"
    if done.returncode == 0:
        return None
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    marked = [line.removeprefix("PROBE-FAILED ") for line in lines if line.startswith("PROBE-FAILED ")]
    reason = (marked or lines or [f"exit code {done.returncode}"])[-1]
    return reason if len(reason) <= _MAX_REASON else reason[: _MAX_REASON - 3] + "..."


@functools.cache
def find_renderer() -> str:
    """The MUJOCO_GL backend to render with; RendererUnavailableError (one line) when none works."""
    requested = os.environ.get("MUJOCO_GL", "").strip().lower()
    if requested:
        candidates: Sequence[str] = (requested,) if requested in BACKENDS else ()
        if not candidates:
            raise RendererUnavailableError(
                f"MUJOCO_GL={requested!r} cannot render offscreen; use one of {', '.join(BACKENDS)}"
            )
    else:
        candidates = ("egl", "osmesa", "glfw") if os.environ.get("DISPLAY") else ("egl", "osmesa")
    failures = []
    for backend in candidates:
        reason = probe_backend(backend)
        if reason is None:
            return backend
        failures.append(f"{backend}: {reason}")
    raise RendererUnavailableError(
        "no MuJoCo offscreen renderer available (" + "; ".join(failures) + "); install EGL "
        "(libegl1) or OSMesa (libosmesa6) and set MUJOCO_GL=egl or MUJOCO_GL=osmesa"
    )


VIDEO_SUFFIXES = (".gif", ".mp4")


def check_video_path(path: Path) -> None:
    """ValueError unless a video can be written to ``path`` here: a .gif, or an .mp4 with an ffmpeg writer installed."""
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"video path must end in .gif or .mp4, got {str(path)!r}")
    if suffix == ".mp4" and not any(importlib.util.find_spec(m) for m in ("imageio_ffmpeg", "av")):
        raise ValueError("writing .mp4 needs the imageio-ffmpeg or av package (pip install imageio-ffmpeg); or write a .gif")


@dataclass(frozen=True)
class Video:
    """Recorded frames and the rate they play at."""

    frames: np.ndarray
    """``[F, H, W, 3]`` uint8."""
    fps: float


def record_episodes(
    policy: Policy,
    config: EnvConfig,
    seed: int,
    task: str,
    episodes: int = 1,
    stride: int = 4,
    render: RenderOptions = DEFAULT_RENDER,
) -> Video:
    """Render `episodes` evaluation episodes of `task` (a task of config.benchmark).

    The environment is the task's first environment of make_envs(config, seed), so it draws the
    same goals; the policy sees the same observations [1, obs_dim] as with make_envs (one-hot id
    included). Episodes end at the first success as in evaluation. Every `stride`-th step is
    kept; the video plays in real time (RENDER_FPS / stride frames per second).
    """
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be an int >= 1, got {stride!r}")
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be an int >= 1, got {episodes!r}")
    names = task_names(config.benchmark)
    if task not in names:
        raise ValueError(
            f"task {task!r} is not in benchmark {config.benchmark!r}; its tasks: {', '.join(names)}"
        )
    backend = find_renderer()
    os.environ.setdefault("MUJOCO_GL", backend)

    single = config.replace(envs_per_task=1, num_workers=0, terminate_on_success=True)
    spec = env_specs(single, seed)[names.index(task)]
    one_hot = np.zeros(len(names) if config.one_hot else 0, dtype=np.float32)
    if config.one_hot:
        one_hot[spec.task_index] = 1.0
    env = TaskEnv(spec, render)
    frames: list[np.ndarray] = []
    try:
        for _ in range(episodes):
            raw = env.reset()
            frames.append(env.render())
            done = False
            while not done:
                obs = np.concatenate([raw.astype(np.float32), one_hot])[None]  # [1, obs_dim]
                action = np.asarray(policy(obs), dtype=np.float64).reshape(-1)
                raw, _, terminated, truncated, _ = env.step(action)
                done = terminated or truncated
                if done or env.episode_step % stride == 0:
                    frames.append(env.render())
    finally:
        env.close()
    return Video(np.stack(frames), fps=RENDER_FPS / stride)


def record_video(
    policy: Policy,
    config: EnvConfig,
    seed: int,
    task: str,
    path: str | os.PathLike[str],
    episodes: int = 1,
    stride: int = 4,
    render: RenderOptions = DEFAULT_RENDER,
) -> Path:
    """:func:`record_episodes` written to `path` (.gif or .mp4, checked before anything is rendered)."""
    path = Path(path)
    check_video_path(path)
    return write_video(record_episodes(policy, config, seed, task, episodes, stride, render), path)


def write_video(video: Video, path: str | os.PathLike[str]) -> Path:
    """Write `video` to `path`: a looping GIF (Pillow) or an MP4 (ffmpeg), by the suffix."""
    path = Path(path)
    check_video_path(path)
    try:
        import imageio.v3 as iio
    except ImportError as error:
        raise RuntimeError("writing videos needs the imageio package (pip install imageio)") from error

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        iio.imwrite(path, video.frames, extension=".gif", duration=1000.0 / video.fps, loop=0)
    else:
        iio.imwrite(path, video.frames, extension=".mp4", fps=video.fps)
    return path
