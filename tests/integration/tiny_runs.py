"""The tiny two-task runs the end-to-end tests train: settings and a comparison of their logs."""

from __future__ import annotations

from pathlib import Path

from mtrl.logging import read_metrics

EPISODE = 50  # steps per episode; 2 tasks -> 100 environment steps per vector episode
TINY = [
    "smoke",
    "--env.benchmark", "reach-v3,drawer-close-v3",
    "--env.max-episode-steps", str(EPISODE),
    "--sac.hidden-dims", "32", "32",
    "--replay.warmup-steps", "100",
    "--replay.batch-size-per-task", "16",
    "--log-every", "100",
    "--checkpoint-every", "200",
    "--final-eval-episodes", "1",
    "--torch-threads", "1",
    "--no-progress",
]

PPO_TINY = [
    "ppo-smoke",
    "--env.benchmark", "reach-v3,drawer-close-v3",
    "--env.max-episode-steps", str(EPISODE),
    "--ppo.hidden-dims", "32", "32",
    "--ppo.rollout-steps", str(EPISODE),  # one episode per rollout: 100 environment steps
    "--ppo.epochs", "2",
    "--ppo.minibatches", "2",
    "--log-every", "100",
    "--checkpoint-every", "200",
    "--final-eval-episodes", "1",
    "--torch-threads", "1",
    "--no-progress",
]

# For a run in a process of its own, which would compile the per-task gradients and the solver again
# (seconds each time) for a test about something else; the compiled path is what the in-process runs take.
NO_COMPILE = ["--sac.no-compile-gradients", "--balancer.no-compile-solver"]

# TINY's SAC settings as mtrl-sweep's --set values (the sweep's trials run as processes of their own: no compiling)
SWEEP_SETTINGS = [
    f"env.max-episode-steps={EPISODE}", "sac.hidden-dims=32,32", "replay.warmup-steps=100",
    "replay.batch-size-per-task=16", "log-every=100", "checkpoint-every=200", "final-eval-episodes=1",
    "torch-threads=1", "sac.compile-gradients=false", "balancer.compile-solver=false",
]


def training_records(run_dir: Path) -> list[dict]:
    """metrics.jsonl without wall-clock values."""
    return [{k: v for k, v in r.items() if k not in ("time", "charts/SPS")} for r in read_metrics(run_dir / "metrics.jsonl")]
