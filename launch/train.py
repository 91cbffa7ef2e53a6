"""``mtrl-train``: train multi-task SAC or PPO on Meta-World from a preset, or resume a run.

    mtrl-train smoke                                  # a few-minute MT10 SAC run on CPU
    mtrl-train ppo-smoke                              # a one-minute MT10 PPO run on CPU
    mtrl-train mt10 --balancer.name pcgrad --seed 2   # the CAGrad paper's MT10 setup, PCGrad
    mtrl-train mt10-ppo --balancer.name mean          # Meta-World+'s MT10 PPO settings
    mtrl-train mt10 --env.benchmark reach-v3,drawer-close-v3 --total-steps 100000
    mtrl-train --resume runs/MT10__sac__cagrad__1__20261121-120000 [--total-steps N]

The algorithm is ``--algo`` (set by the preset); a resumed run continues with its checkpoint's.

Bad arguments end with a one-line error and exit status 2; nothing is created or overwritten.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from pathlib import Path

import tyro

from envs import task_names
from launch.config import PRESETS, TrainConfig
from launch.run_dir import RunDirError, create_run_dir, default_run_dir, existing_run_dir, save_config
from launch.runtime import tune_glibc_malloc
from launch.trainer import CHECKPOINT_DIR, Trainer, make_trainer, resolve_device
from mtrl.checkpoint import CheckpointError, load_latest, set_aside_newer


def parse_config(argv: list[str]) -> TrainConfig:
    """A preset name, then overrides of any field (``--help`` lists them all)."""
    return tyro.extras.overridable_config_cli(PRESETS, args=argv, description=__doc__)


def check_device(config: TrainConfig) -> None:
    """Refuse a device this machine lacks, and bf16 autocast anywhere but on CUDA."""
    device = resolve_device(config.device)
    if getattr(config, config.algo).bf16 and device.type != "cuda":
        raise ValueError(f"{config.algo}.bf16 needs CUDA, but the run's device is {device.type!r}; leave bf16 off on the CPU")


def start(config: TrainConfig) -> Trainer:
    run_dir = config.run_dir or default_run_dir(config.env.benchmark, config.algo, config.balancer.name, config.seed)
    # bad names or values fail here, before any file is written
    config.balancer.build(len(task_names(config.env.benchmark)), seed=0)
    check_device(config)
    run_dir = create_run_dir(Path(run_dir))
    config = dataclasses.replace(config, run_dir=run_dir)
    save_config(run_dir, config)
    return make_trainer(config, run_dir)


def resume(argv: list[str]) -> Trainer:
    parser = argparse.ArgumentParser(prog="mtrl-train --resume", description="Continue a run from its newest intact checkpoint.")
    parser.add_argument("--resume", type=Path, required=True, metavar="RUN_DIR")
    parser.add_argument("--total-steps", type=int, default=None, help="extend (or shorten) the run to this many environment steps")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="move the run to another device")
    args = parser.parse_args(argv)
    run_dir = existing_run_dir(args.resume)
    with warnings.catch_warnings(record=True) as skipped:
        warnings.simplefilter("always")
        path, payload = load_latest(run_dir / CHECKPOINT_DIR, map_location="cpu")
    for warning in skipped:
        print(f"mtrl-train: {warning.message}", file=sys.stderr)
    for moved in set_aside_newer(run_dir / CHECKPOINT_DIR, path):
        print(f"mtrl-train: moved the broken checkpoint aside to {moved}", file=sys.stderr)
    config: TrainConfig = payload["config"]
    overrides = {k: v for k, v in (("total_steps", args.total_steps), ("device", args.device)) if v is not None}
    config = dataclasses.replace(config, run_dir=run_dir, **overrides)
    check_device(config)
    print(f"mtrl-train: resuming {run_dir} from {path.name} (step {payload['global_step']})", file=sys.stderr)
    return make_trainer(config, run_dir, resume=payload)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    tune_glibc_malloc()  # the per-task gradients are large and allocated every update
    try:
        trainer = resume(argv) if any(a == "--resume" or a.startswith("--resume=") for a in argv) else start(parse_config(argv))
    except (ValueError, RunDirError, CheckpointError) as error:
        print(f"mtrl-train: error: {error}", file=sys.stderr)
        return 2
    if getattr(trainer.config, trainer.config.algo).compile_gradients:
        print(
            "mtrl-train: the first updates compile the per-task gradients with torch.compile "
            f"(--{trainer.config.algo}.no-compile-gradients to skip): tens of seconds the first time, then cached on disk",
            file=sys.stderr,
        )
    result = trainer.run()
    print(f"final success rate {result.success_rate:.3f} over {len(result.per_task_success)} tasks; run: {trainer.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
