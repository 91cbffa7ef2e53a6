"""The GPU measurements in one call (``mtrl-bench-gpu``): run once on a CUDA machine, at most 8 minutes.

    mtrl-bench-gpu --out gpu.json

Sections, in order, each recorded in the JSON (a section that would overrun ``--budget-s`` is
recorded as skipped, with the reason, rather than run):

1. ``device``: CUDA is there and used (device name, CUDA version, where the agent's parameters are).
2. ``updates``: one whole SAC update (:func:`benchmarks.update.sac_update`: 3x400, 128 samples per
   task, obs 39 + one-hot T) at every ``--tasks`` for every ``--balancers``, per path: ``eager``
   (nothing compiled), ``gradients`` (per-task gradients compiled, ``update_graph off``),
   ``compiled`` (the whole update as one function) and ``cuda-graph`` (the same replayed as CUDA
   graphs), each with bf16 off and on, and the plain eager reference ``sac-plain``; median
   milliseconds over ``--repeats``, the device synchronised only at timing boundaries.
3. ``no_sync``: one update per path under ``torch.cuda.set_sync_debug_mode("error")``, after its
   warm-up: pass, or the first line of the error (a host synchronisation inside the update).
4. ``training``: ``mtrl-train mt10`` with ``--workers`` environment workers for ``--train-seconds``
   (a subprocess stopped with SIGTERM), its steps/s after the warm-up from ``metrics.jsonl``, and the
   projected wall-clock of 2M steps per task at that rate (labelled as a projection); MT50 the same
   when ``--mt50-seconds`` > 0.

Without CUDA it refuses in one line (exit 2), unless ``--allow-cpu`` (for the tests: the CPU with
the sizes given; the CUDA-only parts are recorded as skipped).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import tyro

from benchmarks.report import check_report_file, emit_report
from benchmarks.update import Args as UpdateArgs
from benchmarks.update import plain_sac_update, sac_agent, sac_update, synchronize
from envs import task_names
from mtrl.logging import read_metrics

PROGRAM = "mtrl-bench-gpu"
#: (name, compile_gradients, update_graph) of every path timed.
PATHS: tuple[tuple[str, bool, str], ...] = (
    ("eager", False, "off"),
    ("gradients", True, "off"),
    ("compiled", True, "compiled"),
    ("cuda-graph", True, "cuda-graph"),
)
STEPS_PER_TASK = 2_000_000


@dataclasses.dataclass(frozen=True)
class Args:
    """Measure mtrl's GPU path in one call: updates per path, host syncs, MT10 training speed."""

    tasks: tuple[int, ...] = (10, 50)
    """Task counts T of the update timings."""
    balancers: tuple[str, ...] = ("cagrad", "mean", "pcgrad")
    """Balancers of the update timings."""
    hidden: tuple[int, ...] = (400, 400, 400)
    """Trunk widths."""
    paths: tuple[str, ...] = tuple(name for name, _, _ in PATHS)
    """Update paths to time: eager, gradients, compiled, cuda-graph."""
    batch_size: int = 128
    """Samples per task."""
    repeats: int = 10
    """Timed updates per variant."""
    warmup: int = 3
    """Untimed updates per variant first (compiling and CUDA-graph recording happen here)."""
    workers: int = 15
    """Environment worker processes of the training section."""
    train_seconds: float = 180.0
    """Seconds of MT10 training (0 skips the section)."""
    mt50_seconds: float = 0.0
    """Seconds of MT50 training (0 skips it; MT50 takes ~45 s to build)."""
    benchmark: str = "MT10"
    """The training section's benchmark or task list (the tests use two tasks)."""
    budget_s: float = 450.0
    """Wall-clock budget of the whole call: a section that would start past it is skipped."""
    allow_cpu: bool = False
    """Run on the CPU when there is no CUDA (for tests): the CUDA-only parts are skipped."""
    out: Path | None = None
    """Also write the JSON report here."""


