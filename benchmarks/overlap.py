"""How well the SAC loop hides the environment step behind the gradient update (``mtrl-bench-overlap``).

The SAC loop (:mod:`launch.sac_trainer`) starts the simulators with ``step_async(actions)``, runs
the gradient update on the replay while they step, then collects the step with ``step_wait()`` and
stores it. With ``env.num_workers >= 1`` the simulators run in worker processes, so one iteration
should cost about the larger of the two, not their sum. This script measures that, for every
``--benchmarks`` x ``--workers`` (``env.num_workers``), on the trainer's own parts: the vector
environments ``make_envs`` builds from the preset's :class:`envs.EnvConfig` (``mt10`` for MT10,
``mt50`` for MT50, ``mt10``'s settings with the benchmark replaced for any other name), and the
agent :func:`launch.factory.build_agent` builds from the preset's config (its balancer, the
:class:`agents.sac.SACConfig` networks, 3x400 and 128 samples per task unless ``--hidden`` /
``--batch-size`` say otherwise, ``update_graph off``). The agent is built once per benchmark (its
networks do not depend on the number of workers) and kept across that benchmark's runs. Each run
builds a :class:`launch.sac_trainer.SACTrainer` on them (its replay fresh, its logs in a temporary
directory), whose warm-up is ``--fill-steps`` vector steps of uniformly random actions: the run's
first iterations fill the replay. It then runs ``--warmup`` untimed calls of each of the three
things below (compiling happens there), then times ``--steps`` calls of each, interleaved
round-robin in blocks of ``--block`` (the order rotating every round), so that load from other
processes hits all three alike:

- ``env_step``: ``step_async(random actions); step_wait()``: one vector step alone, every
  environment stepping once, the learner only waiting;
- ``update``: the trainer's :meth:`~launch.sac_trainer.SACTrainer.learn` alone, one update on a
  sample of the replay (the device synchronised after it on CUDA), the workers idle;
- ``iteration``: the trainer's own :meth:`~launch.sac_trainer.SACTrainer.iteration`, timed to the
  end of its store: the policy's actions for the current observations (the stochastic policy on
  the device, its actions copied back once), ``step_async``, the update, ``step_wait``, and
  ``replay.add`` of the step (uploaded in one packed copy; synchronised at its end on CUDA). Its
  step count and episode statistics after the store are not timed.

Per run the report gives, for each of the three, the ``median_s`` and ``mean_s`` over the timed
calls, and:

- ``ratio = iteration / max(env_step, update)`` (of the medians): 1.0 is a perfect overlap (the
  shorter of the two is hidden entirely; below 1.0 only by noise), ``target`` is 1.15 and
  ``meets_target`` says whether the ratio is at most that. The iteration also does what neither
  part does (the policy's forward pass, the store, the hand-over of the actions), so even a
  perfect overlap is a little above 1;
  ``iteration_phases`` shows where its time goes (medians of: ``policy``, ``step_async_and_update``
  and ``store``, and ``wait``, the time ``step_wait`` blocked: what the simulators took beyond the
  update; on CUDA ``step_async_and_update`` is host time, the kernels finish later);
- ``ratio_to_sum = iteration / (env_step + update)``: 1.0 is no overlap at all (the step and the
  update one after the other), 0.5 the best possible when the two cost the same;
- ``hidden_fraction = (env_step + update - iteration) / min(env_step, update)``: how much of the
  shorter of the two the overlap hid, 1.0 all of it, 0 or less nothing. When one of the two is
  much shorter than the other (on the CPU the 3x400 update takes tens of times a vector step of
  MT10), ``ratio`` is near 1.0 whatever the loop does, since even no overlap costs only the short
  one more; ``hidden_fraction`` is what tells a real overlap from that, and it is noisy then (the
  difference of two large times over a small one);
- ``env_steps_per_s``: environment steps per second (``num_envs`` per vector step; one vector step of
  MT50 is 50 steps) of the vector step alone and of the iteration (the training rate once learning
  has started, one update per vector step as the presets do);
- ``learner_cpu_fraction`` and ``worker_cpu_fraction``: the share of the timed wall-clock time the
  learner process and, on average, each worker spent on a CPU (Linux ``/proc``). The workers step
  during the ``env_step`` and ``iteration`` calls only; a fraction well below the share of the time
  those took means they waited for a core;
- ``cores_needed = num_workers + 1`` (the workers and the learner, which runs the update while they
  step), next to the machine's ``cpu_count`` (``os.cpu_count()``), ``available_cores`` (those this
  process may run on) and ``enough_cores``. **On a machine with fewer free cores than
  workers + 1 the overlap cannot be good**: the learner and the workers take turns on the same
  cores, and the iteration tends to the sum of the two (``ratio_to_sum`` towards 1.0) however the
  loop is written. Cores busy with other jobs count as taken: the 1-, 5- and 15-minute
  ``load_average`` before the run's environments are built and after its timing is in every run
  (and for the whole call under ``machine``), with ``torch_threads`` (torch's intra-op threads of
  the update: each is one more competitor for the cores; ``--torch-threads 1`` by default).

``num_workers`` is what the environments really use: mtrl caps the asked ``--workers`` at one per
environment. ``build_s`` is a run's environment start-up, ``timed_s`` its round-robin's wall-clock
and ``agent_build_s`` the agent's build (per benchmark). MT50 takes about 45 s to build; the timing itself is seconds.

    mtrl-bench-overlap                                        # MT10 and MT50, 1 and 2 workers
    mtrl-bench-overlap --benchmarks MT10 --workers 1 2 --steps 30 --out overlap.json

Bad arguments end with one line and exit status 2, before anything is built; a dead or hung
environment worker ends the call with one line and exit status 1.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import tyro

from agents.sac import MultiTaskSAC, SACConfig
from benchmarks.envs import cpu_seconds
from benchmarks.report import check_report_file, emit_report
from benchmarks.update import synchronize
from envs import EnvConfig, EnvWorkerError, MultiTaskVectorEnv, make_envs, task_names
from envs.worker import DEFAULT_START_METHOD
from launch.config import SACTrainConfig
from launch.presets import PRESETS
from launch.errors import first_line
from launch.factory import build_agent, make_eval_envs, resolve_device, seed_globals
from launch.runtime import tune_glibc_malloc
from launch.replay_loop import ReplayLoopConfig
from launch.sac_trainer import ITERATION_PHASES, SACTrainer
from mtrl.logging import Progress
from mtrl.seeding import RunSeeds

PROGRAM = "mtrl-bench-overlap"
TARGET_RATIO = 1.15
"""Issue 14's target for ``iteration / max(env_step, update)``."""
KINDS = ("env_step", "update", "iteration")
PHASES = ITERATION_PHASES
BuildEnvs = Callable[[EnvConfig, int], MultiTaskVectorEnv]

