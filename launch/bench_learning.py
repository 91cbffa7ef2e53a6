"""``mtrl-bench-learning``: checks that multi-task SAC really learns, on the CPU, in minutes.

Three parts, each printed as JSON (and written to ``--out``):

- ``smoke``: the ``smoke`` preset as a user runs it (wall time, final success).
- ``multitask``: three easy MT10 tasks, ``reach-v3``, ``drawer-close-v3`` and ``window-close-v3``,
  with each balancer of ``--balancers`` (default Mean and CAGrad); the success-rate curve from the
  periodic evaluations. These three are the MT10 tasks that single-task SAC solves in the fewest
  steps (a reach to a goal, and two pushes of a handle along one axis), so real learning shows
  within a CPU budget, while their gradients still differ (a free-space reach against contact
  tasks) so the balancer has something to do.
- ``sb3``: the same agent on one task (``reach-v3``, the Mean balancer) against stable-baselines3
  SAC with the same network sizes, batch size, update ratio, learning rates, warm-up and initial
  temperature, both stepping one in-process environment; success curves from the same evaluation
  protocol and environment steps per second of training (evaluation time excluded), measured in
  one run.
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

from agents.sac import SACConfig
from envs import EnvConfig, evaluate, make_envs
from launch.config import PRESETS, BalancerConfig, TrainConfig
from launch.trainer import EVAL_DIR, SACTrainer

EASY_TASKS = "reach-v3,drawer-close-v3,window-close-v3"


def _curve(run_dir: Path) -> list[dict]:
    """The periodic evaluations of a run, oldest first."""
    records = [json.loads(p.read_text()) for p in sorted((run_dir / EVAL_DIR).glob("step_*.json"))]
    return [{"step": r["step"], "success_rate": r["success_rate"], "per_task_success": r["per_task_success"]} for r in records]


def _train(config: TrainConfig, run_dir: Path) -> dict:
    trainer = SACTrainer(dataclasses.replace(config, run_dir=run_dir), run_dir)
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


def smoke(root: Path) -> dict:
    started = time.perf_counter()
    result = _train(dataclasses.replace(PRESETS["smoke"][1], progress=False), root / "smoke")
    return {"wall_seconds_including_setup": round(time.perf_counter() - started, 1), **result}


def learning_config(
    benchmark: str, balancer: BalancerConfig, steps_per_task: int, hidden: tuple[int, ...], seed: int, eval_points: int, threads: int = 1
) -> TrainConfig:
    """Small-network SAC with the paper's optimisation settings, evaluated ``eval_points`` times."""
    num_tasks = len(benchmark.split(","))
    total = steps_per_task * num_tasks
    episode = 500 * num_tasks
    return TrainConfig(
        env=EnvConfig(benchmark=benchmark, one_hot=num_tasks > 1),
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
        learning_rate=config.sac.critic_lr,
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
        episodes = 50 if done >= steps else config.eval_episodes
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="smoke,multitask,sb3", help="comma-separated: smoke, multitask, sb3")
    parser.add_argument("--balancers", default="mean,cagrad", help="balancers of the multitask part")
    parser.add_argument("--steps-per-task", type=int, default=60_000, help="multitask part: environment steps per task")
    parser.add_argument("--sb3-steps", type=int, default=30_000, help="sb3 part: environment steps")
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256], help="hidden sizes of every network")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads (both trainers)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    hidden = tuple(args.hidden)
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
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
