"""The GPU measurements in one call (``mtrl-bench-gpu``): run once on a CUDA machine, at most 8 minutes.

    mtrl-bench-gpu --out gpu.json

Sections, in the order they run, each recorded in the JSON:

1. ``device``: CUDA is there and used: the device name, the CUDA version, torch's float32 matmul
   precision and where a fresh agent's parameters are.
2. ``training_mt10``: ``mtrl-train mt10`` (the CAGrad paper's MT10 SAC) with ``--workers``
   environment workers (capped by mtrl at one per environment), a subprocess run for
   ``--train-seconds`` (start-up, warm-up and compiling included) and then stopped by SIGTERM; its
   steps/s after the warm-up, read from ``metrics.jsonl`` (``charts/SPS`` and the logged steps), and the
   wall-clock of 2M steps per task *projected* from that rate. ``training_mt50``: the same for
   MT50 when ``--mt50-seconds`` > 0 (MT50 takes ~45 s to build). ``projections`` sums them up; a
   benchmark that was not measured has no projection.
3. ``updates``: one whole SAC update (:func:`benchmarks.update.sac_update`: 3x400, 128 samples per
   task, obs 39 + one-hot T, the balancer on both networks) at every ``--tasks`` for every
   ``--balancers``, per path: ``eager`` (``update_graph off``, nothing compiled but the solver),
   ``gradients`` (per-task gradients compiled, ``update_graph off``), ``compiled`` (the whole update
   as one function) and ``cuda-graph`` (the same replayed as CUDA graphs), each with bf16 off and on,
   and the plain eager reference ``sac-plain`` (:class:`benchmarks.update.PlainSAC`). Per variant:
   the median and minimum milliseconds over ``--repeats`` (the device synchronised only at timing
   boundaries), the seconds of its build and warm-up (compiling, CUDA-graph recording), and the
   ratios (of medians) to ``sac-plain`` and to the same balancer's ``eager`` path.
4. ``no_sync``: per timed variant, one more update under ``torch.cuda.set_sync_debug_mode("error")``
   after its warm-up and timing: ``pass``, or ``fail:`` and the first line of the error (a host
   synchronisation inside the update).
5. ``width``: the width sweep of ``mtrl-bench-width`` (:mod:`benchmarks.width`: one balanced CAGrad
   update of a BroNet critic, plain vs the materialised vs the Gramian path, peak memory from
   ``torch.cuda.max_memory_allocated`` and median time) at every ``--widths`` and ``--width-tasks``, in
   this process, each case skipped when the budget or the device's memory would not hold it.

The budget (``--budget-s``, 450 s) keeps the call within 8 minutes: a training section runs only
when its seconds fit in what is left, and every update variant only when what its path has cost
so far (or a first guess: compiling the whole update takes a minute or more) fits; the rest is
recorded as skipped, with the reason, rather than run. Variants run in the order of what matters
most: float32 before bf16, then ``--balancers``, ``--tasks`` and ``--paths`` in the order given.
A second call measures what was skipped, e.g. ``mtrl-bench-gpu --train-seconds 0 --tasks 50``. The
report is rewritten to ``--out`` after every section and variant (``complete`` is false until the
end), so a call that is killed still leaves what it measured. A variant that fails is recorded
with its error's first line; the others still run.

Without CUDA it refuses in one line (exit status 2), unless ``--allow-cpu`` (for the tests: the
CPU with the sizes given; cuda-graph, bf16 and the no-sync check are recorded as skipped).
"""

from __future__ import annotations

import dataclasses
import gc
import json
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

import mtrl.balancers as balancers
from benchmarks.report import check_report_file, emit_report
from benchmarks.update import Args as UpdateArgs
from benchmarks.update import plain_sac_update, sac_agent, sac_update, synchronize
from benchmarks.width import Args as WidthArgs
from benchmarks.width import estimated_bytes, run_case
from benchmarks.width import sweep as width_cases
from envs import task_names
from launch.errors import first_line
from launch.train import parse_config
from mtrl.logging import read_metrics