def _median_ms(step: Callable[[], Any], warmup: int, repeats: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return round(statistics.median(times), 3)


def _chosen(args: Args) -> list[tuple[str, bool, str]]:
    return [path for path in PATHS if path[0] in args.paths]


def _update_args(args: Args) -> UpdateArgs:
    return UpdateArgs(hidden=args.hidden, batch_size=args.batch_size)


def time_updates(args: Args, device: torch.device, deadline: float) -> dict[str, Any]:
    """``{T: {variant: ms or skip reason}}`` for every path, balancer and bf16 setting."""
    results: dict[str, Any] = {}
    update_args = _update_args(args)
    for num_tasks in args.tasks:
        rows: dict[str, Any] = {"sac-plain": _median_ms(plain_sac_update(update_args, num_tasks, device), args.warmup, args.repeats, device)}
        for balancer in args.balancers:
            for path, compile_gradients, update_graph in _chosen(args):
                for bf16 in (False, True):
                    name = f"{balancer}/{path}" + ("/bf16" if bf16 else "")
                    if (bf16 or update_graph == "cuda-graph") and device.type != "cuda":
                        rows[name] = "skipped: needs CUDA"
                    elif time.monotonic() > deadline:
                        rows[name] = "skipped: over the time budget"
                    else:
                        step = sac_update(update_args, num_tasks, device, balancer, compile_gradients, update_graph, bf16=bf16)
                        rows[name] = _median_ms(step, args.warmup, args.repeats, device)
        results[str(num_tasks)] = rows
    return results


def check_no_sync(args: Args, device: torch.device) -> dict[str, str]:
    """Per path: one update under ``set_sync_debug_mode("error")`` after its warm-up ("pass" or the error's first line)."""
    if device.type != "cuda":
        return {path: "skipped: needs CUDA" for path, _, _ in _chosen(args)}
    outcome = {}
    for path, compile_gradients, update_graph in _chosen(args):
        step = sac_update(_update_args(args), args.tasks[0], device, args.balancers[0], compile_gradients, update_graph)
        for _ in range(args.warmup):
            step()
        torch.cuda.synchronize(device)
        torch.cuda.set_sync_debug_mode("error")
        try:
            step()
            outcome[path] = "pass"
        except RuntimeError as error:
            outcome[path] = "fail: " + (str(error).strip().splitlines() or [""])[0]
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return outcome


def train_rate(preset: str, benchmark: str, workers: int, seconds: float, device: torch.device) -> dict[str, Any]:
    """Train ``preset`` for ``seconds`` in a subprocess; its steps/s after the warm-up and the 2M-steps-per-task projection."""
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(scratch) / "run"
        command = [
            sys.executable, "-m", "launch.train", preset, "--env.benchmark", benchmark, "--env.num-workers", str(workers),
            "--device", device.type, "--run-dir", str(run_dir), "--total-steps", str(10**9), "--log-every", "2000",
            "--eval-every", "0", "--no-progress", "--no-tensorboard",
        ]
        log = Path(scratch) / "train.log"  # a file, not a pipe: a full pipe would stall the trainer
        with log.open("w") as output:
            child = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        try:
            child.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        error = log.read_text(errors="replace").strip().splitlines()
        records = read_metrics(run_dir / "metrics.jsonl", partial=True)
    config_warmup = _warmup_steps(preset)
    trained = [r for r in records if "charts/SPS" in r and r["step"] > config_warmup]
    if len(trained) < 2:
        return {"skipped": "fewer than two logs after the warm-up", "last_error_line": error[-1] if error else ""}
    num_tasks = len(task_names(benchmark))
    steps_per_s = (trained[-1]["step"] - trained[0]["step"]) / (trained[-1]["time"] - trained[0]["time"])
    hours = STEPS_PER_TASK * num_tasks / steps_per_s / 3600
    return {
        "benchmark": benchmark,
        "workers": workers,
        "seconds": seconds,
        "steps_per_s_after_warmup": round(steps_per_s, 1),
        "logged_sps_last": trained[-1]["charts/SPS"],
        "projected_hours_for_2M_steps_per_task": round(hours, 2),
        "note": "a projection from the measured rate, not a measured run",
    }


def _warmup_steps(preset: str) -> int:
    from launch.config import PRESETS

    return PRESETS[preset][1].sac.warmup_steps  # type: ignore[union-attr]


def device_facts(device: torch.device) -> dict[str, Any]:
    """What the run used: the device, its name and CUDA version, where a fresh agent's parameters live."""
    facts: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
    if device.type == "cuda":
        facts |= {"name": torch.cuda.get_device_name(device), "cuda": torch.version.cuda}
    agent = sac_agent(UpdateArgs(hidden=(8,), batch_size=2), 2, device, "mean", False)
    facts["parameters_on"] = sorted({str(param.device) for param in agent.parameters()})
    return facts


def run(args: Args) -> dict[str, Any]:
    """Every section within the budget; the JSON-ready report."""
    started = time.monotonic()
    deadline = started + args.budget_s
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report: dict[str, Any] = {"device": device_facts(device)}
    report["updates"] = time_updates(args, device, deadline)
    report["no_sync"] = check_no_sync(args, device)
    for name, preset, benchmark, seconds in (
        ("training_mt10", "mt10", args.benchmark, args.train_seconds),
        ("training_mt50", "mt50", "MT50", args.mt50_seconds),
    ):
        if seconds <= 0:
            report[name] = {"skipped": "not asked for (0 seconds)"}
        elif time.monotonic() + seconds > deadline + 60:
            report[name] = {"skipped": "over the time budget"}
        else:
            report[name] = train_rate(preset, benchmark, args.workers, seconds, device)
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = tyro.cli(Args, args=argv, description=__doc__)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print(f"{PROGRAM}: error: no CUDA device (torch.cuda.is_available() is False); this script measures the GPU path", file=sys.stderr)
        return 2
    unknown = [path for path in args.paths if path not in {name for name, _, _ in PATHS}]
    if unknown:
        print(f"{PROGRAM}: error: --paths: unknown path {unknown[0]!r}; allowed: {', '.join(name for name, _, _ in PATHS)}", file=sys.stderr)
        return 2
    if args.out is not None:
        check_report_file("--out", args.out, create_parents=True)
    os.environ.setdefault("MUJOCO_GL", "egl")
    emit_report(run(args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
