"""The training loops composed from their parts, on simulator-free environments (envs.testing).

What is tested here is the loop itself: the SAC update credit, the log / evaluation / checkpoint
schedule, the non-finite stops, the stop signal, and an exact resume, in seconds and without
MuJoCo (the end-to-end runs of tests/integration train the same loops on Meta-World).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.ppo import PPOConfig
from agents.sac import SACConfig
from envs import EnvConfig
from envs.testing import make_scripted_envs
from launch.config import BalancerConfig, PPOTrainConfig, SACTrainConfig, TrainConfig
from launch.factory import make_trainer
from launch.replay_loop import ReplayLoopConfig
from launch.sac_trainer import ITERATION_PHASES
from launch.stop import StopRequest
from launch.trainer import NonFiniteError, Trainer, TrainingStopped
from launch.evaluate import main as eval_main
from launch.train import main as train_main
from mtrl.checkpoint import FORMAT_VERSION, list_checkpoints, load_latest
from mtrl.logging import Progress, read_metrics
from mtrl.schedules import ScheduleConfig

EPISODE = 5  # steps per episode; 2 tasks, 1 environment each: a vector episode is 10 environment steps

SAC = SACTrainConfig(
    env=EnvConfig(benchmark="reach-v3,drawer-close-v3", max_episode_steps=EPISODE),
    sac=SACConfig(hidden_dims=(16,), compile_gradients=False),
    replay=ReplayLoopConfig(warmup_steps=20, updates_per_step=0.5, batch_size_per_task=8, buffer_capacity_per_task=200),
    balancer=BalancerConfig(name="mean", statistics=False),  # no per-task gradients: the loop is what is tested
    total_steps=100,
    eval_every=40,
    eval_episodes=1,
    final_eval_episodes=1,
    checkpoint_every=25,
    keep_checkpoints=10,
    log_every=30,
    device="cpu",
    progress=False,
    tensorboard=False,
)

PPO = PPOTrainConfig(
    env=SAC.env,
    ppo=PPOConfig(hidden_dims=(16,), rollout_steps=EPISODE, epochs=2, minibatches=1, compile_gradients=False),
    balancer=SAC.balancer,
    total_steps=100,
    eval_every=0,
    final_eval_episodes=1,
    checkpoint_every=30,
    keep_checkpoints=10,
    log_every=20,
    device="cpu",
    progress=False,
    tensorboard=False,
)


def _trainer(config: TrainConfig, run_dir: Path, **kwargs) -> Trainer:
    run_dir.mkdir(exist_ok=True)
    return make_trainer(config, run_dir, build_envs=make_scripted_envs, **kwargs)


def _checkpoint_steps(run_dir: Path) -> list[int]:
    return [int(p.name.split("_")[-1]) for p in list_checkpoints(run_dir / "checkpoints")]


def test_sac_update_credit_gives_updates_per_step_after_the_warm_up(tmp_path):
    trainer = _trainer(SAC, tmp_path / "run")
    trainer.run()
    # 50 vector steps of 2 environments; the first 10 are warm-up; then 0.5 updates per vector step
    assert trainer.agent.num_updates == 20 == SAC.total_updates(num_envs=2)
    assert trainer.agent.samples_per_task == SAC.samples_per_task()  # what gradient_path auto weighs


def test_sac_fractional_credit_is_carried_over_between_steps(tmp_path):
    config = dataclasses.replace(SAC, replay=dataclasses.replace(SAC.replay, updates_per_step=1.5))
    trainer = _trainer(config, tmp_path / "run")
    trainer.run()
    assert trainer.agent.num_updates == 60 == config.total_updates(num_envs=2)


def test_one_sac_iteration_marks_its_phases_stores_and_counts_one_vector_step(tmp_path):
    trainer = _trainer(SAC, tmp_path / "run")
    progress = Progress(SAC.total_steps, enabled=False)
    try:
        trainer.reset()
        marked: list[str] = []
        warm_up = [trainer.iteration(progress, marked.append) for _ in range(SAC.replay.warmup_steps // 2)]
        assert warm_up == [None] * 10 and trainer.agent.num_updates == 0  # random actions, no update
        assert marked == list(ITERATION_PHASES) * 10
        assert trainer.global_step == 20 and len(trainer.replay) == 10  # one transition per task and vector step
        learned = [trainer.iteration(progress) is not None for _ in range(4)]
        assert learned == [False, True, False, True] and trainer.agent.num_updates == 2  # 0.5 updates per vector step
        assert trainer.global_step == 28 and len(trainer.replay) == 14
    finally:
        progress.close()
        trainer.close()


def test_log_evaluation_and_checkpoint_schedule(tmp_path):
    run = tmp_path / "run"
    result = _trainer(SAC, run).run()
    # checkpoints at the first episode boundary (every 10 steps) at or after every 25 steps
    assert _checkpoint_steps(run) == [30, 50, 80, 100]
    # evaluations when due (no boundary needed) and the final one
    assert sorted(p.name for p in (run / "eval").iterdir()) == ["final.json", "step_000000000040.json", "step_000000000080.json"]
    assert json.loads((run / "eval" / "final.json").read_text())["success_rate"] == result.success_rate
    records = read_metrics(run / "metrics.jsonl")
    trained = [r["step"] for r in records if "losses/qf_loss" in r]
    assert trained == [30, 60, 90]
    assert all(math.isfinite(r["losses/qf_loss"]) for r in records if "losses/qf_loss" in r)
    assert [r["step"] for r in records if "eval/success_rate" in r] == [40, 80, 100]


# the compiled whole update, with per-task gradients and a rate that changes every update (the schedule's
# length is fixed: by default it is the run's number of updates, which the shortened first run would change)
COSINE = ScheduleConfig(name="warmup_cosine", warmup_updates=3, total_updates=SAC.total_updates(num_envs=2))
COMPILED_SAC = dataclasses.replace(
    SAC,
    sac=dataclasses.replace(SAC.sac, update_graph="compiled", schedule=COSINE),
    balancer=BalancerConfig(name="mean", statistics=True),
)

COMPILED_PPO = dataclasses.replace(
    PPO,
    ppo=dataclasses.replace(
        PPO.ppo, update_graph="compiled", schedule=ScheduleConfig(name="linear", total_updates=PPO.total_updates(num_envs=2))
    ),
    balancer=BalancerConfig(name="mean", statistics=True),
)


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(SAC, id="sac-eager"),
        pytest.param(dataclasses.replace(SAC, balancer=BalancerConfig(name="sdmgrad")), id="sac-sdmgrad", marks=pytest.mark.slow),
        pytest.param(COMPILED_SAC, id="sac-compiled-update", marks=pytest.mark.slow),
        pytest.param(PPO, id="ppo-eager"),
        pytest.param(COMPILED_PPO, id="ppo-compiled-update", marks=pytest.mark.slow),
    ],
)
def test_a_resumed_run_ends_exactly_as_the_uninterrupted_one(tmp_path, config):
    straight = _trainer(config, tmp_path / "straight")
    straight.run()
    first = _trainer(dataclasses.replace(config, total_steps=50), tmp_path / "resumed")
    first.run()
    _, payload = load_latest(tmp_path / "resumed" / "checkpoints")
    assert payload["global_step"] == 50
    resumed = _trainer(config, tmp_path / "resumed", resume=payload)
    resumed.run()
    for name, value in straight.agent.state_dict().items():
        assert torch.equal(value, resumed.agent.state_dict()[name]), name
    for network, step in straight.agent.balanced_steps.items():  # the balancers' state (SDMGrad's weights) too
        for name, value in step.balancer.state_dict().items():
            assert torch.equal(value, resumed.agent.balanced_steps[network].balancer.state_dict()[name]), (network, name)
    assert resumed.agent.num_updates == straight.agent.num_updates


def test_a_non_finite_loss_stops_the_run_at_the_next_log_keeping_the_checkpoints(tmp_path, monkeypatch):
    run = tmp_path / "run"
    trainer = _trainer(SAC, run)
    update = trainer.agent.update

    def diverge_after_step_50(batch):
        metrics = update(batch)
        if trainer.global_step >= 50:
            metrics["losses/qf_loss"] = torch.tensor(float("nan"))
        return metrics

    monkeypatch.setattr(trainer.agent, "update", diverge_after_step_50)
    with pytest.raises(NonFiniteError, match=r"non-finite losses/qf_loss at step 60; last good checkpoint: step_000000000050"):
        trainer.run()
    assert _checkpoint_steps(run) == [30, 50]


def test_a_non_finite_action_never_reaches_the_environments(tmp_path, monkeypatch):
    run = tmp_path / "run"
    trainer = _trainer(SAC, run)
    act = trainer.agent.act
    monkeypatch.setattr(trainer.agent, "act", lambda obs, deterministic=False: act(obs, deterministic) * float("nan"))
    stepped = []
    step_async = trainer.envs.step_async
    monkeypatch.setattr(trainer.envs, "step_async", lambda actions: (stepped.append(actions), step_async(actions)))
    with pytest.raises(NonFiniteError, match=r"non-finite actions from the policy at step 20 \(tasks drawer-close-v3, reach-v3\)"):
        trainer.run()
    assert len(stepped) == 10 and all(np.isfinite(a).all() for a in stepped)  # the warm-up's random actions only


def test_a_stop_signal_checkpoints_at_the_next_episode_boundary(tmp_path, monkeypatch):
    run = tmp_path / "run"
    stop = StopRequest("test")
    trainer = _trainer(SAC, run, stop=stop)
    record_step = trainer._record_step

    def signal_at_step_62(step, progress):
        record_step(step, progress)
        if trainer.global_step == 62:
            stop.signal_name = "SIGTERM"

    monkeypatch.setattr(trainer, "_record_step", signal_at_step_62)
    with pytest.raises(TrainingStopped, match=r"stopped by SIGTERM at step 70; checkpoint step_000000000070 written"):
        trainer.run()
    assert _checkpoint_steps(run) == [30, 50, 70]


def test_ppo_updates_once_per_rollout_and_checkpoints_at_rollout_ends(tmp_path):
    run = tmp_path / "run"
    trainer = _trainer(PPO, run)
    trainer.run()
    assert trainer.agent.num_updates == 10  # 100 steps in rollouts of 5 steps of 2 environments
    assert _checkpoint_steps(run) == [30, 60, 90, 100]
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if "losses/policy_loss" in r] == [20, 40, 60, 80, 100]


def test_an_old_checkpoint_format_is_refused_in_one_line_by_train_and_eval(tmp_path, capsys):
    run = tmp_path / "run"
    _trainer(dataclasses.replace(SAC, total_steps=30), run).run()
    (run / "config.json").write_text(json.dumps(SAC.to_plain()))
    newest = list_checkpoints(run / "checkpoints")[-1]
    meta = json.loads((newest / "meta.json").read_text())
    (newest / "meta.json").write_text(json.dumps({**meta, "format_version": FORMAT_VERSION - 1}))
    expected = f"checkpoint format version {FORMAT_VERSION - 1}, but this mtrl reads version {FORMAT_VERSION}"
    for main in (lambda: train_main(["--resume", str(run)]), lambda: eval_main([str(run)])):
        assert main() == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert list_checkpoints(run / "checkpoints") == [newest]  # not set aside: it is not broken
