"""Peak memory and time of one balanced critic update as the network widens (``mtrl-bench-width``).

One multi-task critic (``--network``: ``bronet``, the BroNet of BRC's critic, :class:`mtrl.bronet.MultiTaskBroNet`
with ``--blocks`` residual blocks, or ``mlp``, :class:`mtrl.nn.MultiTaskMLP` with three hidden layers;
input obs 39 + one-hot task + action 4, a per-task head of width 1, ``--batch-size`` samples per task,
MSE against random targets), at every width of ``--widths`` and task count of ``--tasks``, updated by:

- ``plain``: the mean of the task losses, one backward on the whole ``[T, B, ...]`` batch, the optimizer
  step (what an unbalanced multi-task update costs);
- ``materialised``: a :class:`mtrl.balanced_step.BalancedStep` with ``--balancer`` (CAGrad) on today's
  path: the per-task gradients ``[T, *param.shape]`` of every shared parameter from one vmapped
  backward (eager; ``--compile-gradients`` compiles it as the agents do by default);
- ``gramian``: the same step on the Gramian path (:mod:`mtrl.gramian`).

Each (width, T, variant) runs in a fresh Python process, so that one case's memory does not stay in
the next one's heap: the process builds the network, the batch and the step, then resets its peak
resident set (``/proc/self/clear_refs``, Linux) and runs ``--warmup`` and ``--repeats`` updates.
Reported: ``time_s``, the median wall-clock time of the timed updates, ``cpu_s``, the median process
CPU time (with ``--threads 1`` on a shared machine the steadier of the two; on CUDA the host's time),
and ``peak_mib``, the update's own memory (gradients, activations, per-task gradients or the
Gramian's temporaries, and the optimizer's state, made at the first update; the same for every
variant). On the CPU, where torch's allocator keeps no peak statistics and ``tracemalloc`` does not
see its allocations, that is the peak resident set over the updates minus the resident set just
before them, measured in a second process of the case (one warm-up, one update) whose glibc returns
every large block when it is freed (:data:`LIVE_MEMORY_ENV`), so that it counts the live tensors;
``resident_peak_mib`` is the same difference in the timing process, under glibc's defaults, which
keep freed blocks of up to 32 MiB in the heap (it depends on the order of allocations as much as
on their sizes). On CUDA ``peak_mib`` is ``torch.cuda.max_memory_allocated`` minus the memory
allocated before the updates. Every balanced row has ``memory_ratio``, ``time_ratio`` and
``cpu_ratio`` to the ``plain`` row of its case (and ``resident_memory_ratio`` on the CPU). A variant
whose per-task gradients or parameters would not fit in ``--memory-limit-gib`` is skipped (a row
with ``skipped``).

    mtrl-bench-width --widths 256 1024 2048 --tasks 10 50 --threads 1 --out width.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
import tyro
from torch import Tensor, nn

from benchmarks.report import check_report_file, emit_report
from benchmarks.update import ACTION_DIM, OBS_DIM, synchronize
from launch.factory import resolve_device
from mtrl.balanced_step import BalancedStep
from mtrl.balancers import BALANCERS, make_balancer
from mtrl.bronet import MultiTaskBroNet
from mtrl.nn import MultiTaskMLP
from mtrl.optim import NetworkOptimizer, OptimizerConfig
from mtrl.schedules import ScheduleConfig

VARIANTS = ("plain", "materialised", "gramian")
LIVE_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
"""glibc settings of the CPU memory pass: every block of 128 KiB or more is a mapping of its own, unmapped when
freed, so the resident set follows the live tensors (default glibc keeps freed blocks of up to 32 MiB in its heap)."""


@dataclasses.dataclass(frozen=True)
class Args:
    """Peak memory and time of one balanced critic update, plain vs materialised vs Gramian path, by width."""

    widths: tuple[int, ...] = (256, 1024, 2048)
    """Widths of the network's hidden layers."""
    tasks: tuple[int, ...] = (10, 50)
    """Task counts T."""
    network: Literal["bronet", "mlp"] = "bronet"
    """bronet (BRC's residual critic with LayerNorm) | mlp (three hidden layers)."""
    blocks: int = 2
    """bronet: residual blocks (BRC: 2)."""
    balancer: str = "cagrad"
    """The balancer of the materialised and Gramian variants (registry name)."""
    batch_size: int = 128
    """Samples per task."""
    repeats: int = 3
    """Timed updates per case (the median is reported)."""
    warmup: int = 1
    """Untimed updates per case before timing (the first makes the optimizer's state)."""
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    """Where to run; auto picks CUDA when available."""
    threads: int | None = None
    """torch CPU threads (default: torch's choice)."""
    compile_gradients: bool = False
    """Compile the materialised variant's vmapped per-task gradients (the agents' default; the compiling
    happens in the warm-up updates)."""
    memory_limit_gib: float = 20.0
    """Skip a case whose parameters, optimizer state and per-task gradients (materialised) would exceed this."""
    seed: int = 0
    """Seed of the network and the batch."""
    case: str | None = None
    """Internal: run one case ``width,tasks,variant`` in this process and print its JSON row."""
    out: Path | None = None
    """Also write the JSON report to this file (its directory is made when missing)."""


