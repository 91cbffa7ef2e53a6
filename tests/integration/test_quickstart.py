"""What a newcomer's run shows: the quickstart preset, and the end of a run (per-task table, figures, videos)."""

from __future__ import annotations

import pytest

from envs import task_names, video
from launch import plot
from launch.config import PPOTrainConfig
from launch.presets import PRESETS
from launch.evaluate import main as eval_main
from launch.train import main as train_main
from tiny_runs import PPO_TINY  # tests/integration/tiny_runs.py


def test_quickstart_is_a_multi_task_ppo_run_that_evaluates_and_checkpoints_along_the_way() -> None:
    config = PRESETS["quickstart"][1]
    assert isinstance(config, PPOTrainConfig)
    assert len(task_names(config.env.benchmark)) == 3 and config.env.num_workers >= 1
    assert 0 < config.eval_every < config.total_steps and config.total_steps // config.eval_every >= 4  # a curve
    assert 0 < config.checkpoint_every < config.total_steps and config.ppo.rollout_steps % config.env.max_episode_steps == 0
    assert config.ppo.compile_gradients and config.balancer.name == "cagrad"


@pytest.mark.slow
def test_a_run_ends_with_its_table_and_figures_and_evaluates_to_gif_and_mp4(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert train_main([*PPO_TINY, "--total-steps", "200", "--eval-every", "100", "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    table = out[out.index("final evaluation, episodes per task: 1") :]
    assert "task " in table and "\nreach-v3 " in table and "\ndrawer-close-v3 " in table and "\nmean " in table
    assert f"plots in {run / 'plots'}: " in out and "skipped temperatures.png" in out
    for name in set(plot.FIGURES) - {"temperatures"}:
        assert (run / "plots" / f"{name}.png").stat().st_size > 0

    try:
        video.find_renderer()
    except video.RendererUnavailableError as error:
        pytest.skip(f"no video: {error}")
    assert eval_main([str(run), "--episodes", "1", "--video", "reach-v3"]) == 0
    written = sorted(path.name for path in (run / "videos").rglob("reach-v3.*"))
    assert written == ["reach-v3.gif", "reach-v3.mp4"]
    assert all(path.stat().st_size > 0 for path in (run / "videos").rglob("reach-v3.*"))
    assert eval_main([str(run), "--episodes", "1", "--video", "drawer-close-v3", "--video-format", "mp4"]) == 0
    assert [path.name for path in (run / "videos").rglob("drawer-close-v3.*")] == ["drawer-close-v3.mp4"]