PROGRAM = "mtrl-bench-gpu"
PATHS: dict[str, tuple[bool, str]] = {
    "eager": (False, "off"),
    "gradients": (True, "off"),
    "compiled": (True, "compiled"),
    "cuda-graph": (True, "cuda-graph"),
}
"""Every update path: its ``compile_gradients`` and ``update_graph``."""
FIRST_COST_GUESS_S: dict[str, float] = {"eager": 10.0, "gradients": 45.0, "compiled": 120.0, "cuda-graph": 120.0, "width": 20.0}
"""A variant's build, warm-up and timing in seconds before one of its path has been measured (``width``: one case of the width sweep)."""
STOP_MARGIN_S = 40.0
"""Seconds a training section may need past its own to stop its trainer (two SIGTERMs, then SIGKILL)."""
STEPS_PER_TASK = 2_000_000
"""The projection's run length: the CAGrad paper's 2M environment steps per task."""
NEEDS_CUDA = "skipped: needs CUDA"


@dataclasses.dataclass(frozen=True)
class Args:
    """Measure mtrl's GPU path in one call: MT10 training speed, the SAC update per path, host syncs."""

    tasks: tuple[int, ...] = (10, 50)
    """Task counts T of the update timings."""
    balancers: tuple[str, ...] = ("cagrad", "mean", "pcgrad")
    """Balancers of the update timings (registry names)."""
    paths: tuple[str, ...] = tuple(PATHS)
    """Update paths to time: eager, gradients, compiled, cuda-graph."""
    hidden: tuple[int, ...] = (400, 400, 400)
    """Trunk widths of the timed agents."""
    batch_size: int = 128
    """Samples per task of the timed updates."""
    repeats: int = 10
    """Timed updates per variant."""
    warmup: int = 3
    """Untimed updates per variant first (compiling and CUDA-graph recording happen here)."""
    workers: int = 15
    """Environment worker processes of the training sections (mtrl caps them at one per environment)."""
    train_seconds: float = 180.0
    """Seconds the MT10 training process runs, start-up included (0 skips the section)."""
    mt50_seconds: float = 0.0
    """Seconds the MT50 training process runs (0 skips it; MT50 takes ~45 s to build)."""
    benchmark: str = "MT10"
    """The benchmark or comma-separated task list of the ``mt10`` training section."""
    widths: tuple[int, ...] = (1024, 2048, 4096)
    """Widths of the width sweep (section 5; empty: skipped)."""
    width_tasks: tuple[int, ...] = (10, 50)
    """Task counts of the width sweep."""
    budget_s: float = 450.0
    """Wall-clock budget of the whole call in seconds: what would not fit in it is skipped."""
    allow_cpu: bool = False
    """Run on the CPU when there is no CUDA (for tests): the CUDA-only parts are recorded as skipped."""
    out: Path | None = None
    """Also write the JSON report here (rewritten after every section, ``complete`` true at the end)."""


@dataclasses.dataclass(frozen=True)
class Variant:
    """One timed update: task count, balancer, path and precision."""

    num_tasks: int
    balancer: str
    path: str
    bf16: bool

    @property
    def name(self) -> str:
        return f"{self.balancer}/{self.path}" + ("/bf16" if self.bf16 else "")


@dataclasses.dataclass
class Budget:
    """The call's deadline (``time.monotonic``) and the most seconds a variant of each path has cost."""

    deadline: float
    cost_s: dict[str, float] = dataclasses.field(default_factory=dict)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def refusal(self, needed_s: float) -> str | None:
        """None when ``needed_s`` fits in what is left, else the skip reason."""
        left = self.left()
        if needed_s <= left:
            return None
        return f"skipped: over the time budget (needs ~{needed_s:.0f} s, {max(left, 0.0):.0f} s left)"

    def refuse_path(self, path: str) -> str | None:
        """:meth:`refusal` for one more variant of ``path``, at what that path has cost so far (or its first guess)."""
        return self.refusal(self.cost_s.get(path, FIRST_COST_GUESS_S[path]))

    def spent(self, path: str, seconds: float) -> None:
        self.cost_s[path] = max(seconds, self.cost_s.get(path, 0.0))


