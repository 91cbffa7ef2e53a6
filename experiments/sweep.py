"""``mtrl-sweep``: a grid of mtrl-train runs (preset x balancers x seeds x any field) on Ray.

    mtrl-sweep mt10 --balancers mean pcgrad cagrad --seeds 1-10 --out sweeps/mt10-balancers
    mtrl-sweep ppo-smoke --balancers mean cagrad --seeds 1-3 --vary balancer.c='0.5|0.9' --out sweeps/c
    mtrl-sweep mt10 --seeds 1-5 --set sac.hidden-dims=256,256 total-steps=2000000 --out sweeps/small
    mtrl-sweep --resume sweeps/mt10-balancers      # or the same command again
    mtrl-sweep mt50 --seeds 1-4 --address auto --gpus-per-trial 0.25 --out /shared/sweeps/mt50

Every trial is an ordinary run directory, ``OUT/trials/<name>`` (so mtrl-eval, TensorBoard and
mtrl-report work on it unchanged); its output goes to ``OUT/logs/<name>.log``; ``OUT/sweep.json``
holds the grid and every trial's arguments, config and status.

Ray core tasks run the trials, not Ray Tune: a trial is a whole mtrl-train process with its own
checkpoints, resume, stop handling and logs, so what Tune adds (trial checkpoints, schedulers,
search) would duplicate it, and a task that starts a process and reports how it ended is all the
sweep needs. With no ``--address`` an embedded local Ray starts (with ``--num-cpus`` CPUs, default
all) and stops with the sweep; ``--address auto`` or ``ray://host:port`` joins a cluster, whose
nodes must see OUT at the same path (a shared file system) and have mtrl installed.

A trial whose process dies (killed, out of memory, a node lost) is retried up to ``--max-retries``
times, resuming from its newest checkpoint. Running the same command again (or ``--resume OUT``)
skips finished trials and resumes the others; a different grid in an existing OUT is refused.
Ctrl-C or SIGTERM stops every trial (each checkpoints at its next episode boundary) and shuts
Ray down; a second one stops at once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import tyro

from experiments.grid import SweepSpec, Trial, expand, parse_seeds
from experiments.trial import BAD_INPUT_STATUS, final_success, run_trial
from launch.errors import first_line
from launch.run_dir import check_writable_place
from launch.stop import Interrupted, StopRequest
from mtrl.logging import read_metrics

PROGRAM = "mtrl-sweep"
MANIFEST = "sweep.json"
STOP_FILE = ".stop"


@dataclass(frozen=True)
class Args:
    """Run a grid of mtrl-train trials on Ray (local by default); see the module docstring."""

    preset: Annotated[str | None, tyro.conf.Positional] = None
    """The mtrl-train preset every trial starts from (not with --resume)."""
    balancers: tuple[str, ...] = ()
    """Balancers to compare (default: the preset's)."""
    seeds: tuple[str, ...] = ("1",)
    """Seeds: numbers or ranges, e.g. 1-10 or 1 2 5."""
    benchmarks: tuple[str, ...] = ()
    """Benchmarks or task lists (default: the preset's)."""
    set: tuple[str, ...] = ()
    """FIELD=VALUE settings for every trial, e.g. sac.hidden-dims=256,256 total-steps=200000."""
    vary: tuple[str, ...] = ()
    """FIELD=V1|V2|... axes of the grid, e.g. 'balancer.c=0.5|0.9' (quote the |)."""
    out: Path | None = None
    """The sweep directory."""
    resume: Path | None = None
    """Continue the sweep in this directory (its own grid)."""
    address: str | None = None
    """A Ray cluster to join ('auto' or ray://host:port); default: start a local Ray."""
    num_cpus: int | None = None
    """Local Ray only: CPUs the sweep may use (default: all of this machine's)."""
    cpus_per_trial: float | None = None
    """CPUs reserved per trial (default: the trial's environment worker processes + 1 for the learner)."""
    gpus_per_trial: float = 0.0
    """GPUs reserved per trial; fractions pack several trials on one GPU (0.25: four)."""
    max_retries: int = 3
    """Retries of a trial whose process died, each resuming from its newest checkpoint."""
    progress: bool = True
    """Show the overall progress bar."""


# ----------------------------------------------------------------------------- the manifest
def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / MANIFEST)


