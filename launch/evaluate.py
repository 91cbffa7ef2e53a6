"""``mtrl-eval``: evaluate a saved run and print a per-task table plus the mean.

    mtrl-eval runs/MT10__sac__cagrad__1__20261121-120000
    mtrl-eval RUN_DIR --checkpoint step_000000500000 --episodes 10
    mtrl-eval RUN_DIR --video reach-v3 window-close-v3     # GIFs under RUN_DIR/videos/

Deterministic actions, Meta-World's evaluation protocol (an episode succeeds if the success flag is
set at any step), on the run's own benchmark and goals. The table is also written as JSON to
``RUN_DIR/eval/mtrl-eval_<checkpoint>_<episodes>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from envs import EvalResult, RendererUnavailableError, evaluate, make_envs, record_video
from launch.config import TrainConfig
from launch.trainer import CHECKPOINT_DIR, EVAL_DIR, build_agent, policy_function, resolve_device
from mtrl.checkpoint import CheckpointError, load_checkpoint, load_latest


def format_table(result: EvalResult) -> str:
    width = max(len(task) for task in result.per_task_success)
    lines = [f"{'task':<{width}}  success  return", f"{'-' * width}  -------  ------"]
    for task, rate in result.per_task_success.items():
        lines.append(f"{task:<{width}}  {rate:7.3f}  {result.per_task_return[task]:6.1f}")
    mean_return = float(np.mean(list(result.per_task_return.values())))
    lines.append(f"{'mean':<{width}}  {result.success_rate:7.3f}  {mean_return:6.1f}")
    return "\n".join(lines)


def single_task_policy(agent, task_index: int, num_tasks: int):
    """``obs [1, obs_dim] -> action [1, A]`` for one task (the other tasks' rows are padding)."""

    def policy(obs: np.ndarray) -> np.ndarray:
        batch = torch.zeros(num_tasks, 1, obs.shape[-1], device=agent.device)
        batch[task_index, 0] = torch.as_tensor(obs[0], dtype=torch.float32, device=agent.device)
        return agent.act(batch, deterministic=True)[task_index].cpu().numpy()

    return policy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtrl-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run directory written by mtrl-train")
    parser.add_argument("--checkpoint", default=None, help="checkpoint name (e.g. step_000000500000); default: the newest intact one")
    parser.add_argument("--episodes", type=int, default=50, help="episodes per task (50 is Meta-World's protocol)")
    parser.add_argument("--video", nargs="*", default=None, metavar="TASK", help="record one GIF per task (all tasks if none named)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--num-workers", type=int, default=None, help="environment worker processes (default: the run's)")
    args = parser.parse_args(argv)
    try:
        if args.episodes < 1:
            raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
        checkpoints = args.run_dir / CHECKPOINT_DIR
        if not checkpoints.is_dir():
            raise ValueError(f"{args.run_dir}: not a run directory (no {CHECKPOINT_DIR}/ in it)")
        if args.checkpoint:
            path = checkpoints / args.checkpoint
            if not path.is_dir():
                raise ValueError(f"no checkpoint {args.checkpoint!r} in {checkpoints}")
            payload = load_checkpoint(path, map_location="cpu")
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                path, payload = load_latest(checkpoints, map_location="cpu")
    except (ValueError, CheckpointError) as error:
        print(f"mtrl-eval: error: {error}", file=sys.stderr)
        return 2

    config: TrainConfig = payload["config"]
    env_config = dataclasses.replace(config.env, envs_per_task=1)
    if args.num_workers is not None:
        env_config = dataclasses.replace(env_config, num_workers=args.num_workers)
    device = resolve_device(args.device)
    with make_envs(env_config, seed=config.seed) as envs:
        agent = build_agent(config, envs.obs_dim, envs.action_dim, envs.num_tasks, device)
        agent.load_training_state(payload["agent"])
        result = evaluate(policy_function(agent, envs.num_tasks), envs, args.episodes)
        task_list = list(envs.task_names)
    print(f"{args.run_dir} @ {path.name} (step {payload['global_step']}), {args.episodes} episodes per task")
    print(format_table(result))
    out = args.run_dir / EVAL_DIR
    out.mkdir(exist_ok=True)
    record = {"checkpoint": path.name, "step": payload["global_step"], "episodes_per_task": args.episodes, **result.to_dict()}
    (out / f"mtrl-eval_{path.name}_{args.episodes}.json").write_text(json.dumps(record, indent=2) + "\n")

    if args.video is not None:
        for task in args.video or task_list:
            if task not in task_list:
                print(f"mtrl-eval: error: no task {task!r} in this run; its tasks: {', '.join(task_list)}", file=sys.stderr)
                return 2
            target = args.run_dir / "videos" / path.name / f"{task}.gif"
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                record_video(single_task_policy(agent, task_list.index(task), len(task_list)), config.env, config.seed, task, target)
            except RendererUnavailableError as error:
                print(f"mtrl-eval: no video: {error}", file=sys.stderr)
                return 1
            print(f"video: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