def note(message: str) -> None:
    """One progress line on stderr (the JSON goes to stdout)."""
    print(f"{PROGRAM}: {message}", file=sys.stderr, flush=True)


def error_line(error: BaseException) -> str:
    """``Type: first line of the message``."""
    return f"{type(error).__name__}: {first_line(error)}"


def check_args(args: Args) -> str | None:
    """The first bad argument as a one-line message naming the flag and what is allowed, or None."""
    for field, smallest in (("repeats", 1), ("warmup", 0), ("batch_size", 1), ("workers", 1)):
        if getattr(args, field) < smallest:
            return f"--{field.replace('_', '-')} must be >= {smallest}, got {getattr(args, field)}"
    for field in ("train_seconds", "mt50_seconds"):
        if not getattr(args, field) >= 0:
            return f"--{field.replace('_', '-')} must be >= 0 (0 skips the section), got {getattr(args, field)}"
    if not args.budget_s > 0:
        return f"--budget-s must be > 0, got {args.budget_s}"
    for field, smallest in (("tasks", 2), ("hidden", 1)):
        values = getattr(args, field)
        if not values or min(values) < smallest:
            return f"--{field}: every value must be >= {smallest}, got {list(values)}"
    for field in ("widths", "width_tasks"):
        values = getattr(args, field)
        if values and min(values) < 2:
            return f"--{field.replace('_', '-')}: every value must be >= 2, got {list(values)}"
    for field, allowed in (("balancers", sorted(balancers.BALANCERS)), ("paths", list(PATHS))):
        values = getattr(args, field)
        unknown = [value for value in values if value not in allowed] or ([] if values else ["(none)"])
        if unknown:
            return f"--{field}: unknown {field[:-1]} {unknown[0]!r}; allowed: {', '.join(allowed)}"
    try:
        task_names(args.benchmark)
    except ValueError as error:
        return f"--benchmark: {first_line(error)}"
    return None


def save_partial(report: dict[str, Any], out: Path | None) -> None:
    """Rewrite ``out`` with the report so far (atomically), so a killed call leaves what it measured."""
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps(report, indent=2) + "\n")
    partial.replace(out)


# ----------------------------------------------------------------------------------------- device
def device_facts(args: Args, device: torch.device) -> dict[str, Any]:
    """What the call used: the device, its name and CUDA version, where a fresh agent's parameters live."""
    facts: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if device.type == "cuda":
        facts |= {"name": torch.cuda.get_device_name(device), "cuda": torch.version.cuda}
    agent = sac_agent(_update_args(args), args.tasks[0], device, args.balancers[0], compiled=False)
    places = sorted({str(param.device) for param in agent.parameters()})
    facts["agent_parameters_on"] = places
    facts["agent_on_device"] = all(place.split(":")[0] == device.type for place in places)
    return facts


# --------------------------------------------------------------------------------------- training
def train_argv(preset: str, benchmark: str, workers: int, device: torch.device) -> list[str]:
    """``mtrl-train``'s arguments for a run that trains until stopped, logging often, never evaluating or checkpointing."""
    return [
        preset,
        "--env.benchmark", benchmark,
        "--env.num-workers", str(workers),
        "--device", device.type,
        "--total-steps", str(10**12),
        "--log-every", "2000",
        "--eval-every", "0",
        "--checkpoint-every", "0",
        "--no-progress",
        "--no-tensorboard",
    ]  # fmt: skip


def stop_trainer(child: subprocess.Popen) -> None:
    """SIGTERM, then a second SIGTERM (stop without the checkpoint), then SIGKILL, each after a wait."""
    for signal_number, wait_s in ((signal.SIGTERM, 2.0), (signal.SIGTERM, STOP_MARGIN_S / 2), (signal.SIGKILL, STOP_MARGIN_S / 4)):
        if child.poll() is not None:
            return
        child.send_signal(signal_number)
        try:
            child.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def train_for(command: list[str], seconds: float, log: Path) -> int | None:
    """Run ``command`` (its output to ``log``) for ``seconds`` and stop it; its exit status if it ended first, else None."""
    with log.open("w") as output:  # a file, not a pipe: a full pipe would stall the trainer
        child = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        return child.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None
    finally:
        stop_trainer(child)