def _new_manifest(spec: SweepSpec, trials: list[Trial]) -> dict[str, Any]:
    return {
        "spec": spec.to_plain(),
        "trials": [
            {"name": t.name, "argv": list(t.argv), "config": t.config.to_plain(), "status": "pending", "attempts": 0, "error": None}
            for t in trials
        ],
    }


def prepare(args: Args) -> tuple[Path, dict[str, Any], list[Trial]]:
    """The sweep directory, its manifest and trials; a conflicting or bad spec raises ValueError before anything is written."""
    if args.resume is not None:
        out = args.resume
        if args.preset is not None or args.out not in (None, out):
            raise ValueError("--resume DIR continues that sweep with its own grid; give no preset or other --out")
        if not (out / MANIFEST).is_file():
            raise ValueError(f"--resume {out}: not a sweep directory (no {MANIFEST} in it)")
        check_writable_place(out, "--resume")
        spec = SweepSpec.from_plain(json.loads((out / MANIFEST).read_text())["spec"])
    else:
        if args.preset is None or args.out is None:
            raise ValueError("give a preset and --out DIR (or --resume DIR)")
        out = args.out
        check_writable_place(out, "--out")
        spec = SweepSpec(args.preset, args.balancers, parse_seeds(list(args.seeds)), args.benchmarks, args.set, args.vary)
    for name, value in (("--max-retries", args.max_retries), ("--gpus-per-trial", args.gpus_per_trial)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if args.cpus_per_trial is not None and args.cpus_per_trial <= 0:
        raise ValueError(f"--cpus-per-trial must be > 0, got {args.cpus_per_trial}")
    trials = expand(spec)
    if (out / MANIFEST).is_file():
        manifest = json.loads((out / MANIFEST).read_text())
        old = SweepSpec.from_plain(manifest["spec"])
        if old != spec:
            differs = next(f.name for f in dataclasses.fields(SweepSpec) if getattr(old, f.name) != getattr(spec, f.name))
            raise ValueError(
                f"{out} holds another sweep ({differs}: {getattr(old, differs)!r}, not {getattr(spec, differs)!r}); "
                f"continue it with {PROGRAM} --resume {out} or choose another --out"
            )
        if manifest["spec"] != spec.to_plain():  # saved in a former layout: its trials' arguments in today's
            argv = {t.name: list(t.argv) for t in trials}
            manifest = {**manifest, "spec": spec.to_plain(), "trials": [{**t, "argv": argv.get(t["name"], t["argv"])} for t in manifest["trials"]]}
        return out, manifest, trials
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} exists and is not a sweep directory; choose another --out")
    return out, _new_manifest(spec, trials), trials


# ----------------------------------------------------------------------------- progress
def trial_rate(run_dir: Path) -> tuple[int, float | None]:
    """A running trial's last logged step and its steps per second over its log (None before two records)."""
    try:
        records = read_metrics(run_dir / "metrics.jsonl", partial=True)
    except (OSError, ValueError):
        return 0, None
    timed = [r for r in records if "time" in r]
    if len(timed) < 2 or timed[-1]["time"] <= timed[0]["time"]:
        return (timed[-1]["step"] if timed else 0), None
    return timed[-1]["step"], (timed[-1]["step"] - timed[0]["step"]) / (timed[-1]["time"] - timed[0]["time"])


def _eta_seconds(out: Path, manifest: dict[str, Any]) -> float | None:
    """Remaining steps of every unfinished trial over the running trials' summed step rates.

    The rates are training steps/s from the trials' logs: a trial's start-up, compiling and final
    evaluation are not in them, so the estimate runs short by about that much per trial still to start.
    """
    remaining, rate = 0.0, 0.0
    for trial in manifest["trials"]:
        if trial["status"] in ("finished", "failed"):
            continue
        step, steps_per_s = trial_rate(out / "trials" / trial["name"])
        remaining += max(trial["config"]["total_steps"] - step, 0)
        if trial["status"] == "running" and steps_per_s:
            rate += steps_per_s
    return remaining / rate if rate > 0 else None