def make_network(args: Args, width: int, num_tasks: int) -> nn.Module:
    in_dim = OBS_DIM + num_tasks + ACTION_DIM
    if args.network == "bronet":
        return MultiTaskBroNet(in_dim, width, args.blocks, 1, num_tasks)
    return MultiTaskMLP(in_dim, (width,) * 3, 1, num_tasks)


def task_mse(forward: Callable[[Tensor], Tensor], inputs: Tensor, targets: Tensor) -> Tensor:
    return F.mse_loss(forward(inputs).squeeze(-1), targets)


def make_update(args: Args, width: int, num_tasks: int, variant: str, device: torch.device) -> Callable[[], None]:
    """One update of ``variant`` as a closure over its network, batch and optimizer."""
    torch.manual_seed(args.seed)
    net = make_network(args, width, num_tasks).to(device)
    inputs = torch.randn(num_tasks, args.batch_size, OBS_DIM + num_tasks + ACTION_DIM, device=device)  # [T, B, in]
    targets = torch.randn(num_tasks, args.batch_size, device=device)  # [T, B]
    if variant == "plain":
        optimizer = NetworkOptimizer.build(net, OptimizerConfig(), ScheduleConfig())

        def plain() -> None:
            loss = F.mse_loss(net(inputs).squeeze(-1), targets, reduction="none").mean(1).mean()
            optimizer.apply(torch.autograd.grad(loss, optimizer.params))

        return plain
    balancer = make_balancer(args.balancer, num_tasks)
    step = BalancedStep.build(
        "critic", net, balancer, OptimizerConfig(), ScheduleConfig(), compiled=args.compile_gradients, gradient_path=variant
    )

    def balanced() -> None:
        step.step(task_mse, (inputs, targets))

    return balanced


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def peak_resident_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_case(args: Args, width: int, num_tasks: int, variant: str) -> dict:
    """Measure one case in this process (see the module docstring)."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    update = make_update(args, width, num_tasks, variant, device)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # resets the peak resident set (VmHWM) to the current one
        before = resident_bytes()
    times, cpu_times = [], []
    for index in range(args.warmup + args.repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        update()
        synchronize(device)
        if index >= args.warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else peak_resident_bytes()
    return {
        "width": width,
        "tasks": num_tasks,
        "variant": variant,
        "time_s": statistics.median(times),
        "cpu_s": statistics.median(cpu_times),
        "peak_mib": (peak - before) / 2**20,
    }


def estimated_bytes(args: Args, width: int, num_tasks: int, variant: str) -> int:
    """Parameters, their gradient and Adam's two moments, plus the per-task gradients on the materialised path (float32)."""
    square_layers = 2 if args.network == "mlp" else 2 * args.blocks  # width x width weights
    shared = square_layers * width * width + (OBS_DIM + num_tasks + ACTION_DIM + 4) * width
    per_task = num_tasks * shared if variant == "materialised" else 0
    return 4 * (4 * shared + per_task)


def run(args: Args) -> dict:
    """Every case in a process of its own; the JSON-ready report."""
    check_args(args)
    report: dict = {
        "device": args.device,
        "torch": torch.__version__,
        "threads": args.threads,
        "network": args.network,
        "blocks": args.blocks if args.network == "bronet" else None,
        "balancer": args.balancer,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "compile_gradients": args.compile_gradients,
        "memory": "peak_mib: peak resident set minus resident set before the updates, glibc returning every block >= 128 KiB "
        "when freed (CPU, own process, 1 warm-up + 1 update); max_memory_allocated minus allocated (CUDA). resident_peak_mib: "
        "the same under glibc's defaults, in the timing process (CPU)",
        "results": [],
    }

    def refusal(width: int, num_tasks: int, variant: str) -> str | None:
        over = estimated_bytes(args, width, num_tasks, variant) > args.memory_limit_gib * 2**30
        return f"over --memory-limit-gib {args.memory_limit_gib}" if over else None

    def measure(width: int, num_tasks: int, variant: str) -> dict:
        row = measure_in_subprocess(args, width, num_tasks, variant)
        print(json.dumps(row), file=sys.stderr, flush=True)
        return row

    report["results"] = sweep(args.widths, args.tasks, measure, refusal)
    return report


