"""``mtrl-eval``: evaluate a saved run and print a per-task table plus the mean.

    mtrl-eval runs/MT10__sac__cagrad__1__20261121-120000
    mtrl-eval RUN_DIR --checkpoint step_000000500000 --episodes 10
    mtrl-eval RUN_DIR --video reach-v3 window-close-v3     # GIF and MP4 under RUN_DIR/videos/
    mtrl-eval RUN_DIR --video --video-format mp4           # every task, MP4 only

Deterministic actions, Meta-World's evaluation protocol (an episode succeeds if the success flag is
set at any step), on the run's own benchmark and goals. The table is also written as JSON to
``RUN_DIR/eval/mtrl-eval_<checkpoint>_<episodes>.json``. Every argument is checked before any
environment is built or file written; ``--checkpoint`` names a checkpoint inside the run. While
it evaluates, it holds the run's lock shared: a run being trained is not evaluated, and a run
being evaluated is not resumed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from envs import EnvWorkerError, EvalResult, RendererUnavailableError, evaluate, task_names
from envs.video import check_video_path, record_episodes, write_video
from launch.config import TrainConfig, config_from_plain
from launch.run_dir import RunDirError, RunLock
from launch.errors import first_line
from launch.factory import build_agent, make_eval_envs, resolve_device
from launch.run_dir import CHECKPOINT_DIR, EVAL_DIR
from mtrl.checkpoint import CHECKPOINT_PREFIX, CheckpointError, load_checkpoint, load_latest
from mtrl.config_io import ConfigDataError

PROGRAM = "mtrl-eval"
VIDEO_FORMATS = {"gif": (".gif",), "mp4": (".mp4",), "both": (".gif", ".mp4")}
"""``--video-format`` -> the files written for every task."""


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run directory written by mtrl-train")
    parser.add_argument(
        "--checkpoint", default=None, help="a checkpoint name in RUN_DIR/checkpoints (e.g. step_000000500000); default: the newest intact one"
    )
    parser.add_argument("--episodes", type=int, default=50, help="episodes per task (50 is Meta-World's protocol)")
    parser.add_argument("--video", nargs="*", default=None, metavar="TASK", help="record one episode per task (all tasks if none named)")
    parser.add_argument(
        "--video-format", choices=sorted(VIDEO_FORMATS), default="both", help="what --video writes: gif, mp4 or both (default)"
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--num-workers", type=int, default=None, help="environment worker processes (default: the run's)")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """What can be checked before the run is opened."""
    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    if args.num_workers is not None and args.num_workers < 0:
        raise ValueError(f"--num-workers must be >= 0 (0: in this process), got {args.num_workers}")
    resolve_device(args.device)
    if args.video is not None:
        for suffix in VIDEO_FORMATS[args.video_format]:
            check_video_path(Path(f"video{suffix}"))
    checkpoints = args.run_dir / CHECKPOINT_DIR
    if not checkpoints.is_dir():
        raise ValueError(f"{args.run_dir}: not a run directory (no {CHECKPOINT_DIR}/ in it)")
    name = args.checkpoint
    if name is not None and (Path(name).name != name or not name.startswith(CHECKPOINT_PREFIX)):
        raise ValueError(f"--checkpoint must be the name of a checkpoint in {checkpoints} (step_...), got {name!r}")


def load_run(args: argparse.Namespace) -> tuple[Path, dict[str, Any], TrainConfig]:
    """Load the checkpoint asked for and check the arguments that depend on its run; nothing is built or written."""
    checkpoints = args.run_dir / CHECKPOINT_DIR
    if args.checkpoint:
        name = args.checkpoint
        path = checkpoints / name
        if not path.is_dir():
            raise ValueError(f"no checkpoint {name!r} in {checkpoints}")
        payload = load_checkpoint(path, map_location="cpu")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path, payload = load_latest(checkpoints, map_location="cpu")
    config = config_from_plain(payload["config"])
    tasks = task_names(config.env.benchmark)
    unknown = [task for task in args.video or [] if task not in tasks]
    if unknown:
        raise ValueError(f"--video: no task {unknown[0]!r} in this run; its tasks: {', '.join(tasks)}")
    return path, payload, config


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    lock = None
    try:
        check_args(args)
        lock = RunLock(args.run_dir, shared=True, program=PROGRAM)
        path, payload, config = load_run(args)
    except (ValueError, RunDirError, CheckpointError, ConfigDataError) as error:
        print(f"{PROGRAM}: error: {first_line(error)}", file=sys.stderr)
        if lock is not None:
            lock.release()
        return 2
    try:
        return _evaluate(args, path, payload, config)
    except (EnvWorkerError, OSError) as error:
        print(f"{PROGRAM}: error: {first_line(error)}", file=sys.stderr)
        return 1
    finally:
        if lock is not None:
            lock.release()


def _evaluate(args: argparse.Namespace, path: Path, payload: dict[str, Any], config: TrainConfig) -> int:
    if args.num_workers is not None:
        config = dataclasses.replace(config, env=dataclasses.replace(config.env, num_workers=args.num_workers))
    device = resolve_device(args.device)
    with make_eval_envs(config) as envs:
        agent = build_agent(config, envs, device)
        agent.load_training_state(payload["agent"])
        result = evaluate(agent.numpy_policy(deterministic=True), envs, args.episodes)
        task_list = list(envs.task_names)
    print(f"{args.run_dir} @ {path.name} (step {payload['global_step']}), {args.episodes} episodes per task")
    print(format_table(result))
    out = args.run_dir / EVAL_DIR
    out.mkdir(exist_ok=True)
    record = {"checkpoint": path.name, "step": payload["global_step"], "episodes_per_task": args.episodes, **result.to_dict()}
    (out / f"mtrl-eval_{path.name}_{args.episodes}.json").write_text(json.dumps(record, indent=2) + "\n")

    if args.video is not None:
        for task in args.video or task_list:
            try:
                video = record_episodes(single_task_policy(agent, task_list.index(task), len(task_list)), config.env, config.seed, task)
            except RendererUnavailableError as error:
                print(f"{PROGRAM}: no video: {error}", file=sys.stderr)
                return 1
            for suffix in VIDEO_FORMATS[args.video_format]:
                print(f"video: {write_video(video, args.run_dir / 'videos' / path.name / f'{task}{suffix}')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