_SAC_DEFAULTS, _LOOP_DEFAULTS = SACConfig(), ReplayLoopConfig()


@dataclasses.dataclass(frozen=True)
class Args:
    """Measure the SAC iteration against max(env step, update) with the environments on worker processes."""

    benchmarks: tuple[str, ...] = ("MT10", "MT50")
    """Benchmarks to measure (any name make_envs accepts; MT50 uses the mt50 preset, the others mt10's)."""
    workers: tuple[int, ...] = (1, 2)
    """env.num_workers values to measure (each >= 1: in-process stepping overlaps nothing)."""
    steps: int = 30
    """Timed calls of each of env step, update and iteration per run."""
    warmup: int = 5
    """Untimed calls of each before timing (compiling happens here)."""
    block: int = 5
    """Calls of one kind in a row in the round-robin (the order of the kinds rotates every round)."""
    fill_steps: int = 10
    """Vector steps of random actions stored in the replay before anything is timed."""
    torch_threads: int = 1
    """torch intra-op threads (0: torch's default)."""
    hidden: tuple[int, ...] = _SAC_DEFAULTS.hidden_dims
    """Hidden layer sizes of the actor and critic trunks (the preset's 3x400; smaller for tests)."""
    batch_size: int = _LOOP_DEFAULTS.batch_size_per_task
    """Transitions sampled per task for each update (the preset's 128)."""
    compile_gradients: bool = True
    """Compile the per-task gradients, as the trainer does (sac.compile_gradients)."""
    compile_solver: bool = True
    """Compile the balancer's solver, as the trainer does (balancer.compile_solver)."""
    malloc_tuning: bool = True
    """Tune glibc malloc as mtrl-train does (large per-task gradients allocated every update)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the networks and the replay live, as the trainer's --device."""
    seed: int = 1
    """The run seed (environments, networks, replay sampling, random actions), as the trainer's --seed."""
    out: Path | None = None
    """Also write the JSON report to this file (its directory is made when missing)."""