def sweep(
    widths: Sequence[int],
    tasks: Sequence[int],
    measure: Callable[[int, int, str], dict],
    refusal: Callable[[int, int, str], str | None],
) -> list[dict]:
    """Every case ``width x tasks x VARIANTS``: ``measure(width, tasks, variant)``'s row, or a ``skipped`` row
    with ``refusal``'s reason; each case's balanced rows with their ratios to its plain row (:func:`add_ratios`)."""
    results: list[dict] = []
    for width in widths:
        for num_tasks in tasks:
            rows = {}
            for variant in VARIANTS:
                reason = refusal(width, num_tasks, variant)
                if reason is None:
                    rows[variant] = measure(width, num_tasks, variant)
                else:
                    rows[variant] = {"width": width, "tasks": num_tasks, "variant": variant, "skipped": reason}
            add_ratios(rows)
            results.extend(rows.values())
    return results


RATIOS = {"time_ratio": "time_s", "cpu_ratio": "cpu_s", "memory_ratio": "peak_mib", "resident_memory_ratio": "resident_peak_mib"}
"""Each ratio of a balanced row to its case's ``plain`` row, and the field it divides."""


def add_ratios(rows: dict[str, dict]) -> None:
    """Give every measured balanced row of one case its :data:`RATIOS` to the case's ``plain`` row.

    A ratio whose ``plain`` figure is zero (a tiny network whose update did not grow the resident set) is left out.
    """
    plain = rows.get("plain", {})
    for variant, row in rows.items():
        if variant != "plain" and "time_s" in row and "time_s" in plain:
            for ratio, figure in RATIOS.items():
                if figure in row and plain.get(figure):
                    row[ratio] = row[figure] / plain[figure]


def measure_in_subprocess(args: Args, width: int, num_tasks: int, variant: str) -> dict:
    """The case's row from a process of its own; on the CPU its ``peak_mib`` from a second one (the module docstring)."""
    row = run_subprocess(args, width, num_tasks, variant)
    if "failed" in row or resolve_device(args.device).type != "cpu":
        return row
    memory_args = dataclasses.replace(args, warmup=1, repeats=1)
    memory_row = run_subprocess(memory_args, width, num_tasks, variant, env=os.environ | LIVE_MEMORY_ENV)
    if "failed" in memory_row:
        return memory_row
    return row | {"peak_mib": memory_row["peak_mib"], "resident_peak_mib": row["peak_mib"]}


def run_subprocess(args: Args, width: int, num_tasks: int, variant: str, env: dict[str, str] | None = None) -> dict:
    argv = [sys.executable, "-m", "benchmarks.width", "--case", f"{width},{num_tasks},{variant}"]
    for field in dataclasses.fields(Args):
        value = getattr(args, field.name)
        if field.name in ("case", "out", "widths", "tasks") or value is None:
            continue
        flag = f"--{field.name.replace('_', '-')}"
        if isinstance(value, bool):
            argv.append(flag if value else f"--no-{field.name.replace('_', '-')}")
        else:
            argv += [flag, str(value)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        return {"width": width, "tasks": num_tasks, "variant": variant, "failed": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_args(args: Args) -> None:
    """Refuse bad arguments before anything runs: ``SystemExit`` naming the value and what is allowed."""
    for field, smallest in (("repeats", 1), ("warmup", 0), ("batch_size", 1), ("threads", 1), ("blocks", 0)):
        value = getattr(args, field)
        if value is not None and value < smallest:
            raise SystemExit(f"--{field.replace('_', '-')} must be >= {smallest}, got {value}")
    for field in ("widths", "tasks"):
        values = getattr(args, field)
        if not values or min(values) < 2:
            raise SystemExit(f"--{field}: every value must be >= 2, got {list(values)}")
    if args.balancer not in BALANCERS:
        raise SystemExit(f"--balancer: unknown balancer {args.balancer!r}; allowed: {', '.join(sorted(BALANCERS))}")
    if not args.memory_limit_gib > 0:
        raise SystemExit(f"--memory-limit-gib must be > 0, got {args.memory_limit_gib}")
    try:
        resolve_device(args.device)
    except ValueError as error:
        raise SystemExit(f"--device: {error}") from None
    if args.out is not None:
        check_report_file("--out", args.out, create_parents=True)


def parse_case(case: str) -> tuple[int, int, str]:
    parts = case.split(",")
    if len(parts) != 3 or parts[2] not in VARIANTS or not (parts[0].isdigit() and parts[1].isdigit()):
        raise SystemExit(f"--case must be width,tasks,variant with variant one of {', '.join(VARIANTS)}, got {case!r}")
    return int(parts[0]), int(parts[1]), parts[2]


def main(argv: Sequence[str] | None = None) -> None:
    args = tyro.cli(Args, args=argv)
    if args.case is not None:
        print(json.dumps(run_case(args, *parse_case(args.case))))
        return
    emit_report(run(args), args.out)


if __name__ == "__main__":
    main()