def training_rate(records: list[dict], warmup_steps: int, num_tasks: int) -> dict[str, Any]:
    """Steps/s between the first and the last log after the warm-up (its compiling included in neither), and the projection."""
    trained = [record for record in records if "charts/SPS" in record and record["step"] > warmup_steps]
    if len(trained) < 2:
        return {"failed": f"fewer than two logs after the warm-up of {warmup_steps} steps ({len(records)} logs in all)"}
    first, last = trained[0], trained[-1]
    steps_per_s = (last["step"] - first["step"]) / max(last["time"] - first["time"], 1e-9)
    total_steps = STEPS_PER_TASK * num_tasks
    return {
        "steps_per_s_after_warmup": round(steps_per_s, 1),
        "measured_steps": last["step"] - first["step"],
        "measured_s": round(last["time"] - first["time"], 1),
        "logged_sps_last": round(last["charts/SPS"], 1),
        "last_step": last["step"],
        "projection": {
            "steps_per_task": STEPS_PER_TASK,
            "total_steps": total_steps,
            "hours": round(total_steps / steps_per_s / 3600, 2),
            "note": "projected from the measured rate (steps per task * T / steps/s), not a measured run",
        },
    }


def training_section(
    preset: str, benchmark: str, seconds: float, flag: str, args: Args, device: torch.device, budget: Budget
) -> dict[str, Any]:
    """Train ``preset`` on ``benchmark`` for ``seconds`` (when they fit in the budget) and measure its rate."""
    if seconds <= 0:
        return {"skipped": f"not asked for ({flag} 0)"}
    refusal = budget.refusal(seconds + STOP_MARGIN_S)
    if refusal:
        return {"skipped": refusal.removeprefix("skipped: ")}
    argv = train_argv(preset, benchmark, args.workers, device)
    config = parse_config(argv)
    num_tasks = len(task_names(benchmark))
    section: dict[str, Any] = {
        "preset": preset,
        "benchmark": benchmark,
        "num_tasks": num_tasks,
        "workers": args.workers,
        "workers_used": min(args.workers, num_tasks * config.env.envs_per_task),
        "seconds": seconds,
        "warmup_steps": config.replay.warmup_steps,  # type: ignore[union-attr]
        "command": ["mtrl-train", *argv],
    }
    note(f"training {preset} on {benchmark} for {seconds:.0f} s")
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(scratch) / "run"
        log = Path(scratch) / "train.log"
        status = train_for([sys.executable, "-m", "launch.train", *argv, "--run-dir", str(run_dir)], seconds, log)
        output = log.read_text(errors="replace").strip().splitlines()
        records = read_metrics(run_dir / "metrics.jsonl", partial=True)
    section |= training_rate(records, section["warmup_steps"], num_tasks)
    if status is not None:
        section["exited_early"] = status
    if "failed" in section or status is not None:
        section["last_output_line"] = output[-1] if output else ""
    return section


def projections(report: dict[str, Any]) -> dict[str, Any]:
    """Each trained benchmark's projected hours for 2M steps per task; unmeasured ones say so."""
    summary: dict[str, Any] = {}
    for section in ("training_mt10", "training_mt50"):
        entry = report.get(section, {})
        projection = entry.get("projection")
        name = entry.get("benchmark", section.removeprefix("training_").upper())
        summary[name] = (
            {"hours": projection["hours"], "steps_per_s": entry["steps_per_s_after_warmup"], "note": projection["note"]}
            if projection
            else "not measured: no projection"
        )
    return summary


# ---------------------------------------------------------------------------------------- updates
def _update_args(args: Args) -> UpdateArgs:
    return UpdateArgs(hidden=args.hidden, batch_size=args.batch_size)


def variants_in_order(args: Args) -> list[Variant]:
    """Every timed variant, what matters most first: float32 before bf16, then balancers, task counts and paths as given."""
    return [
        Variant(num_tasks, balancer, path, bf16)
        for bf16 in (False, True)
        for balancer in args.balancers
        for num_tasks in args.tasks
        for path in args.paths
    ]


