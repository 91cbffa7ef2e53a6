"""``mtrl-train``: train multi-task SAC or PPO on Meta-World from a preset, or resume a run.

    mtrl-train quickstart                             # the first run to try: multi-task PPO that learns in minutes
    mtrl-train smoke                                  # a few-minute MT10 SAC run on CPU
    mtrl-train ppo-smoke                              # a one-minute MT10 PPO run on CPU
    mtrl-train mt10 --balancer.name pcgrad --seed 2   # the CAGrad paper's MT10 setup, PCGrad
    mtrl-train mt10-ppo --balancer.name mean          # Meta-World+'s MT10 PPO settings
    mtrl-train mt10 --env.benchmark reach-v3,drawer-close-v3 --total-steps 100000
    mtrl-train --resume RUN_DIR [--total-steps N] [--sac.critic-optimizer.lr 1e-4 ...]
    mtrl-train --resume RUN_DIR --restart             # a run that stopped before its first checkpoint

The preset chooses the algorithm (SAC or PPO presets; ``--sac.*`` and the off-policy loop's
``--replay.*``, or ``--ppo.*``, are that algorithm's settings); a resumed run continues with its
checkpoint's.
``--resume`` takes the settings a user changes to continue or recover a run (RESUMABLE_FIELDS:
steps, device, learning rates, clipping, balancer options, ...); each resume is recorded in
``config_history.jsonl``.

Bad arguments end with a one-line error and exit status 2; nothing is created or overwritten. A
run that fails (a dead or hung simulator, a full disk, non-finite values) ends with one line
naming what happened and how to resume (exit status 1). SIGTERM or Ctrl-C: the run checkpoints at
the next episode boundary and exits 0 (a second signal stops it at once, exit status 1).
``--resume`` of a finished run (its final evaluation written at its last checkpoint, and no larger
``--total-steps``) trains and evaluates nothing: it says so in one line, prints the final
evaluation's table, draws the figures again (a run killed while drawing them ends here) and exits 0.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import tyro

from envs import EnvWorkerError, EvalResult, task_names
from launch.config import BALANCER_OPTIONS, TrainConfig, balancer_options_given, config_from_plain
from launch.presets import PRESETS
from launch.run_dir import (
    CHECKPOINT_DIR,
    RunDirError,
    RunLock,
    append_history,
    clear_for_restart,
    create_run_dir,
    default_run_dir,
    existing_run_dir,
    load_config_data,
    read_final_evaluation,
    save_config,
)
from launch.errors import first_line
from launch.evaluate import format_table
from launch.runtime import tune_glibc_malloc
from launch.stop import Interrupted, StopRequest
from launch.factory import make_trainer, resolve_device
from launch.trainer import BalancerFaultError, NonFiniteError, Trainer, TrainingStopped
from mtrl.balancers import BalancerPluginError
from mtrl.checkpoint import CheckpointError, CheckpointWriteError, list_checkpoints, load_latest, set_aside_newer
from mtrl.config_io import ConfigDataError, flatten
from mtrl.tracking import TrackingError, check_tracking

PROGRAM = "mtrl-train"

RESUMABLE_FIELDS = (
    "total_steps",
    "device",
    "torch_threads",
    "progress",
    "tensorboard",
    "track",
    "wandb_project",
    "wandb_entity",
    "keep_checkpoints",
    "final_eval_episodes",
    "eval_episodes",
    "env.num_workers",
    "env.worker_timeout_s",
    *(f"balancer.{option}" for option in BALANCER_OPTIONS),
    "*.compile_gradients",
    "sac.update_graph",
    "ppo.update_graph",
    "*.bf16",
    "*_optimizer.lr",
    "*_optimizer.max_grad_norm",
)
"""Fields ``--resume`` may change (patterns over dotted names): none of them shapes the saved state.
Every balancer option is among them (a balancer's state is shaped by the number of tasks only); its
name is not."""


def parse_config(argv: list[str]) -> TrainConfig:
    """A preset name, then overrides of any field (``--help`` lists them all)."""
    return tyro.extras.overridable_config_cli(PRESETS, args=argv, description=__doc__)


def check_config(config: TrainConfig, argv: list[str]) -> None:
    """What a config cannot check alone: the balancer for this benchmark and the options given for it, the
    device, and for a tracked run that wandb is installed and takes the project's name."""
    if config.track:
        check_tracking(config.wandb_project, config.wandb_entity)
    config.balancer.check(len(task_names(config.env.benchmark)), given=balancer_options_given(argv))
    device = resolve_device(config.device)
    if config.algorithm.bf16 and device.type != "cuda":
        raise ValueError(f"{config.algo}.bf16 needs CUDA, but the run's device is {device.type!r}; leave bf16 off on the CPU")


def start(config: TrainConfig, argv: list[str], stop: StopRequest, restart: Path | None = None) -> tuple[Trainer, RunLock]:
    """A new run (or, with ``restart``, a run that never checkpointed, started again in its directory)."""
    check_config(config, argv)  # bad names or values fail here, before any file is written
    if restart is None:
        run_dir = Path(config.run_dir or default_run_dir(config.env.benchmark, config.algo, config.balancer.name, config.seed))
        created = create_run_dir(run_dir)
        lock = RunLock(run_dir)
    else:
        run_dir, created = restart, None
        lock = RunLock(run_dir)
        clear_for_restart(run_dir)
    try:
        config = dataclasses.replace(config, run_dir=run_dir)
        save_config(run_dir, config.to_plain())
        append_history(run_dir, "restart" if restart else "start", step=0)
        return make_trainer(config, run_dir, stop=stop), lock
    except BaseException:
        lock.release()
        if created is not None:  # never leave a half-made run directory that blocks the next attempt
            shutil.rmtree(created, ignore_errors=True)
        raise


def split_resume_args(argv: list[str]) -> tuple[Path, bool, list[str]]:
    """``--resume RUN_DIR`` (or ``--resume=RUN_DIR``) and ``--restart`` out of ``argv``; the rest are field overrides."""
    run_dir, restart, rest = None, False, []
    items = iter(argv)
    for arg in items:
        if arg == "--resume":
            run_dir = next(items, None)
            if run_dir is None:
                raise ValueError("--resume needs a run directory: mtrl-train --resume RUN_DIR")
        elif arg.startswith("--resume="):
            run_dir = arg.split("=", 1)[1]
        elif arg == "--restart":
            restart = True
        else:
            rest.append(arg)
    assert run_dir is not None  # main only calls this when --resume is present
    return Path(run_dir), restart, rest


def changed_fields(old: TrainConfig, new: TrainConfig) -> dict[str, tuple[Any, Any]]:
    before, after = flatten(old.to_plain()), flatten(new.to_plain())
    return {name: (before[name], after[name]) for name in after if after[name] != before[name]}


def check_resumable(changes: dict[str, Any]) -> None:
    for name in changes:
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in RESUMABLE_FIELDS):
            raise ValueError(
                f"--resume: {name} cannot change when a run resumes (it shapes the saved state or the run's data); "
                f"what can: {', '.join(RESUMABLE_FIELDS)}"
            )


