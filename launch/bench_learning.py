"""``mtrl-bench-learning``: checks that multi-task SAC and PPO really learn, on the CPU, in minutes.

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
  SAC with the same network sizes, batch size, update ratio, learning rates, warm-up and initial
  temperature; success curves from the same evaluation protocol and environment steps per second
  of training (evaluation time excluded), measured in one run. Each trainer steps its environment
  as it is built to: ours in a worker process while the learner updates (``step_async``, update,
  ``step_wait``), stable-baselines3 in-process between its updates.
- ``ppo-multitask``: multi-task PPO on the same three tasks with each balancer of ``--balancers``:
  small networks, several environments per task and short rollouts of whole episodes (so learning
  shows within about 30 minutes on the CPU); the success-rate curve from the periodic evaluations.
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

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from agents.ppo import PPOConfig
from agents.sac import SACConfig
from envs import EnvConfig, evaluate, make_envs
from launch.config import PRESETS, BalancerConfig, TrainConfig
from launch.runtime import tune_glibc_malloc
from launch.factory import make_trainer
from launch.run_dir import EVAL_DIR
from mtrl.balancers import BALANCERS

EASY_TASKS = "reach-v3,drawer-close-v3,window-close-v3"
PARTS = ("smoke", "multitask", "sb3", "ppo-smoke", "ppo-multitask", "ppo-sb3")
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


def _curve(run_dir: Path) -> list[dict]:
    """The periodic evaluations of a run, oldest first."""
    records = [json.loads(p.read_text()) for p in sorted((run_dir / EVAL_DIR).glob("step_*.json"))]
    return [{"step": r["step"], "success_rate": r["success_rate"], "per_task_success": r["per_task_success"]} for r in records]


def _train(config: TrainConfig, run_dir: Path) -> dict:
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
    started = time.perf_counter()
    result = _train(dataclasses.replace(PRESETS[preset][1], progress=False), root / preset)
    return {"wall_seconds_including_setup": round(time.perf_counter() - started, 1), **result}


def learning_config(
    benchmark: str, balancer: BalancerConfig, steps_per_task: int, hidden: tuple[int, ...], seed: int, eval_points: int, threads: int = 1
) -> TrainConfig:
    """Small-network SAC with the paper's optimisation settings, evaluated ``eval_points`` times.

    The environments run in one worker process, overlapped with the updates.
    """
    num_tasks = len(benchmark.split(","))
    total = steps_per_task * num_tasks
    episode = 500 * num_tasks
    return TrainConfig(
        env=EnvConfig(benchmark=benchmark, one_hot=num_tasks > 1, num_workers=1),
        sac=SACConfig(hidden_dims=hidden),
        balancer=balancer,
        seed=seed,
        total_steps=total,
        warmup_steps=1500 * num_tasks,
        eval_every=max(episode, total // eval_points // episode * episode),
        eval_episodes=10,
        final_eval_episodes=50,
        checkpoint_every=0,
        log_every=5 * episode,
        progress=False,
        tensorboard=False,
        torch_threads=threads,
    )


def multitask(root: Path, balancers: list[str], steps_per_task: int, hidden: tuple[int, ...], seed: int, threads: int) -> dict:
    out = {}
    for name in balancers:
        balancer = BalancerConfig(name=name, c=0.5)
        config = learning_config(EASY_TASKS, balancer, steps_per_task, hidden, seed, eval_points=8, threads=threads)
        out[name] = _train(config, root / f"multitask_{name}")
    return out


def sb3_comparison(root: Path, steps: int, hidden: tuple[int, ...], seed: int, threads: int) -> dict:
    """Our agent vs stable-baselines3 SAC on reach-v3, same sizes and protocol, one run."""
    import gymnasium as gym
    import metaworld  # noqa: F401  (registers the Meta-World environments)
    import torch
    from stable_baselines3 import SAC

    config = learning_config("reach-v3", BalancerConfig(name="mean"), steps, hidden, seed, eval_points=8, threads=threads)
    ours = _train(config, root / "sb3_ours")

    env = gym.make("Meta-World/MT1", env_name="reach-v3", seed=seed, max_episode_steps=config.env.max_episode_steps)
    model = SAC(
        "MlpPolicy",
        env,
        learning_rate=config.sac.critic_optimizer.lr,
        buffer_size=config.buffer_capacity_per_task,
        learning_starts=config.warmup_steps,
        batch_size=config.batch_size_per_task,
        tau=config.sac.tau,
        gamma=config.sac.gamma,
        train_freq=1,
        gradient_steps=int(config.updates_per_step),
        ent_coef=f"auto_{config.sac.init_temperature}",
        policy_kwargs={"net_arch": list(hidden)},
        seed=seed,
        device="cpu",
    )
    eval_envs = make_envs(dataclasses.replace(config.env, envs_per_task=1), seed=seed)
    eval_state = eval_envs.get_rng_state()

    def sb3_policy(obs: np.ndarray) -> np.ndarray:
        return model.predict(obs, deterministic=True)[0]

    curve, train_seconds, done = [], 0.0, 0
    while done < steps:
        chunk = min(config.eval_every, steps - done)
        started = time.perf_counter()
        model.learn(chunk, reset_num_timesteps=False)
        train_seconds += time.perf_counter() - started
        done += chunk
        eval_envs.set_rng_state(eval_state)
        episodes = config.final_eval_episodes if done >= steps else config.eval_episodes
        result = evaluate(sb3_policy, eval_envs, episodes)
        curve.append({"step": done, "success_rate": result.success_rate, "episodes_per_task": episodes})
    eval_envs.close()
    env.close()
    sb3 = {"train_sps": round(steps / train_seconds, 1), "final_success_rate": curve[-1]["success_rate"], "curve": curve}
    return {
        "task": "reach-v3",
        "steps": steps,
        "hidden_dims": list(hidden),
        "torch_threads": torch.get_num_threads(),
        "mtrl": ours,
        "stable_baselines3": sb3,
        "sps_ratio_mtrl_over_sb3": round(ours["train_sps"] / sb3["train_sps"], 2),
    }


def ppo_learning_config(
    benchmark: str,
    balancer: BalancerConfig,
    steps_per_task: int,
    hidden: tuple[int, ...],
    seed: int,
    eval_points: int,
    threads: int,
    sizes: PPOBenchSizes,
) -> TrainConfig:
    """Small-network PPO (Meta-World+ optimisation settings otherwise), evaluated about ``eval_points`` times.

    Step counts are rounded down to whole rollouts (at least one).
    """
    num_tasks = len(benchmark.split(","))
    rollout = sizes.rollout_steps * sizes.envs_per_task * num_tasks  # environment steps per rollout
    total = max(rollout, steps_per_task * num_tasks // rollout * rollout)
    return TrainConfig(
        env=EnvConfig(benchmark=benchmark, one_hot=num_tasks > 1, envs_per_task=sizes.envs_per_task),
        ppo=PPOConfig(hidden_dims=hidden, rollout_steps=sizes.rollout_steps, epochs=sizes.epochs, minibatches=sizes.minibatches),
        balancer=balancer,
        algo="ppo",
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


def ppo_multitask(
    root: Path, balancers: list[str], steps_per_task: int, hidden: tuple[int, ...], seed: int, threads: int, sizes: PPOBenchSizes
) -> dict:
    out = {}
    for name in balancers:
        balancer = BalancerConfig(name=name, c=0.5)
        config = ppo_learning_config(EASY_TASKS, balancer, steps_per_task, hidden, seed, 8, threads, sizes)
        out[name] = _train(config, root / f"ppo_multitask_{name}")
    return out


def ppo_sb3_comparison(root: Path, steps: int, hidden: tuple[int, ...], seed: int, threads: int, sizes: PPOBenchSizes) -> dict:
    """Our PPO vs stable-baselines3 PPO on reach-v3, same sizes, settings and protocol, one run."""
    import gymnasium as gym
    import metaworld  # noqa: F401  (registers the Meta-World environments)
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    config = ppo_learning_config("reach-v3", BalancerConfig(name="mean"), steps, hidden, seed, 8, threads, sizes)
    ours = _train(config, root / "ppo_sb3_ours")
    ppo = config.ppo

    def make_env(index: int):
        return lambda: gym.make(
            "Meta-World/MT1", env_name="reach-v3", seed=seed + index, max_episode_steps=config.env.max_episode_steps
        )

    torch.set_num_threads(threads)
    venv = VecNormalize(
        DummyVecEnv([make_env(i) for i in range(sizes.envs_per_task)]),
        norm_obs=True,
        norm_reward=False,
        clip_obs=ppo.obs_clip,
        gamma=ppo.gamma,
    )
    model = PPO(
        "MlpPolicy",
        venv,
        learning_rate=ppo.actor_optimizer.lr,
        n_steps=ppo.rollout_steps,
        batch_size=ppo.rollout_steps * sizes.envs_per_task // ppo.minibatches,
        n_epochs=ppo.epochs,
        gamma=ppo.gamma,
        gae_lambda=ppo.gae_lambda,
        clip_range=ppo.clip_coef,
        ent_coef=ppo.entropy_coef,
        max_grad_norm=ppo.actor_optimizer.max_grad_norm,
        target_kl=ppo.target_kl,
        normalize_advantage=ppo.normalize_advantages,
        policy_kwargs={
            "net_arch": {"pi": list(hidden), "vf": list(hidden)},
            "activation_fn": torch.nn.ReLU,
            "log_std_init": ppo.init_log_std,
        },
        seed=seed,
        device="cpu",
    )
    eval_envs = make_envs(dataclasses.replace(config.env, envs_per_task=1), seed=seed)
    eval_state = eval_envs.get_rng_state()

    def sb3_policy(obs: np.ndarray) -> np.ndarray:
        return model.predict(venv.normalize_obs(obs), deterministic=True)[0]

    curve, train_seconds = [], 0.0
    while model.num_timesteps < config.total_steps:
        chunk = min(config.eval_every, config.total_steps - model.num_timesteps)
        started = time.perf_counter()
        model.learn(chunk, reset_num_timesteps=False)
        train_seconds += time.perf_counter() - started
        eval_envs.set_rng_state(eval_state)
        episodes = config.final_eval_episodes if model.num_timesteps >= config.total_steps else config.eval_episodes
        result = evaluate(sb3_policy, eval_envs, episodes)
        curve.append({"step": model.num_timesteps, "success_rate": result.success_rate, "episodes_per_task": episodes})
    eval_envs.close()
    venv.close()
    sb3 = {
        "train_sps": round(model.num_timesteps / train_seconds, 1),
        "final_success_rate": curve[-1]["success_rate"],
        "curve": curve,
    }
    return {
        "task": "reach-v3",
        "steps": config.total_steps,
        "hidden_dims": list(hidden),
        "sizes": dataclasses.asdict(sizes),
        "torch_threads": torch.get_num_threads(),
        "mtrl": ours,
        "stable_baselines3": sb3,
        "sps_ratio_mtrl_over_sb3": round(ours["train_sps"] / sb3["train_sps"], 2),
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


def ppo_sizes(args: argparse.Namespace) -> PPOBenchSizes:
    """The PPO parts' sizes from the command line."""
    return PPOBenchSizes(args.ppo_envs_per_task, args.ppo_rollout_steps, args.ppo_epochs, args.ppo_minibatches)