def check_args(args: Args) -> str | None:
    """The first bad argument as a one-line message naming the flag and what is allowed, or None."""
    minimums = (("steps", 1), ("warmup", 0), ("block", 1), ("fill_steps", 1), ("batch_size", 1), ("torch_threads", 0))
    for field, smallest in minimums:
        value = getattr(args, field)
        if value < smallest:
            return f"--{field.replace('_', '-')} must be >= {smallest}, got {value}"
    if not args.workers or min(args.workers) < 1:
        return f"--workers: every value must be >= 1 (0 steps in-process, where nothing overlaps), got {list(args.workers)}"
    if not args.hidden or min(args.hidden) < 1:
        return f"--hidden: every value must be >= 1, got {list(args.hidden)}"
    if not args.benchmarks:
        return "--benchmarks: give at least one benchmark (MT10, MT50, a task name or a comma-separated list)"
    for name in args.benchmarks:
        try:
            task_names(name)
        except ValueError as error:
            return f"--benchmarks: {first_line(error)}"
    try:
        resolve_device(args.device)
    except ValueError as error:
        return f"--device: {first_line(error)}"
    if args.out is not None:
        try:
            check_report_file("--out", args.out, create_parents=True)
        except SystemExit as refusal:
            return str(refusal)
    return None


def preset_name(benchmark: str) -> str:
    """The preset whose settings a benchmark is measured with: mt50 for MT50, mt10 for everything else."""
    return "mt50" if benchmark == "MT50" else "mt10"


def train_config(args: Args, benchmark: str, workers: int) -> SACTrainConfig:
    """The preset's training config with the benchmark, workers, network sizes and compile settings of ``args``."""
    preset = PRESETS[preset_name(benchmark)][1]
    assert isinstance(preset, SACTrainConfig)
    capacity = args.fill_steps + (args.warmup + args.steps) * 2 + 1  # every stored step fits: nothing is overwritten
    num_envs = len(task_names(benchmark)) * preset.env.envs_per_task
    return dataclasses.replace(
        preset,
        env=preset.env.replace(benchmark=benchmark, num_workers=workers),
        sac=dataclasses.replace(
            preset.sac, hidden_dims=tuple(args.hidden), update_graph="off", compile_gradients=args.compile_gradients
        ),
        replay=dataclasses.replace(
            preset.replay,
            warmup_steps=args.fill_steps * num_envs,  # the fill is the warm-up: random actions, then the policy's
            updates_per_step=1.0,  # the update alone is one update, and so is an iteration's
            batch_size_per_task=args.batch_size,
            buffer_capacity_per_task=capacity,
        ),
        balancer=dataclasses.replace(preset.balancer, compile_solver=args.compile_solver),
        device=args.device,
        torch_threads=args.torch_threads,
        seed=args.seed,
        progress=False,
        tensorboard=False,
    )