class FinishedRun(NamedTuple):
    """A run resumed with nothing left to do: its newest checkpoint is at ``total_steps`` or past it,
    and its final evaluation was written there."""

    run_dir: Path
    step: int
    total_steps: int
    final: EvalResult


def finished_run(run_dir: Path, step: int, total_steps: int) -> FinishedRun | None:
    """The run as it ended, when resuming it from ``step`` would train nothing and evaluate it a second time."""
    record = read_final_evaluation(run_dir)
    if step < total_steps or record is None or record["step"] != step:
        return None
    try:
        final = EvalResult(
            float(record["success_rate"]), dict(record["per_task_success"]), dict(record["per_task_return"]), int(record["episodes_per_task"])
        )
    except (KeyError, TypeError, ValueError):  # a damaged record: the resumed run evaluates again and rewrites it
        return None
    return FinishedRun(run_dir, step, total_steps, final)


def resume(argv: list[str], stop: StopRequest) -> tuple[Trainer | FinishedRun, RunLock]:
    """Check the overrides against the newest intact checkpoint's config, then (and only then) touch the run."""
    run_dir, restart, overrides = split_resume_args(argv)
    if restart:
        if not run_dir.is_dir():
            raise RunDirError(f"--resume {run_dir}: no such run directory")
        if list_checkpoints(run_dir / CHECKPOINT_DIR):
            raise RunDirError(f"--restart {run_dir}: the run has checkpoints; resume it without --restart")
        saved = dataclasses.replace(config_from_plain(load_config_data(run_dir)), run_dir=run_dir)
        return start(_override(saved, overrides, run_dir), overrides, stop, restart=run_dir)
    run_dir = existing_run_dir(run_dir)
    with warnings.catch_warnings(record=True) as skipped:
        warnings.simplefilter("always")
        path, payload = load_latest(run_dir / CHECKPOINT_DIR, map_location="cpu")
    saved = dataclasses.replace(config_from_plain(payload["config"]), run_dir=run_dir)  # the run may have moved
    config = _override(saved, overrides, run_dir)
    changes = changed_fields(saved, config)
    check_resumable(changes)
    check_config(config, overrides)
    lock = RunLock(run_dir)  # arguments are good: from here on the run is touched
    try:
        for warning in skipped:
            print(f"{PROGRAM}: {warning.message}", file=sys.stderr)
        for moved in set_aside_newer(run_dir / CHECKPOINT_DIR, path):
            print(f"{PROGRAM}: moved the broken checkpoint aside to {moved}", file=sys.stderr)
        finished = finished_run(run_dir, payload["global_step"], config.total_steps)
        if finished is not None:
            return finished, lock
        print(f"{PROGRAM}: resuming {run_dir} from {path.name} (step {payload['global_step']})", file=sys.stderr)
        for name, (old, new) in changes.items():
            print(f"{PROGRAM}: {name}: {old!r} -> {new!r}", file=sys.stderr)
        trainer = make_trainer(config, run_dir, resume=payload, stop=stop)
        try:  # recorded once the run can go on with these settings
            save_config(run_dir, config.to_plain())
            append_history(run_dir, f"resume from {path.name}", payload["global_step"], changes)
        except BaseException:
            trainer.close(failed=True)
            raise
        return trainer, lock
    except BaseException:
        lock.release()
        raise


