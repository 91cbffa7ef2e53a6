"""Environment throughput of MT10 / MT50 (``mtrl-bench-envs``): steps per second, printed as JSON.

For every benchmark, with random actions and one environment per task:

- ``single_env_steps_per_s``: each task's environment stepped alone in this process;
- ``ideal_one_core_steps_per_s``: what stepping every environment once in turn on one core would
  give from those rates (num_envs / sum of 1 / rate): the in-process ideal;
- ``runs``: the vector environment in-process (``num_workers`` 0) and with 1, 2, ...
  ``--max-workers`` worker processes, each with its start-up time, its rate, the ideal
  (one-core rate x min(workers, cores)), the ratio of the two, and the fraction of the time the
  learner and each worker were on a CPU (workers well below 1: they waited for a core).

The machine's load average is reported too: the ideal assumes free cores, so on a machine that
other jobs share the ratio measures the machine as much as the code.

Environment steps are counted per environment (one vector step of MT50 is 50 steps). Meta-World
goal generation is timed separately and done once per benchmark.

    mtrl-bench-envs                                   # full run
    mtrl-bench-envs --benchmarks MT10 --steps 50 --single-env-steps 50 --max-workers 1   # quick
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import tyro

from benchmarks.report import check_report_file, emit_report
from envs import EnvConfig, make_envs, task_names
from envs.specs import benchmark_goals, env_specs
from envs.task_env import TaskEnv
from envs.worker import DEFAULT_START_METHOD


@dataclasses.dataclass(frozen=True)
class Args:
    """Measure Meta-World environment steps per second in-process and on worker processes."""

    benchmarks: tuple[str, ...] = ("MT10", "MT50")
    """Benchmarks to measure (any name make_envs accepts)."""
    max_workers: int = os.cpu_count() or 1
    """Measure 1, 2, ... max_workers worker processes (default: the number of CPU cores)."""
    in_process: bool = True
    """Also measure in-process stepping (num_workers=0)."""
    steps: int = 200
    """Timed vector steps per run (every environment steps once per vector step)."""
    warmup: int = 10
    """Untimed vector steps before timing."""
    single_env_steps: int = 200
    """Timed steps of every task's environment alone."""
    max_episode_steps: int = 500
    """Episode length (resets are part of the timing when steps exceed it)."""
    seed: int = 0
    """Seed of the environments and of the random actions."""
    output: str | None = None
    """Also write the JSON to this file (its directory must exist)."""


def single_env_rates(config: EnvConfig, seed: int, steps: int, warmup: int) -> dict[str, float]:
    """Steps per second of every task's environment alone (random actions, resets included)."""
    rates = {}
    rng = np.random.default_rng(seed)
    for spec in env_specs(config.replace(envs_per_task=1), seed):
        env = TaskEnv(spec)
        env.reset()
        actions = rng.uniform(-1, 1, (warmup + steps, 4))
        for k, action in enumerate(actions):
            if k == warmup:
                start = time.perf_counter()
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()
        rates[spec.task_name] = steps / (time.perf_counter() - start)
        env.close()
    return rates


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc); nan elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def vector_rate(config: EnvConfig, seed: int, steps: int, warmup: int) -> dict[str, float]:
    """Start-up seconds, environment steps per second of make_envs(config), and the fraction of
    the timed wall time the learner and (on average) each worker spent on a CPU: with workers
    well below 1, the simulators were waiting for a core (other load) or for the learner."""
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    with make_envs(config, seed) as envs:
        started = time.perf_counter() - start
        envs.reset()
        actions = rng.uniform(-1, 1, (warmup + steps, envs.num_envs, 4))
        for k, action in enumerate(actions):
            if k == warmup:
                start, learner_cpu = time.perf_counter(), time.process_time()
                worker_cpu = [cpu_seconds(pid) for pid in envs.worker_pids]
            envs.step(action)
        elapsed = time.perf_counter() - start
        learner_cpu = time.process_time() - learner_cpu
        worker_cpu = [
            cpu_seconds(pid) - before for pid, before in zip(envs.worker_pids, worker_cpu, strict=True)
        ]
        result = {
            "start_s": started,
            "steps_per_s": steps * envs.num_envs / elapsed,
            "learner_cpu_fraction": learner_cpu / elapsed,
        }
        if worker_cpu:
            result["worker_cpu_fraction"] = float(np.mean(worker_cpu)) / elapsed
        return result


def bench_benchmark(name: str, args: Args, cores: int) -> dict[str, Any]:
    """One benchmark's report: goal generation time, single-environment rates, and every worker count's run."""
    config = EnvConfig(benchmark=name, max_episode_steps=args.max_episode_steps)
    start = time.perf_counter()
    benchmark_goals(name, args.seed)
    goals_s = time.perf_counter() - start
    single = single_env_rates(config, args.seed, args.single_env_steps, args.warmup)
    ideal_one_core = len(single) / sum(1.0 / r for r in single.values())
    workers = ([0] if args.in_process else []) + list(range(1, args.max_workers + 1))
    runs = []
    for w in workers:
        measured = vector_rate(config.replace(num_workers=w), args.seed, args.steps, args.warmup)
        ideal = ideal_one_core * min(max(w, 1), cores)
        runs.append(
            {
                "num_workers": w,
                **{k: round(v, 3) for k, v in measured.items()},
                "ideal_steps_per_s": round(ideal, 1),
                "ratio_to_ideal": round(measured["steps_per_s"] / ideal, 3),
            }
        )
        print(f"{name} workers={w}: {measured['steps_per_s']:.0f} steps/s", file=sys.stderr, flush=True)
    return {
        "num_envs": len(single),
        "goal_generation_s": round(goals_s, 2),
        "single_env_steps_per_s": {task: round(r, 1) for task, r in single.items()},
        "ideal_one_core_steps_per_s": round(ideal_one_core, 1),
        "runs": runs,
    }


def run(args: Args) -> dict[str, Any]:
    """The report as a dict (also printed as JSON, and written to ``args.output`` when set)."""
    for name in args.benchmarks:
        task_names(name)  # fail fast on a bad name
    for field in ("max_workers", "steps", "single_env_steps", "max_episode_steps"):
        if getattr(args, field) < 1:
            raise SystemExit(f"--{field.replace('_', '-')} must be >= 1, got {getattr(args, field)}")
    output = Path(args.output) if args.output else None
    if output is not None:
        check_report_file("--output", output)
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()[0]
    report: dict[str, Any] = {
        "machine": {
            "cpu_count": cores,
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "start_method": DEFAULT_START_METHOD,
        },
        "settings": dataclasses.asdict(args),
        "benchmarks": {name: bench_benchmark(name, args, cores) for name in args.benchmarks},
    }
    # other processes' load on the machine: the ideal assumes the cores are free
    report["machine"]["load_average_1min"] = {"before": load_before, "after": os.getloadavg()[0]}
    emit_report(report, output)
    return report


def main(argv: list[str] | None = None) -> None:
    run(tyro.cli(Args, args=argv))


if __name__ == "__main__":
    main()