def cuda_only(variant: Variant, device: torch.device) -> str | None:
    """Why ``variant`` cannot run on ``device`` (bf16 and CUDA graphs need CUDA), or None."""
    if device.type == "cuda" or not (variant.bf16 or variant.path == "cuda-graph"):
        return None
    return NEEDS_CUDA + (" (bf16 autocast is measured on the GPU)" if variant.bf16 else " (CUDA graphs)")


def timed_ms(step: Callable[[], Any], device: torch.device) -> float:
    """Milliseconds of one ``step``, the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return (time.perf_counter() - start) * 1e3


def measure(step: Callable[[], Any], warmup: int, repeats: int, device: torch.device) -> dict[str, float]:
    """Warm-up seconds (compiling, recording) and the median and minimum milliseconds of ``repeats`` timed steps."""
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    synchronize(device)
    warmup_s = time.perf_counter() - start
    times = [timed_ms(step, device) for _ in range(repeats)]
    return {"median_ms": round(statistics.median(times), 3), "min_ms": round(min(times), 3), "warmup_s": round(warmup_s, 1)}


def no_host_sync(step: Callable[[], Any], device: torch.device) -> str:
    """``pass`` when one ``step`` runs under ``set_sync_debug_mode("error")``, else ``fail:`` and the error's first line."""
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        outcome = "pass"
    except RuntimeError as error:
        outcome = f"fail: {first_line(error)}"
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize(device)
    return outcome


def variant_step(args: Args, variant: Variant, device: torch.device) -> Callable[[], Any]:
    """:func:`benchmarks.update.sac_update` of ``variant``: its agent updating on a fixed random batch."""
    compile_gradients, update_graph = PATHS[variant.path]
    return sac_update(_update_args(args), variant.num_tasks, device, variant.balancer, compile_gradients, update_graph, variant.bf16)


def run_variant(args: Args, variant: Variant, device: torch.device) -> tuple[dict[str, Any], str]:
    """``variant``'s row (timings, or ``failed`` and the error's first line) and its no-sync outcome."""
    try:
        step = variant_step(args, variant, device)
        row: dict[str, Any] = measure(step, args.warmup, args.repeats, device)
    except Exception as error:  # one broken path must not cost the call the other measurements
        return {"failed": error_line(error)}, "not checked: the update failed"
    if device.type != "cuda":
        return row, NEEDS_CUDA + " (torch.cuda.set_sync_debug_mode)"
    try:
        return row, no_host_sync(step, device)
    except Exception as error:
        return row, f"not checked: {error_line(error)}"
    finally:
        del step
        gc.collect()
        torch.cuda.empty_cache()


def add_ratios(rows: dict[str, Any]) -> None:
    """Each timed row's ratio (of medians) to ``sac-plain`` and to its balancer's ``eager`` path at the same precision."""
    plain = rows.get("sac-plain", {}).get("median_ms")
    for name, row in rows.items():
        if "median_ms" not in row or name == "sac-plain":
            continue
        if plain:
            row["ratio_to_sac_plain"] = round(row["median_ms"] / plain, 3)
        balancer, path, *precision = name.split("/")
        eager = rows.get("/".join([balancer, "eager", *precision]), {}).get("median_ms")
        if eager and path != "eager":
            row["ratio_to_eager"] = round(row["median_ms"] / eager, 3)