def check_args(args: argparse.Namespace) -> None:
    """Reject bad arguments before anything trains, with a one-line ``SystemExit`` naming the bad value."""
    _check_names("--parts", args.parts, PARTS, "part")
    _check_names("--balancers", args.balancers, tuple(BALANCERS), "balancer")
    for dest in POSITIVE_ARGS:
        value = getattr(args, dest)
        if value < 1:
            raise SystemExit(f"--{dest.replace('_', '-')} must be >= 1, got {value}")
    if any(size < 1 for size in args.hidden):
        raise SystemExit(f"--hidden sizes must be >= 1, got {' '.join(map(str, args.hidden))}")
    try:  # the PPO sizes are checked by the training configuration, which the PPO parts build later
        ppo_learning_config(
            EASY_TASKS, BalancerConfig(), args.ppo_steps_per_task, tuple(args.hidden), args.seed, 8, args.torch_threads, ppo_sizes(args)
        )
    except ValueError as error:
        raise SystemExit(f"PPO sizes: {error}") from None
    if args.out is not None:
        if args.out.is_dir():
            raise SystemExit(f"--out: {args.out} is a directory; give a file path for the JSON report")
        if not args.out.parent.is_dir():
            raise SystemExit(f"--out: {args.out.parent} is not an existing directory")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="smoke,multitask,sb3", help=f"comma-separated, any of: {', '.join(PARTS)}")
    parser.add_argument(
        "--balancers",
        default="mean,cagrad",
        help=f"comma-separated balancers of the multitask parts, any of: {', '.join(BALANCERS)}",
    )
    parser.add_argument("--steps-per-task", type=int, default=60_000, help="multitask part: environment steps per task")
    parser.add_argument("--sb3-steps", type=int, default=30_000, help="sb3 part: environment steps")
    parser.add_argument("--ppo-steps-per-task", type=int, default=200_000, help="ppo-multitask part: environment steps per task")
    parser.add_argument("--ppo-sb3-steps", type=int, default=200_000, help="ppo-sb3 part: environment steps")
    parser.add_argument("--ppo-envs-per-task", type=int, default=PPOBenchSizes.envs_per_task, help="PPO parts: environments per task")
    parser.add_argument("--ppo-rollout-steps", type=int, default=PPOBenchSizes.rollout_steps, help="PPO parts: steps per environment per rollout")
    parser.add_argument("--ppo-epochs", type=int, default=PPOBenchSizes.epochs, help="PPO parts: epochs per rollout")
    parser.add_argument("--ppo-minibatches", type=int, default=PPOBenchSizes.minibatches, help="PPO parts: minibatches per epoch")
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256], help="hidden sizes of every network")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads (both trainers)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here (its directory must exist)")
    args = parser.parse_args(argv)
    check_args(args)
    tune_glibc_malloc()  # as mtrl-train does (stable-baselines3 runs in this process too)
    parts = args.parts.split(",")
    hidden = tuple(args.hidden)
    sizes = ppo_sizes(args)
    report: dict = {}
    with tempfile.TemporaryDirectory(prefix="mtrl-bench-learning-") as tmp:
        root = Path(tmp)
        if "smoke" in parts:
            report["smoke"] = smoke(root)
        if "multitask" in parts:
            report["multitask"] = {
                "tasks": EASY_TASKS.split(","),
                "steps_per_task": args.steps_per_task,
                "hidden_dims": list(hidden),
                "runs": multitask(root, args.balancers.split(","), args.steps_per_task, hidden, args.seed, args.torch_threads),
            }
        if "sb3" in parts:
            report["sb3"] = sb3_comparison(root, args.sb3_steps, hidden, args.seed, args.torch_threads)
        if "ppo-smoke" in parts:
            report["ppo-smoke"] = smoke(root, "ppo-smoke")
        if "ppo-multitask" in parts:
            report["ppo-multitask"] = {
                "tasks": EASY_TASKS.split(","),
                "steps_per_task": args.ppo_steps_per_task,
                "hidden_dims": list(hidden),
                "sizes": dataclasses.asdict(sizes),
                "runs": ppo_multitask(
                    root, args.balancers.split(","), args.ppo_steps_per_task, hidden, args.seed, args.torch_threads, sizes
                ),
            }
        if "ppo-sb3" in parts:
            report["ppo-sb3"] = ppo_sb3_comparison(root, args.ppo_sb3_steps, hidden, args.seed, args.torch_threads, sizes)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