def _override(saved: TrainConfig, overrides: list[str], run_dir: Path) -> TrainConfig:
    """The saved config with the command line's field overrides (tyro: every field of ``--help``)."""
    return tyro.cli(type(saved), default=saved, args=overrides, prog=f"{PROGRAM} --resume {run_dir}", description=__doc__)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    tune_glibc_malloc()  # the per-task gradients are large and allocated every update
    with StopRequest(PROGRAM) as stop:
        try:
            resuming = any(a == "--resume" or a.startswith("--resume=") for a in argv)
            trainer, lock = resume(argv, stop) if resuming else start(parse_config(argv), argv, stop)
        except (ValueError, RunDirError, CheckpointError, ConfigDataError) as error:
            print(f"{PROGRAM}: error: {first_line(error)}", file=sys.stderr)
            return 2
        except (EnvWorkerError, OSError, Interrupted, TrackingError, BalancerPluginError) as error:
            print(f"{PROGRAM}: error: {first_line(error)}; nothing was trained", file=sys.stderr)
            return 1
        try:
            return _finished(trainer) if isinstance(trainer, FinishedRun) else _train(trainer)
        finally:
            lock.release()


def _train(trainer: Trainer) -> int:
    config, run_dir = trainer.config, trainer.run_dir
    if trainer.stop.requested:  # the signal came while the environments were being built
        trainer.close()
        print(f"{PROGRAM}: stopped by {trainer.stop.signal_name} before training began; nothing was trained", file=sys.stderr)
        return 0
    if config.algorithm.compile_gradients:
        print(
            f"{PROGRAM}: the first updates compile the per-task gradients with torch.compile "
            f"(--{config.algo}.no-compile-gradients to skip): tens of seconds the first time, then cached on disk",
            file=sys.stderr,
        )
    resume_hint = f"continue from the last good checkpoint with: {PROGRAM} --resume {run_dir}"
    try:
        result = trainer.run()
    except TrainingStopped as stopped:
        hint = resume_hint if stopped.checkpoint else "nothing to resume from"
        print(f"{PROGRAM}: {stopped}; {hint}", file=sys.stderr)
        return 0 if stopped.checkpoint else 1
    except BalancerFaultError as error:
        print(f"{PROGRAM}: error: {first_line(error)}", file=sys.stderr)
        return 1
    except NonFiniteError as error:
        print(f"{PROGRAM}: error: {first_line(error)}; {resume_hint} and smaller learning rates (e.g. --{config.algo}.critic-optimizer.lr)", file=sys.stderr)
        return 1
    except (EnvWorkerError, CheckpointWriteError, OSError, Interrupted, BalancerPluginError) as error:
        print(f"{PROGRAM}: error: {first_line(error)}; {resume_hint}", file=sys.stderr)
        return 1
    _report(result, run_dir)
    return 0


def _finished(run: FinishedRun) -> int:
    """Nothing to train or evaluate: say so, then end as the run did (its table and figures, from what it wrote)."""
    print(
        f"{PROGRAM}: {run.run_dir} is finished: step {run.step} of --total-steps {run.total_steps}, final evaluation written; "
        f"nothing to train or evaluate (to train it further, resume it with a larger --total-steps)",
        file=sys.stderr,
    )
    _report(run.final, run.run_dir)
    return 0


def _report(result: EvalResult, run_dir: Path) -> None:
    """The end of a run: the final evaluation's table, then the figures."""
    print(f"final evaluation, episodes per task: {result.episodes_per_task}")
    print(format_table(result))
    print(f"final success rate {result.success_rate:.3f} over {len(result.per_task_success)} tasks; run: {run_dir}")
    _plot(run_dir)


def _plot(run_dir: Path) -> None:
    """The run's figures (``mtrl-plot``) into its directory; a failure is one warning line, never the run's."""
    try:
        from launch.plot import describe, plot_run  # matplotlib only here, at the end: not at every start

        result = plot_run(run_dir)
    except Exception as error:  # the run is done and saved: nothing a plot does may fail it
        print(f"{PROGRAM}: warning: no plots: {first_line(error)}", file=sys.stderr)
        return
    print(describe(result))


if __name__ == "__main__":
    sys.exit(main())