def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages (empty where the platform has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def available_cores() -> int:
    """The cores this process may run on (its affinity), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def sig(x: float, digits: int = 6) -> float:
    """``x`` to ``digits`` significant figures (seconds span microseconds to seconds)."""
    return float(f"{x:.{digits}g}")


class Loop:
    """One run's trainer (its environments, the benchmark's agent, a fresh replay) and the three timed things of the module
    docstring.

    Everything is :class:`launch.sac_trainer.SACTrainer`'s own: the iteration is its
    :meth:`~launch.sac_trainer.SACTrainer.iteration` (timed by the phases it marks), the update alone
    its :meth:`~launch.sac_trainer.SACTrainer.learn` (one update: the presets' one per vector step),
    and the replay is filled by its warm-up iterations. The trainer's logs go to a temporary directory.
    """

    def __init__(
        self, config: SACTrainConfig, envs: MultiTaskVectorEnv, agent: MultiTaskSAC, seeds: RunSeeds, build_envs: BuildEnvs
    ) -> None:
        self.envs, self.device = envs, agent.device
        self._logs = tempfile.TemporaryDirectory(prefix=f"{PROGRAM}-")
        self.trainer = SACTrainer(config, Path(self._logs.name), envs, agent, seeds, lambda: make_eval_envs(config, build_envs))
        self.progress = Progress(config.total_steps, enabled=False)
        self.trainer.reset()
        self.phases: dict[str, list[float]] = {phase: [] for phase in PHASES}

    def close(self) -> None:
        """Close the trainer (its environments too) and remove its logs."""
        try:
            self.trainer.close()
            self.progress.close()
        finally:
            self._logs.cleanup()

    def _device_obs(self, obs: np.ndarray) -> torch.Tensor:
        """``[N, obs_dim]`` numpy -> ``[T, E, obs_dim]`` float32 on the device."""
        envs = self.envs
        return torch.as_tensor(obs, dtype=torch.float32, device=self.device).reshape(envs.num_tasks, envs.envs_per_task, -1)

    def fill(self, steps: int) -> None:
        """``steps`` of the trainer's iterations in its warm-up (random actions, no update) into the replay (untimed)."""
        for _ in range(steps):
            self.trainer.iteration(self.progress)

    def env_step(self) -> float:
        """Seconds of one vector step alone (random actions, drawn before the clock starts)."""
        actions = self.trainer.random_actions().astype(np.float32)
        start = time.perf_counter()
        self.envs.step_async(actions)
        step = self.envs.step_wait()
        elapsed = time.perf_counter() - start
        self.trainer.obs = self._device_obs(step.obs)  # the next iteration acts on where the environments are
        return elapsed

    def update(self) -> float:
        """Seconds of one gradient update alone."""
        synchronize(self.device)
        start = time.perf_counter()
        self.trainer.learn()
        synchronize(self.device)
        return time.perf_counter() - start

    def iteration(self, record: bool = True) -> float:
        """Seconds of one of the trainer's iterations, to its store (its phases kept in :attr:`phases` when ``record``)."""
        ends: list[float] = []

        def mark(phase: str) -> None:
            if phase == PHASES[-1]:
                synchronize(self.device)
            ends.append(time.perf_counter())

        synchronize(self.device)
        start = time.perf_counter()
        self.trainer.iteration(self.progress, mark)
        if record:
            for phase, begun, ended in zip(PHASES, [start, *ends[:-1]], ends, strict=True):
                self.phases[phase].append(ended - begun)
        return ends[-1] - start


def time_round_robin(loop: Loop, steps: int, warmup: int, block: int) -> tuple[dict[str, list[float]], float, dict[str, float]]:
    """Seconds of every timed call of each kind, interleaved in blocks; the timed wall-clock and the CPU fractions."""
    calls: dict[str, Callable[[], float]] = {
        "env_step": loop.env_step,
        "update": loop.update,
        "iteration": loop.iteration,
    }
    for _ in range(warmup):  # one of each in turn: the first updates compile
        loop.update()
        loop.env_step()
        loop.iteration(record=False)
    samples: dict[str, list[float]] = {kind: [] for kind in KINDS}
    pids = loop.envs.worker_pids
    start, learner_cpu = time.perf_counter(), time.process_time()
    worker_cpu = [cpu_seconds(pid) for pid in pids]
    rounds = 0
    while len(samples["iteration"]) < steps:
        order = KINDS[rounds % len(KINDS) :] + KINDS[: rounds % len(KINDS)]
        for kind in order:
            for _ in range(min(block, steps - len(samples[kind]))):
                samples[kind].append(calls[kind]())
        rounds += 1
    elapsed = time.perf_counter() - start
    fractions = {"learner_cpu_fraction": (time.process_time() - learner_cpu) / elapsed}
    if pids:
        used = [cpu_seconds(pid) - before for pid, before in zip(pids, worker_cpu, strict=True)]
        fractions["worker_cpu_fraction"] = float(np.mean(used)) / elapsed
    return samples, elapsed, fractions


def summarize(samples: dict[str, list[float]], phases: dict[str, list[float]], num_envs: int) -> dict[str, Any]:
    """Medians, means, steps per second and the ratios of one run (see the module docstring)."""
    medians = {kind: statistics.median(samples[kind]) for kind in KINDS}
    ratio = medians["iteration"] / max(medians["env_step"], medians["update"])
    return {
        **{kind: {"median_s": sig(medians[kind]), "mean_s": sig(statistics.fmean(samples[kind]))} for kind in KINDS},
        "iteration_phases": {phase: {"median_s": sig(statistics.median(phases[phase]))} for phase in PHASES if phases[phase]},
        "env_steps_per_s": {
            "env_step": sig(num_envs / medians["env_step"]),
            "iteration": sig(num_envs / medians["iteration"]),
        },
        "ratio": round(ratio, 4),
        "ratio_to_sum": round(medians["iteration"] / (medians["env_step"] + medians["update"]), 4),
        "hidden_fraction": round(
            (medians["env_step"] + medians["update"] - medians["iteration"]) / min(medians["env_step"], medians["update"]), 4
        ),
        "target": TARGET_RATIO,
        "meets_target": bool(ratio <= TARGET_RATIO),
    }


def measure_run(args: Args, benchmark: str, workers: int, build_envs: BuildEnvs, state: dict[str, Any]) -> dict[str, Any]:
    """One benchmark x workers run; ``state`` carries the benchmark's agent from its first run to the next."""
    config = train_config(args, benchmark, workers)
    device = resolve_device(config.device)
    seeds = RunSeeds.from_seed(config.seed)
    load_before = load_average()
    start = time.perf_counter()
    envs = build_envs(config.env, seeds.envs)
    loop: Loop | None = None
    try:
        build_s = time.perf_counter() - start
        if "agent" not in state:
            start = time.perf_counter()
            seed_globals(seeds["global"])
            state["agent"] = build_agent(config, envs, device, seeds)
            state["agent_build_s"] = round(time.perf_counter() - start, 2)
        loop = Loop(config, envs, state["agent"], seeds, build_envs)
        loop.fill(args.fill_steps)
        samples, elapsed, fractions = time_round_robin(loop, args.steps, args.warmup, args.block)
        num_workers = envs.num_workers
        result = {
            "num_workers_asked": workers,
            "num_workers": num_workers,
            "num_envs": envs.num_envs,
            "cores_needed": num_workers + 1,
            "cpu_count": os.cpu_count(),
            "available_cores": available_cores(),
            "enough_cores": available_cores() >= num_workers + 1,
            "torch_threads": torch.get_num_threads(),
            "build_s": round(build_s, 2),
            "timed_s": round(elapsed, 2),
            **summarize(samples, loop.phases, envs.num_envs),
            **{name: round(value, 3) for name, value in fractions.items()},
            "load_average": {"before": load_before, "after": load_average()},
        }
    finally:
        if loop is not None:
            loop.close()
        envs.close()
    print(
        f"{PROGRAM}: {benchmark} workers={num_workers}: iteration {result['iteration']['median_s'] * 1e3:.1f} ms, "
        f"env step {result['env_step']['median_s'] * 1e3:.1f} ms, update {result['update']['median_s'] * 1e3:.1f} ms, "
        f"ratio {result['ratio']:.3f}",
        file=sys.stderr,
        flush=True,
    )
    return result


def measure_benchmark(args: Args, benchmark: str, build_envs: BuildEnvs) -> dict[str, Any]:
    """Every ``args.workers`` run of one benchmark, with the settings they share."""
    config = train_config(args, benchmark, args.workers[0])
    state: dict[str, Any] = {}
    runs = [measure_run(args, benchmark, workers, build_envs, state) for workers in args.workers]
    return {
        "preset": preset_name(benchmark),
        "num_tasks": len(task_names(benchmark)),
        "balancer": config.balancer.name,
        "hidden": list(config.sac.hidden_dims),
        "batch_size_per_task": config.replay.batch_size_per_task,
        "update_graph": config.sac.update_graph,
        "agent_build_s": state.get("agent_build_s"),
        "runs": runs,
    }


def run(args: Args, build_envs: BuildEnvs | None = None) -> dict[str, Any]:
    """The report as a dict (printed as JSON by :func:`main`); ``build_envs(env_config, seed)`` builds the
    environments (default :func:`envs.make_envs`; tests give :func:`envs.testing.make_scripted_envs`)."""
    problem = check_args(args)
    if problem is not None:
        raise SystemExit(problem)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    malloc_tuned = tune_glibc_malloc() if args.malloc_tuning else False
    device = resolve_device(args.device)
    report: dict[str, Any] = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "available_cores": available_cores(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "start_method": DEFAULT_START_METHOD,
            "load_average": {"before": load_average()},
        },
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "malloc_tuning": malloc_tuned,
        "target_ratio": TARGET_RATIO,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(args).items()},
        "benchmarks": {name: measure_benchmark(args, name, build_envs or make_envs) for name in args.benchmarks},
    }
    report["machine"]["load_average"]["after"] = load_average()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, refuse a bad argument in one line (exit status 2), measure, print and write the report."""
    args = tyro.cli(Args, args=argv, description=__doc__)
    problem = check_args(args)
    if problem is not None:
        print(f"{PROGRAM}: error: {problem}", file=sys.stderr)
        return 2
    try:
        report = run(args)
    except (EnvWorkerError, OSError) as error:
        print(f"{PROGRAM}: error: {first_line(error)}", file=sys.stderr)
        return 1
    emit_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
