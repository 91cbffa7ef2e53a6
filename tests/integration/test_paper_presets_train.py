"""Every preset named after a paper trains end to end in a tiny form and resumes exactly after an interruption.

Each preset runs through ``mtrl-train NAME`` with its own settings, only made tiny (two Meta-World
tasks, 50-step episodes, tiny widths, few experts or modules, a small replay and warm-up, no
compiling): 400 steps straight, and 200 steps then ``--resume`` to 400, which must end with the same
parameters, statistics and logs (the interrupted run's own evaluation at its first end aside).
"""

from __future__ import annotations

import json

import pytest
import torch
from tiny_runs import EPISODE, training_records  # tests/integration/tiny_runs.py

from launch.train import main as train_main
from mtrl.checkpoint import list_checkpoints, load_latest

COMMON = [
    "--env.benchmark", "reach-v3,drawer-close-v3",
    "--env.max-episode-steps", str(EPISODE),
    "--eval-every", "0",
    "--log-every", "100",
    "--checkpoint-every", "200",
    "--final-eval-episodes", "1",
    "--torch-threads", "1",
    "--no-progress",
]
SAC_TINY = [
    "--sac.hidden-dims", "16", "16",
    "--replay.warmup-steps", "100",
    "--replay.batch-size-per-task", "8",
    "--replay.buffer-capacity-per-task", "1000",
    "--sac.no-compile-gradients",
    "--sac.update-graph", "off",
]
PPO_TINY = [
    "--ppo.hidden-dims", "16", "16",
    "--ppo.rollout-steps", str(EPISODE),
    "--ppo.epochs", "2",
    "--ppo.minibatches", "2",
    "--ppo.no-compile-gradients",
    "--ppo.update-graph", "off",
]
TINY_OPTIONS = {
    "mt10-moore": [*SAC_TINY, "--sac.encoder.num-experts", "2"],
    "mt50-moore": [*SAC_TINY, "--sac.encoder.num-experts", "2"],
    "mt10-sm": [*SAC_TINY, "--sac.encoder.module-width", "8"],
    "mt10-paco": [*SAC_TINY, "--sac.encoder.num-parameter-sets", "2"],
    "mt50-brc": [
        *SAC_TINY, "--sac.encoder.task-embedding-dim", "4", "--sac.critic-width", "16", "--sac.num-bins", "11",
        "--replay.updates-per-step", "2",
    ],
    "mt10-mhsac-wide": SAC_TINY,
    "mt10-ppo-popart": PPO_TINY,
}
"""What each preset needs made tiny besides :data:`COMMON` (its other settings are the preset's)."""


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(TINY_OPTIONS))
def test_a_tiny_paper_preset_trains_and_resumes_exactly(tmp_path, capsys, preset):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    argv = [preset, *COMMON, *TINY_OPTIONS[preset]]
    assert train_main([*argv, "--total-steps", "400", "--run-dir", str(straight)]) == 0, capsys.readouterr().err
    assert train_main([*argv, "--total-steps", "200", "--run-dir", str(interrupted)]) == 0, capsys.readouterr().err
    assert load_latest(interrupted / "checkpoints")[1]["global_step"] == 200
    assert train_main(["--resume", str(interrupted), "--total-steps", "400"]) == 0, capsys.readouterr().err

    config_a, config_b = ({k: v for k, v in json.loads((run / "config.json").read_text()).items() if k != "run_dir"} for run in (straight, interrupted))
    assert config_a == config_b
    state_a = load_latest(straight / "checkpoints")[1]["agent"]["modules"]
    state_b = load_latest(interrupted / "checkpoints")[1]["agent"]["modules"]
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a), [k for k in state_a if not torch.equal(state_a[k], state_b[k])]
    assert all(torch.isfinite(v).all() for v in state_a.values() if v.is_floating_point())
    assert [p.name for p in list_checkpoints(straight / "checkpoints")] == [p.name for p in list_checkpoints(interrupted / "checkpoints")]
    losses = [r for r in training_records(straight) if any(k.startswith("losses/") for k in r)]
    assert losses  # it trained
    records_b = [r for r in training_records(interrupted) if not (r["step"] == 200 and "eval/success_rate" in r)]
    assert training_records(straight) == records_b
    assert (straight / "eval" / "final.json").read_text() == (interrupted / "eval" / "final.json").read_text()