def _log_size(log: Path) -> int:
    try:
        return log.stat().st_size
    except OSError:
        return -1


def _counts(manifest: dict[str, Any]) -> str:
    statuses = [t["status"] for t in manifest["trials"]]
    return (
        f"[{statuses.count('finished')}/{len(statuses)} finished, {statuses.count('running')} running, "
        f"{statuses.count('queued')} queued, {statuses.count('failed')} failed]"
    )


def _say(manifest: dict[str, Any], text: str) -> None:
    print(f"{PROGRAM}: {_counts(manifest)} {text}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- running
def _start_ray(args: Args, stop: StopRequest) -> tuple[Any, bool]:
    """Ray, and whether this sweep started it (and so shuts it down); a caller's running Ray is used as it is.

    ``ray.init`` puts Ray's own SIGTERM handler in place of the sweep's (it aborts the driver with a
    stack dump): the sweep's handlers are installed again, so that SIGTERM stops the sweep as Ctrl-C
    does (a SIGTERM during ``ray.init`` itself still meets Ray's).
    """
    import ray

    if ray.is_initialized():
        return ray, False
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(num_cpus=args.num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)
    stop.reinstall()
    return ray, True


def _cpus_per_trial(args: Args, trial: dict[str, Any], cluster_cpus: float) -> float:
    """The trial's CPU reservation: as asked (default its environment workers + 1), at most the cluster's
    CPUs (a trial asking for more would never be scheduled)."""
    asked = args.cpus_per_trial if args.cpus_per_trial is not None else float(trial["config"]["env"]["num_workers"] + 1)
    return min(asked, cluster_cpus)


def run_sweep(args: Args, out: Path, manifest: dict[str, Any], stop: StopRequest) -> int:
    """Run every unfinished trial; 0 when all finished, 1 when some failed, 0 after a stop (resumable)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / STOP_FILE).unlink(missing_ok=True)
    for trial in manifest["trials"]:  # a rerun gives every unfinished trial, failed ones too, a new round of attempts
        if trial["status"] != "finished" or final_success(out / "trials" / trial["name"]) is None:
            trial["status"], trial["attempts"] = "pending", 0
    _write_manifest(out, manifest)
    todo = [t for t in manifest["trials"] if t["status"] == "pending"]
    _say(manifest, f"{len(todo)} trials to run in {out}")
    if not todo:
        return 0
    ray, owns_ray = _start_ray(args, stop)
    bar = _progress_bar(args, manifest)
    try:
        remote = ray.remote(run_trial)
        running: dict[Any, dict[str, Any]] = {}
        cluster_cpus = float(ray.cluster_resources().get("CPU", 1.0))
        cluster_gpus = float(ray.cluster_resources().get("GPU", 0.0))
        if args.gpus_per_trial > cluster_gpus:
            print(f"{PROGRAM}: error: --gpus-per-trial {args.gpus_per_trial}: the Ray cluster has {cluster_gpus:g} GPUs", file=sys.stderr)
            return 2

        log_sizes: dict[str, int] = {}  # trial name -> its log's size when its attempt was queued (a started attempt appends a header)

        def submit(trial: dict[str, Any]) -> None:
            trial["status"], trial["attempts"] = "queued", trial["attempts"] + 1
            name = trial["name"]
            log_sizes[name] = _log_size(out / "logs" / f"{name}.log")
            task = remote.options(num_cpus=_cpus_per_trial(args, trial, cluster_cpus), num_gpus=args.gpus_per_trial, max_retries=0)
            ref = task.remote(str((out / "trials" / name).resolve()), trial["argv"], str((out / "logs" / f"{name}.log").resolve()), str((out / STOP_FILE).resolve()))
            running[ref] = trial

        for trial in todo:
            submit(trial)
        _write_manifest(out, manifest)
        stopping = False
        while running:
            if stop.requested and not stopping:
                stopping = True
                stop.announce("stopping every trial at its next episode boundary")
                (out / STOP_FILE).touch()
            done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for trial in running.values():
                if trial["status"] == "queued" and _log_size(out / "logs" / f"{trial['name']}.log") > log_sizes[trial["name"]]:
                    trial["status"] = "running"
                    _say(manifest, f"{trial['name']} started (attempt {trial['attempts']})")
                    _write_manifest(out, manifest)
            for ref in done:
                trial = running.pop(ref)
                outcome = _outcome(ray, ref)
                _record(args, manifest, trial, outcome, stopping, out, submit)
                _write_manifest(out, manifest)
            _update_bar(bar, out, manifest)
        if stopping:
            _say(manifest, f"stopped; continue with: {PROGRAM} --resume {out}")
            return 0
        failed = [t for t in manifest["trials"] if t["status"] == "failed"]
        _say(manifest, f"done: {out}" + (f"; {len(failed)} failed (see {out / 'logs'})" if failed else ""))
        return 1 if failed else 0
    finally:
        if bar is not None:
            bar.close()
        if owns_ray:
            ray.shutdown()
            stop.reinstall()  # shutting Ray down leaves SIGTERM at its default action (death)


def _outcome(ray: Any, ref: Any) -> dict[str, Any]:
    """The task's result, or a failure when Ray lost it (its worker or node died)."""
    try:
        return ray.get(ref)
    except Exception as error:  # ray.exceptions.RayError and whatever the task raised
        return {"returncode": None, "finished": False, "stopped": False, "seconds": 0.0, "last_line": first_line(error)}


def _record(args: Args, manifest: dict[str, Any], trial: dict[str, Any], outcome: dict[str, Any], stopping: bool, out: Path, submit: Any) -> None:
    name, run_dir = trial["name"], out / "trials" / trial["name"]
    if outcome["finished"]:
        trial["status"], trial["error"] = "finished", None
        _say(manifest, f"{name} finished: final success {final_success(run_dir):.3f} ({outcome['seconds']:.0f} s)")
        return
    if stopping or outcome["stopped"]:
        trial["status"] = "stopped"
        _say(manifest, f"{name} stopped ({run_dir})")
        return
    trial["error"] = outcome["last_line"]
    status = outcome["returncode"]
    retry = status != BAD_INPUT_STATUS and trial["attempts"] <= args.max_retries
    how = f"exit status {status}" if status is not None else "lost by Ray"
    if retry:
        _say(manifest, f"{name} failed ({how}): {trial['error']}; retry {trial['attempts']} of {args.max_retries}, from its newest checkpoint")
        submit(trial)
    else:
        trial["status"] = "failed"
        _say(manifest, f"{name} failed ({how}) in {run_dir}: {trial['error']}")


def _progress_bar(args: Args, manifest: dict[str, Any]) -> Any:
    if not args.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=len(manifest["trials"]), desc=PROGRAM, unit="trial", file=sys.stderr, dynamic_ncols=True)


def _update_bar(bar: Any, out: Path, manifest: dict[str, Any]) -> None:
    if bar is None:
        return
    statuses = [t["status"] for t in manifest["trials"]]
    bar.n = statuses.count("finished")
    eta = _eta_seconds(out, manifest)
    bar.set_postfix_str(
        f"running {statuses.count('running')}, queued {statuses.count('queued')}, failed {statuses.count('failed')}, "
        f"ETA {'?' if eta is None or not math.isfinite(eta) else time.strftime('%H:%M:%S', time.gmtime(eta))}"
    )


def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(Args, args=argv, description=__doc__)
    with StopRequest(PROGRAM) as stop:
        try:
            out, manifest, _ = prepare(args)
        except (ValueError, OSError) as error:
            print(f"{PROGRAM}: error: {first_line(error)}", file=sys.stderr)
            return 2
        try:
            return run_sweep(args, out, manifest, stop)
        except Interrupted as error:
            (out / STOP_FILE).touch()
            print(f"{PROGRAM}: {first_line(error)}; continue with: {PROGRAM} --resume {out}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