def time_updates(args: Args, device: torch.device, budget: Budget, report: dict[str, Any]) -> None:
    """Fill ``report["updates"]`` and ``report["no_sync"]`` (``{T: {variant: ...}}``), saving after every variant."""
    updates: dict[str, dict[str, Any]] = {str(num_tasks): {} for num_tasks in args.tasks}
    no_sync: dict[str, dict[str, str]] = {str(num_tasks): {} for num_tasks in args.tasks}
    report["updates"], report["no_sync"] = updates, no_sync
    for num_tasks in args.tasks:
        refusal = budget.refusal(FIRST_COST_GUESS_S["eager"])
        try:
            updates[str(num_tasks)]["sac-plain"] = {"skipped": refusal} if refusal else measure(
                plain_sac_update(_update_args(args), num_tasks, device), args.warmup, args.repeats, device
            )
        except Exception as error:
            updates[str(num_tasks)]["sac-plain"] = {"failed": error_line(error)}
        note(f"T={num_tasks} sac-plain: {updates[str(num_tasks)]['sac-plain']}")
    for variant in variants_in_order(args):
        reason = cuda_only(variant, device) or budget.refuse_path(variant.path)
        if reason:
            updates[str(variant.num_tasks)][variant.name] = {"skipped": reason}
            no_sync[str(variant.num_tasks)][variant.name] = reason
            continue
        started = time.monotonic()
        row, sync = run_variant(args, variant, device)
        budget.spent(variant.path, time.monotonic() - started)
        updates[str(variant.num_tasks)][variant.name], no_sync[str(variant.num_tasks)][variant.name] = row, sync
        note(f"T={variant.num_tasks} {variant.name}: {row}; no host sync: {sync}")
        save_partial(report, args.out)
    for rows in updates.values():
        add_ratios(rows)


def width_sweep(args: Args, device: torch.device, budget: Budget) -> list[dict[str, Any]]:
    """Section 5: every case of the width sweep that fits the budget and the device's memory, in this process."""
    width_args = WidthArgs(device=device.type, batch_size=args.batch_size, repeats=args.repeats, warmup=args.warmup)
    memory = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else width_args.memory_limit_gib * 2**30

    def refusal(width: int, num_tasks: int, variant: str) -> str | None:
        refused = budget.refuse_path("width")
        if refused is None and estimated_bytes(width_args, width, num_tasks, variant) > memory:
            refused = "skipped: over the device's memory"
        return refused

    def measure(width: int, num_tasks: int, variant: str) -> dict[str, Any]:
        started = time.monotonic()
        try:
            row = run_case(width_args, width, num_tasks, variant)
        except Exception as error:
            row = {"width": width, "tasks": num_tasks, "variant": variant, "failed": error_line(error)}
        budget.spent("width", time.monotonic() - started)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        note(f"width {width} T={num_tasks} {variant}: {row}")
        return row

    return width_cases(args.widths, args.width_tasks, measure, refusal)


# ------------------------------------------------------------------------------------------- main
def run(args: Args, device: torch.device) -> dict[str, Any]:
    """Every section that fits in the budget; the JSON-ready report (also saved to ``args.out`` as it grows)."""
    started = time.monotonic()
    budget = Budget(started + args.budget_s)
    report: dict[str, Any] = {"program": PROGRAM, "complete": False, "args": _plain_args(args), "device": device_facts(args, device)}
    save_partial(report, args.out)
    for section, preset, benchmark, seconds, flag in (
        ("training_mt10", "mt10", args.benchmark, args.train_seconds, "--train-seconds"),
        ("training_mt50", "mt50", "MT50", args.mt50_seconds, "--mt50-seconds"),
    ):
        try:
            report[section] = training_section(preset, benchmark, seconds, flag, args, device, budget)
        except Exception as error:
            report[section] = {"failed": error_line(error)}
        save_partial(report, args.out)
    report["projections"] = projections(report)
    time_updates(args, device, budget, report)
    report["width"] = width_sweep(args, device, budget)
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    report["complete"] = True
    return report


def _plain_args(args: Args) -> dict[str, Any]:
    return {key: (str(value) if isinstance(value, Path) else value) for key, value in dataclasses.asdict(args).items()}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, refuse in one line (exit status 2) without CUDA or with a bad argument, measure, print and write the report."""
    args = tyro.cli(Args, args=argv, description=__doc__)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print(f"{PROGRAM}: error: no CUDA device (torch.cuda.is_available() is False); this script measures the GPU path", file=sys.stderr)
        return 2
    problem = check_args(args)
    if problem is None and args.out is not None:
        try:
            check_report_file("--out", args.out, create_parents=True)
        except SystemExit as refusal:
            problem = str(refusal)
    if problem is not None:
        print(f"{PROGRAM}: error: {problem}", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    emit_report(run(args, device), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
