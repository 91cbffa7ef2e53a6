"""``mtrl-bench-learning``: checks that multi-task SAC and PPO really learn, on the CPU.

Parts, each printed as JSON (and written to ``--out``):

- ``smoke`` / ``ppo-smoke``: the ``smoke`` / ``ppo-smoke`` preset as a user runs it (wall time,
  final success).
- ``multitask``: three easy MT10 tasks, ``reach-v3``, ``drawer-close-v3`` and ``window-close-v3``,
  with each balancer of ``--balancers`` (default Mean and CAGrad); the success-rate curve from the
  periodic evaluations. These three are the MT10 tasks that single-task SAC solves in the fewest
  steps (a reach to a goal, and two pushes of a handle along one axis), so real learning shows
  within a CPU budget, while their gradients still differ (a free-space reach against contact
  tasks) so the balancer has something to do.
- ``sb3``: the same agent on one task (``reach-v3``, the Mean balancer) against stable-baselines3
  SAC (:mod:`benchmarks.sb3`) with the same network sizes, batch size, update ratio, learning rates, warm-up and initial
  temperature; success curves from the same evaluation protocol and environment steps per second
  of training (evaluation time excluded), measured in one run. Each trainer steps its environment
  as it is built to: ours in a worker process while the learner updates (``step_async``, update,
  ``step_wait``), stable-baselines3 in-process between its updates.
- ``ppo-multitask``: multi-task PPO on the same three tasks with each balancer of ``--balancers``:
  small networks, several environments per task and short rollouts of whole episodes (so learning
  shows within a CPU budget); the success-rate curve from the periodic evaluations.
- ``ppo-sb3``: our PPO on ``reach-v3`` (the Mean balancer) against stable-baselines3 PPO with the
  same network sizes (separate actor and critic MLPs, ReLU), environments, rollout length, epochs,
  minibatch size, Adam learning rate and epsilon, discount, GAE lambda, clip range, entropy weight,
  gradient-norm clip, initial log-std and observation normalisation; success curves from the same
  evaluation protocol and environment steps per second of training, in one run. Differences left:
  stable-baselines3 has one optimizer and one gradient clip over actor and critic together (value
  coefficient 0.5), its own initialisation (orthogonal), and ``VecNormalize`` updates its statistics
  every step where ours updates them after each rollout.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import tyro

from agents.ppo import PPOConfig
from agents.sac import SACConfig
from benchmarks import sb3
from benchmarks.report import check_report_file, emit_report
from envs import EnvConfig
from launch.config import BalancerConfig, PPOTrainConfig, SACTrainConfig, TrainConfig
from launch.presets import PRESETS, QUICKSTART_TASKS
from launch.factory import make_trainer
from launch.replay_loop import ReplayLoopConfig
from launch.run_dir import EVAL_DIR
from launch.runtime import tune_glibc_malloc
from mtrl.balancers import BALANCERS

EASY_TASKS = QUICKSTART_TASKS
SB3_TASK = "reach-v3"
PARTS = ("smoke", "multitask", "sb3", "ppo-smoke", "ppo-multitask", "ppo-sb3")
EVAL_POINTS = 8
"""About how many periodic evaluations each run of the multitask and sb3 parts makes (SAC and PPO)."""
POSITIVE_ARGS = (
    "steps_per_task",
    "sb3_steps",
    "ppo_steps_per_task",
    "ppo_sb3_steps",
    "ppo_envs_per_task",
    "ppo_rollout_steps",
    "ppo_epochs",
    "ppo_minibatches",
    "torch_threads",
)


@dataclasses.dataclass(frozen=True)
class PPOBenchSizes:
    """Rollout and minibatch sizes of the PPO parts (ours and stable-baselines3's alike)."""

    envs_per_task: int = 4
    rollout_steps: int = 500  # per environment: one 500-step episode, so a rollout is 2000 samples per task
    epochs: int = 10
    minibatches: int = 16  # 125 samples per task per minibatch


@dataclasses.dataclass(frozen=True)
class Args:
    """Check that multi-task SAC and PPO learn: smoke presets, three easy MT10 tasks, and stable-baselines3 on one."""

    parts: str = "smoke,multitask,sb3"
    """Comma-separated parts to run, any of: smoke, multitask, sb3, ppo-smoke, ppo-multitask, ppo-sb3."""
    balancers: str = "mean,cagrad"
    """Comma-separated balancers of the multitask parts (names registered in mtrl.balancers)."""
    steps_per_task: int = 60_000
    """multitask part: environment steps per task."""
    sb3_steps: int = 30_000
    """sb3 part: environment steps."""
    ppo_steps_per_task: int = 200_000
    """ppo-multitask part: environment steps per task (rounded down to whole rollouts)."""
    ppo_sb3_steps: int = 200_000
    """ppo-sb3 part: environment steps (rounded down to whole rollouts)."""
    ppo_envs_per_task: int = PPOBenchSizes.envs_per_task
    """PPO parts: environments per task."""
    ppo_rollout_steps: int = PPOBenchSizes.rollout_steps
    """PPO parts: steps per environment per rollout."""
    ppo_epochs: int = PPOBenchSizes.epochs
    """PPO parts: epochs per rollout."""
    ppo_minibatches: int = PPOBenchSizes.minibatches
    """PPO parts: minibatches per epoch."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden sizes of every network."""
    seed: int = 1
    """Seed of every run (ours and stable-baselines3's)."""
    torch_threads: int = 1
    """torch intra-op threads (both trainers)."""
    out: Path | None = None
    """Also write the JSON report to this file (its directory must exist and be writable)."""


def _curve(run_dir: Path) -> list[dict]:
    """The periodic evaluations of a run, oldest first."""
    records = [json.loads(p.read_text()) for p in sorted((run_dir / EVAL_DIR).glob("step_*.json"))]
    return [{"step": r["step"], "success_rate": r["success_rate"], "per_task_success": r["per_task_success"]} for r in records]


def _train(config: TrainConfig, run_dir: Path) -> dict:
    """Train ``config`` in ``run_dir``: wall time, training steps per second, final success and the curve."""
    trainer = make_trainer(dataclasses.replace(config, run_dir=run_dir), run_dir)
    started = time.perf_counter()
    final = trainer.run()
    wall = time.perf_counter() - started
    return {
        "wall_seconds": round(wall, 1),
        "train_sps": round(config.total_steps / max(wall - trainer.eval_seconds, 1e-9), 1),
        "final_success_rate": final.success_rate,
        "final_per_task_success": final.per_task_success,
        "curve": _curve(run_dir),
    }


def smoke(root: Path, preset: str = "smoke") -> dict:
    """The preset as ``mtrl-train`` runs it (without the progress bar), set-up time included."""
    started = time.perf_counter()
    result = _train(dataclasses.replace(PRESETS[preset][1], progress=False), root / preset)
    return {"wall_seconds_including_setup": round(time.perf_counter() - started, 1), **result}


def learning_config(
    benchmark: str, balancer: BalancerConfig, steps_per_task: int, hidden: tuple[int, ...], seed: int, eval_points: int, threads: int = 1
) -> SACTrainConfig:
    """Small-network SAC with the paper's optimisation settings, evaluated ``eval_points`` times.

    The environments run in one worker process, overlapped with the updates.
    """
    num_tasks = len(benchmark.split(","))
    total = steps_per_task * num_tasks
    episode = 500 * num_tasks
    return SACTrainConfig(
        env=EnvConfig(benchmark=benchmark, one_hot=num_tasks > 1, num_workers=1),
        sac=SACConfig(hidden_dims=hidden),
        replay=ReplayLoopConfig(warmup_steps=1500 * num_tasks),
        balancer=balancer,
        seed=seed,
        total_steps=total,
        eval_every=max(episode, total // eval_points // episode * episode),
        eval_episodes=10,
        final_eval_episodes=50,
        checkpoint_every=0,
        log_every=5 * episode,
        progress=False,
        tensorboard=False,
        torch_threads=threads,
    )


def ppo_learning_config(
    benchmark: str,
    balancer: BalancerConfig,
    steps_per_task: int,
    hidden: tuple[int, ...],
    seed: int,
    eval_points: int,
    threads: int,
    sizes: PPOBenchSizes,
) -> PPOTrainConfig:
    """Small-network PPO (Meta-World+ optimisation settings otherwise), evaluated about ``eval_points`` times.

    Step counts are rounded down to whole rollouts (at least one).
    """
    num_tasks = len(benchmark.split(","))
    rollout = sizes.rollout_steps * sizes.envs_per_task * num_tasks  # environment steps per rollout
    total = max(rollout, steps_per_task * num_tasks // rollout * rollout)
    return PPOTrainConfig(
        env=EnvConfig(benchmark=benchmark, one_hot=num_tasks > 1, envs_per_task=sizes.envs_per_task),
        ppo=PPOConfig(hidden_dims=hidden, rollout_steps=sizes.rollout_steps, epochs=sizes.epochs, minibatches=sizes.minibatches),
        balancer=balancer,
        seed=seed,
        total_steps=total,
        eval_every=max(rollout, total // eval_points // rollout * rollout),
        eval_episodes=10,
        final_eval_episodes=50,
        checkpoint_every=0,
        log_every=rollout,
        progress=False,
        tensorboard=False,
        torch_threads=threads,
    )


def _hidden_dims(config: TrainConfig) -> list[int]:
    """The hidden sizes of the networks of ``config``'s algorithm."""
    return list(config.algorithm.hidden_dims)


ConfigBuilder = Callable[[str, BalancerConfig, int], TrainConfig]
"""``(benchmark, balancer, steps_per_task) -> config`` of one algorithm's runs (see :func:`run_parts`)."""


def multitask(root: Path, prefix: str, names: list[str], steps_per_task: int, build: ConfigBuilder, **extra: Any) -> dict:
    """A part of one run on :data:`EASY_TASKS` per balancer name (CAGrad-style ones with ``c`` 0.5), the runs keyed by name."""
    configs = {name: build(EASY_TASKS, BalancerConfig(name=name, c=0.5), steps_per_task) for name in names}
    runs = {name: _train(config, root / f"{prefix}_{name}") for name, config in configs.items()}
    return {
        "tasks": EASY_TASKS.split(","),
        "steps_per_task": steps_per_task,
        "hidden_dims": _hidden_dims(configs[names[0]]),
        **extra,
        "runs": runs,
    }


def sb3_comparison(run_dir: Path, config: TrainConfig, theirs: Callable[[TrainConfig], dict], **extra: Any) -> dict:
    """Our trainer on ``config`` (in ``run_dir``), then stable-baselines3's ``theirs(config)``, in this process."""
    ours = _train(config, run_dir)
    other = theirs(config)
    return {
        "task": config.env.benchmark,
        "steps": config.total_steps,
        "hidden_dims": _hidden_dims(config),
        **extra,
        "torch_threads": torch.get_num_threads(),
        "mtrl": ours,
        "stable_baselines3": other,
        "sps_ratio_mtrl_over_sb3": round(ours["train_sps"] / other["train_sps"], 2),
    }


def _check_names(flag: str, value: str, allowed: tuple[str, ...], kind: str) -> None:
    """Every comma-separated entry of ``value`` is in ``allowed``, once, and there is at least one."""
    if not value.strip():
        raise SystemExit(f"{flag}: no {kind} given; allowed: {', '.join(allowed)}")
    names = value.split(",")
    for name in names:
        if name not in allowed:
            raise SystemExit(f"{flag}: unknown {kind} {name!r}; allowed: {', '.join(allowed)}")
        if names.count(name) > 1:
            raise SystemExit(f"{flag}: {kind} {name!r} is given twice")


def ppo_sizes(args: Args) -> PPOBenchSizes:
    """The PPO parts' sizes from the command line."""
    return PPOBenchSizes(args.ppo_envs_per_task, args.ppo_rollout_steps, args.ppo_epochs, args.ppo_minibatches)


def check_args(args: Args) -> None:
    """Reject bad arguments before anything trains, with a one-line ``SystemExit`` naming the bad value."""
    _check_names("--parts", args.parts, PARTS, "part")
    _check_names("--balancers", args.balancers, tuple(BALANCERS), "balancer")
    for dest in POSITIVE_ARGS:
        value = getattr(args, dest)
        if value < 1:
            raise SystemExit(f"--{dest.replace('_', '-')} must be >= 1, got {value}")
    if not args.hidden or any(size < 1 for size in args.hidden):
        raise SystemExit(f"--hidden sizes must be >= 1, got {' '.join(map(str, args.hidden))}")
    try:  # the PPO sizes are checked by the training configuration, which the PPO parts build later
        ppo_learning_config(
            EASY_TASKS, BalancerConfig(), args.ppo_steps_per_task, args.hidden, args.seed, EVAL_POINTS, args.torch_threads, ppo_sizes(args)
        )
    except ValueError as error:
        raise SystemExit(f"PPO sizes: {error}") from None
    if args.out is not None:
        check_report_file("--out", args.out)


def run_parts(args: Args, root: Path) -> dict:
    """Every part of ``args.parts``, in the order of :data:`PARTS`, with its run directories under ``root``."""
    parts, names, hidden, sizes = args.parts.split(","), args.balancers.split(","), args.hidden, ppo_sizes(args)
    threads, seed = args.torch_threads, args.seed

    def sac(benchmark: str, balancer: BalancerConfig, steps_per_task: int) -> TrainConfig:
        return learning_config(benchmark, balancer, steps_per_task, hidden, seed, eval_points=EVAL_POINTS, threads=threads)

    def ppo(benchmark: str, balancer: BalancerConfig, steps_per_task: int) -> TrainConfig:
        return ppo_learning_config(benchmark, balancer, steps_per_task, hidden, seed, EVAL_POINTS, threads, sizes)

    report: dict = {}
    if "smoke" in parts:
        report["smoke"] = smoke(root)
    if "multitask" in parts:
        report["multitask"] = multitask(root, "multitask", names, args.steps_per_task, sac)
    if "sb3" in parts:
        report["sb3"] = sb3_comparison(root / "sb3_ours", sac(SB3_TASK, BalancerConfig(name="mean"), args.sb3_steps), sb3.train_sac)
    if "ppo-smoke" in parts:
        report["ppo-smoke"] = smoke(root, "ppo-smoke")
    if "ppo-multitask" in parts:
        report["ppo-multitask"] = multitask(root, "ppo_multitask", names, args.ppo_steps_per_task, ppo, sizes=dataclasses.asdict(sizes))
    if "ppo-sb3" in parts:
        config = ppo(SB3_TASK, BalancerConfig(name="mean"), args.ppo_sb3_steps)
        report["ppo-sb3"] = sb3_comparison(root / "ppo_sb3_ours", config, sb3.train_ppo, sizes=dataclasses.asdict(sizes))
    return report


def main(argv: list[str] | None = None) -> int:
    """``mtrl-bench-learning``: check the arguments, run the parts in a temporary directory, print (and write) the report."""
    args = tyro.cli(Args, args=argv, description=__doc__)
    check_args(args)
    tune_glibc_malloc()  # as mtrl-train does (stable-baselines3 runs in this process too)
    with tempfile.TemporaryDirectory(prefix="mtrl-bench-learning-") as tmp:
        report = run_parts(args, Path(tmp))
    emit_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
