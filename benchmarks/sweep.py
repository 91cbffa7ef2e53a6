"""Scale-out of ``mtrl-sweep`` (``mtrl-bench-sweep``): k trials on k cores against the same trials one after another.

The same k tiny trials (one seed each, environments in-process and one torch thread, so a trial
is one busy process) run twice: one after another through :func:`experiments.trial.run_trial`
(no Ray), then as one sweep on a local Ray with k CPUs. A trial's rate is its training steps per
second from its own log (first to last record of ``metrics.jsonl``, so process start-up and the
final evaluation are left out); the scale-out efficiency is the sweep's summed rate over k times
the mean rate alone. The wall-clock times of both, Ray's start-up included, are reported too, and
the load average: the ideal assumes k free cores.

    mtrl-bench-sweep                                  # k = the number of cores
    mtrl-bench-sweep --trials 2 --total-steps 3000 --out bench-sweep.json
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import tyro

from benchmarks.report import check_report_file, emit_report
from experiments.grid import SweepSpec, expand
from experiments.sweep import main as sweep_main
from experiments.sweep import trial_rate
from experiments.trial import run_trial


@dataclasses.dataclass(frozen=True)
class Args:
    """Measure the sweep's scale-out: k trials on k cores against the same trials one after another."""

    trials: int = os.cpu_count() or 1
    """k: trials (seeds 1..k), and the CPUs of the sweep's local Ray."""
    preset: str = "smoke"
    """The trials' mtrl-train preset."""
    benchmark: str = "reach-v3,drawer-close-v3"
    """The trials' tasks."""
    balancer: str = "mean"
    """The trials' balancer (what is measured is the sweep, not the balancer)."""
    total_steps: int = 4000
    """Environment steps of every trial."""
    settings: tuple[str, ...] = (
        "env.max-episode-steps=100", "env.num-workers=0", "sac.hidden-dims=64,64", "replay.warmup-steps=200",
        "replay.batch-size-per-task=32", "log-every=200", "checkpoint-every=0", "final-eval-episodes=1",
        "torch-threads=1", "sac.compile-gradients=false", "balancer.compile-solver=false", "tensorboard=false",
    )
    """FIELD=VALUE settings of every trial (mtrl-sweep --set syntax)."""
    out: Path | None = None
    """Also write the JSON report here."""


def _spec(args: Args) -> SweepSpec:
    return SweepSpec(
        args.preset, balancers=(args.balancer,), seeds=tuple(range(1, args.trials + 1)), benchmarks=(args.benchmark,),
        set=(*args.settings, f"total-steps={args.total_steps}", "progress=false"),
    )


def run(args: Args) -> dict[str, Any]:
    if args.trials < 1:
        raise SystemExit(f"--trials must be >= 1, got {args.trials}")
    if args.out is not None:
        check_report_file("--out", args.out, create_parents=True)
    spec = _spec(args)
    trials = expand(spec)
    with tempfile.TemporaryDirectory(prefix="mtrl-bench-sweep-") as root:
        serial_root, sweep_root = Path(root) / "serial", Path(root) / "sweep"
        started = time.perf_counter()
        for trial in trials:
            outcome = run_trial(str(serial_root / "trials" / trial.name), list(trial.argv), str(serial_root / "logs" / f"{trial.name}.log"), str(serial_root / ".stop"))
            if not outcome["finished"]:
                raise SystemExit(f"trial {trial.name} did not finish alone: {outcome['last_line']}")
        serial_wall = time.perf_counter() - started
        alone = [trial_rate(serial_root / "trials" / t.name)[1] for t in trials]

        started = time.perf_counter()
        sweep_argv = [
            spec.preset, "--balancers", *spec.balancers, "--seeds", *map(str, spec.seeds), "--benchmarks", *spec.benchmarks, "--set", *spec.set,
            "--out", str(sweep_root), "--num-cpus", str(args.trials), "--cpus-per-trial", "1", "--max-retries", "0", "--no-progress",
        ]
        if sweep_main(sweep_argv) != 0:
            raise SystemExit(f"the sweep did not finish: see {sweep_root / 'logs'}")
        sweep_wall = time.perf_counter() - started
        together = [trial_rate(sweep_root / "trials" / t.name)[1] for t in trials]

    mean_alone = sum(alone) / len(alone)
    report = {
        "trials": args.trials,
        "cores": os.cpu_count(),
        "load_average_1min_after": os.getloadavg()[0],
        "total_steps_per_trial": args.total_steps,
        "steps_per_s_alone": [round(r, 1) for r in alone],
        "steps_per_s_in_sweep": [round(r, 1) for r in together],
        "scale_out_efficiency": round(sum(together) / (args.trials * mean_alone), 3),
        "serial_wall_seconds": round(serial_wall, 1),
        "sweep_wall_seconds_including_ray_start": round(sweep_wall, 1),
        "wall_clock_speedup": round(serial_wall / sweep_wall, 3),
    }
    emit_report(report, args.out)
    return report


def main(argv: list[str] | None = None) -> None:
    run(tyro.cli(Args, args=argv, description=__doc__))


if __name__ == "__main__":
    main()
