"""Evaluation videos: recorded when a MuJoCo offscreen renderer exists, a one-line error otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from envs import EnvConfig, video
from envs.task_env import RenderOptions


def reach_expert(obs: np.ndarray) -> np.ndarray:
    """Meta-World's scripted reach policy, vectorised: move the hand towards the goal."""
    action = np.zeros((len(obs), 4))
    action[:, :3] = np.clip(5.0 * (obs[:, 36:39] - obs[:, 0:3]), -1, 1)
    return action


@pytest.fixture
def renderer(monkeypatch: pytest.MonkeyPatch) -> str:
    """The MUJOCO_GL backend that renders here (set for the test; record_video sets it, this undoes it); skip if none."""
    try:
        backend = video.find_renderer()
    except video.RendererUnavailableError as error:
        pytest.skip(str(error))
    monkeypatch.setenv("MUJOCO_GL", backend)
    return backend


@pytest.mark.slow
def test_records_a_gif_when_a_renderer_is_available(tmp_path: Path, renderer: str) -> None:
    import imageio.v3 as iio

    config = EnvConfig(benchmark="reach-v3,push-v3")
    path = video.record_video(
        reach_expert, config, 0, "reach-v3", tmp_path / "reach.gif", render=RenderOptions(width=48, height=48)
    )
    frames = iio.imread(path)
    assert frames.shape[1:3] == (48, 48) and 2 < len(frames) < 500 // 4
    assert frames.std() > 0


@pytest.mark.slow
def test_records_an_mp4_when_a_renderer_is_available(tmp_path: Path, renderer: str) -> None:
    import imageio.v3 as iio

    recorded = video.record_episodes(reach_expert, EnvConfig(benchmark="reach-v3"), 0, "reach-v3", render=RenderOptions(width=48, height=48))
    path = video.write_video(recorded, tmp_path / "reach.mp4")
    assert path.stat().st_size > 0
    frames = iio.imread(path)
    assert frames.shape[1:3] == (48, 48) and len(frames) == len(recorded.frames)


def test_an_mp4_without_an_ffmpeg_writer_is_refused_before_recording(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(video.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="imageio-ffmpeg"):
        video.record_video(reach_expert, EnvConfig(benchmark="reach-v3"), 0, "reach-v3", tmp_path / "a.mp4")
    assert not (tmp_path / "a.mp4").exists()


def test_no_renderer_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setattr(video, "probe_backend", lambda backend: f"cannot load lib{backend}")
    video.find_renderer.cache_clear()
    try:
        with pytest.raises(video.RendererUnavailableError) as info:
            video.record_video(
                reach_expert, EnvConfig(benchmark="reach-v3"), 0, "reach-v3", tmp_path / "a.gif"
            )
    finally:
        video.find_renderer.cache_clear()
    message = str(info.value)
    assert "\n" not in message
    assert "egl: cannot load libegl" in message and "osmesa: cannot load libosmesa" in message
    assert "MUJOCO_GL" in message
    assert not (tmp_path / "a.gif").exists()


def test_an_unusable_mujoco_gl_value_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUJOCO_GL", "wgl")
    video.find_renderer.cache_clear()
    try:
        with pytest.raises(video.RendererUnavailableError, match="MUJOCO_GL='wgl'.*egl, osmesa, glfw"):
            video.find_renderer()
    finally:
        video.find_renderer.cache_clear()


def test_bad_video_arguments(tmp_path: Path) -> None:
    config = EnvConfig(benchmark="reach-v3")
    with pytest.raises(ValueError, match=r"\.gif or \.mp4"):
        video.record_video(reach_expert, config, 0, "reach-v3", tmp_path / "a.avi")
    with pytest.raises(ValueError, match="not in benchmark 'reach-v3'"):
        video.record_video(reach_expert, config, 0, "push-v3", tmp_path / "a.gif")
