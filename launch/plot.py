"""``mtrl-plot``: the figures of one run, as PNG files in ``RUN_DIR/plots/``.

    mtrl-plot runs/MT10__sac__cagrad__1__20261121-120000
    mtrl-plot RUN_DIR --out figures/

Every figure is drawn over environment steps from what the run has written so far, so a run that
is still training can be plotted (a torn last line of ``metrics.jsonl`` is skipped):

- ``success.png``: evaluation success rate, mean and per task (``eval/step_*.json``, ``eval/final.json``);
- ``episodic_return.png``: return and success of the training episodes (``charts/episodic_*``);
- ``losses.png``: one panel per ``losses/*`` scalar, its mean and, where logged, every task's;
- ``temperatures.png``: SAC's temperatures (``losses/alpha``, mean and per task), log scale;
- ``balancer_weights.png``: the balancer's per-task weights over time, a heatmap per balanced network;
- ``conflicts.png``: mean cosine between task gradients and conflicting pairs, per balanced network.

A figure without data (no evaluation yet, a PPO run's temperatures, a balancer that logs no
weights) is skipped, with a line saying why. Not a run directory: one line, exit status 2.
Figures are plain ``matplotlib.figure.Figure`` objects rendered by the Agg canvas: no pyplot
state, no display, nothing left open.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import tyro
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from envs import task_names
from launch.config import config_from_plain
from launch.errors import first_line
from launch.run_dir import CONFIG_FILE, EVAL_DIR, RunDirError, load_config_data
from mtrl.config_io import ConfigDataError
from mtrl.logging import METRICS_FILE, read_metrics

PROGRAM = "mtrl-plot"
PLOTS_DIR = "plots"
FINAL_EVAL = "final.json"
TEMPERATURE = "losses/alpha"
BALANCER_PREFIX = "balancer/"


@dataclass(frozen=True)
class Evaluation:
    """One evaluation file of the run."""

    step: int
    success_rate: float
    per_task_success: dict[str, float]
    episodes_per_task: int


@dataclass(frozen=True)
class RunData:
    """What a run has written so far: its tasks, its log records and its evaluations (by step)."""

    algo: str
    tasks: list[str]
    records: list[dict[str, float]]
    evaluations: list[Evaluation]
    final: Evaluation | None

    @functools.cached_property
    def tags(self) -> set[str]:
        """Every tag logged at least once."""
        return {tag for record in self.records for tag in record} - {"step", "time"}

    def series(self, tag: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps [K], values [K])`` of the records that hold ``tag``."""
        points = [(record["step"], record[tag]) for record in self.records if tag in record]
        steps, values = zip(*points) if points else ((), ())
        return np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)

    def per_task_tags(self, base: str) -> dict[str, str]:
        """``task -> f"{base}/{task}"`` for the tasks that have that tag."""
        tags = self.tags
        return {task: f"{base}/{task}" for task in self.tasks if f"{base}/{task}" in tags}


def read_records(path: Path) -> list[dict[str, float]]:
    """The step records of a metrics.jsonl that may still be written (:func:`mtrl.logging.read_metrics`)."""
    records = read_metrics(path, partial=True)
    return [r for r in records if isinstance(r, dict) and isinstance(r.get("step"), (int, float))]


def read_evaluation(path: Path) -> Evaluation | None:
    """One ``eval/*.json`` written by the trainer; None if it is unreadable or not one of its evaluations."""
    try:
        data = json.loads(path.read_text())
        return Evaluation(
            step=int(data["step"]),
            success_rate=float(data["success_rate"]),
            per_task_success={task: float(rate) for task, rate in data["per_task_success"].items()},
            episodes_per_task=int(data["episodes_per_task"]),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def load_run(run_dir: Path) -> RunData:
    """Read a run directory; RunDirError (one line) if it is not one."""
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory")
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunDirError(f"{run_dir}: not a run directory of mtrl-train (no {CONFIG_FILE} in it)")
    config = config_from_plain(load_config_data(run_dir))
    eval_dir = run_dir / EVAL_DIR
    periodic = [read_evaluation(path) for path in sorted(eval_dir.glob("step_*.json"))]
    return RunData(
        algo=config.algo,
        tasks=task_names(config.env.benchmark),
        records=read_records(run_dir / METRICS_FILE),
        evaluations=sorted((e for e in periodic if e is not None), key=lambda e: e.step),
        final=read_evaluation(eval_dir / FINAL_EVAL),
    )


# ------------------------------------------------------------------------------------------ figures
FigureResult = Figure | str
"""A figure to write, or why there is none."""


def _new_figure(panels: int, columns: int = 1, panel_size: tuple[float, float] = (7.0, 3.6)) -> tuple[Figure, list[Axes]]:
    rows = math.ceil(panels / columns)
    figure = Figure(figsize=(panel_size[0] * columns, panel_size[1] * rows), layout="constrained")
    axes = [figure.add_subplot(rows, columns, i + 1) for i in range(panels)]
    for ax in axes:
        ax.set_xlabel("environment steps")
        ax.grid(alpha=0.3)
    return figure, axes


def _task_lines(ax: Axes, data: RunData, base: str) -> None:
    """``base`` (the mean over tasks) bold and ``base/<task>`` thin, on one panel."""
    for task, tag in data.per_task_tags(base).items():
        ax.plot(*data.series(tag), linewidth=0.9, alpha=0.7, label=task)
    steps, values = data.series(base)
    if len(steps):
        ax.plot(steps, values, color="black", linewidth=2.0, label="mean")


def _legend(ax: Axes, entries: int) -> None:
    if entries <= 12:
        ax.legend(fontsize=7, loc="best")


def success_figure(data: RunData) -> FigureResult:
    """Evaluation success rate over steps: the mean bold, every task thin, the final evaluation starred."""
    if not data.evaluations and data.final is None:
        return "no evaluations yet"
    figure, (ax,) = _new_figure(1, panel_size=(8.0, 4.5))
    steps = [e.step for e in data.evaluations]
    final = data.final
    for task in data.tasks:
        (line,) = ax.plot(steps, [e.per_task_success.get(task, math.nan) for e in data.evaluations], linewidth=0.9, alpha=0.7, marker=".", label=task)
        if final is not None and task in final.per_task_success:
            ax.plot([final.step], [final.per_task_success[task]], marker="*", markersize=8, color=line.get_color(), alpha=0.8)
    ax.plot(steps, [e.success_rate for e in data.evaluations], color="black", linewidth=2.2, marker="o", label="mean")
    title = "evaluation success rate"
    if final is not None:
        ax.plot([final.step], [final.success_rate], marker="*", markersize=14, color="black", linestyle="none",
                label=f"final ({final.episodes_per_task} episodes per task)")
        title += f": final {final.success_rate:.2f}"
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("success rate")
    ax.set_title(title)
    _legend(ax, len(data.tasks) + 2)
    return figure


def _smoothed(values: np.ndarray) -> np.ndarray:
    """A trailing moving average over about a fiftieth of the points."""
    window = max(1, len(values) // 50)
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (cumulative[1:] - cumulative[np.arange(len(values)) + 1 - counts]) / counts


def episodic_return_figure(data: RunData) -> FigureResult:
    """Return and success of the training episodes (every logged episode end, and a moving average)."""
    panels = [tag for tag in ("charts/episodic_return", "charts/episodic_success") if tag in data.tags]
    if not panels:
        return "no training episode has ended yet"
    figure, axes = _new_figure(len(panels))
    for ax, tag in zip(axes, panels):
        steps, values = data.series(tag)
        ax.plot(steps, values, linewidth=0.6, alpha=0.35, color="tab:blue")
        ax.plot(steps, _smoothed(values), linewidth=1.8, color="tab:blue")
        ax.set_title(f"{tag} (training episodes, moving average bold)")
    return figure


def loss_tags(data: RunData) -> list[str]:
    """The mean ``losses/*`` tags (not the per-task ones, not the temperatures)."""
    tags = data.tags
    per_task = {f"/{task}" for task in data.tasks}
    return sorted(
        tag
        for tag in tags
        if tag.startswith("losses/") and tag != TEMPERATURE and not any(tag.endswith(suffix) for suffix in per_task)
    )


def losses_figure(data: RunData) -> FigureResult:
    """One panel per loss: its mean over tasks bold and, where logged, every task thin."""
    tags = loss_tags(data)
    if not tags:
        return "no losses logged yet"
    figure, axes = _new_figure(len(tags), columns=min(3, len(tags)), panel_size=(5.0, 3.2))
    for ax, tag in zip(axes, tags):
        _task_lines(ax, data, tag)
        ax.set_title(tag, fontsize=9)
    _legend(max(axes, key=lambda ax: len(ax.get_lines())), len(data.tasks) + 1)
    return figure


def temperatures_figure(data: RunData) -> FigureResult:
    """SAC's entropy temperatures, mean and per task, on a log scale."""
    if TEMPERATURE not in data.tags and not data.per_task_tags(TEMPERATURE):
        return f"no temperatures in this {data.algo} run ({TEMPERATURE} is SAC's)"
    figure, (ax,) = _new_figure(1, panel_size=(8.0, 4.0))
    _task_lines(ax, data, TEMPERATURE)
    ax.set_yscale("log")
    ax.set_title("SAC temperatures (alpha)")
    _legend(ax, len(data.tasks) + 1)
    return figure


def balanced_networks(data: RunData, statistic: str) -> list[str]:
    """The networks (``critic``, ``actor``) with a ``balancer/<network>/<statistic>...`` tag, in log order."""
    networks: list[str] = []
    for record in data.records:
        for tag in record:
            parts = tag.split("/")
            if tag.startswith(BALANCER_PREFIX) and len(parts) >= 3 and parts[2] == statistic and parts[1] not in networks:
                networks.append(parts[1])
    return networks


def weights_figure(data: RunData) -> FigureResult:
    """A heatmap per balanced network: task (rows) by log step (columns), the balancer's weight of each task."""
    networks = [n for n in balanced_networks(data, "weights") if data.per_task_tags(f"balancer/{n}/weights")]
    if not networks:
        return "the balancer logged no per-task weights"
    height = max(2.5, 0.22 * len(data.tasks) + 1.5)
    figure, axes = _new_figure(len(networks), panel_size=(9.0, height))
    for ax, network in zip(axes, networks):
        tags = data.per_task_tags(f"balancer/{network}/weights")
        rows = [record for record in data.records if all(tag in record for tag in tags.values())]
        steps = np.asarray([record["step"] for record in rows], dtype=np.float64)
        weights = np.asarray([[record[tag] for record in rows] for tag in tags.values()])  # [T, K]
        edges = np.concatenate([[0.0], steps])  # each column covers the steps since the previous log
        mesh = ax.pcolormesh(edges, np.arange(len(tags) + 1) - 0.5, weights, cmap="viridis", shading="flat")
        ax.set_yticks(range(len(tags)), list(tags), fontsize=7 if len(tags) <= 12 else 5)
        ax.invert_yaxis()
        ax.set_title(f"balancer weights, {network} (balancer/{network}/weights/<task>)", fontsize=9)
        figure.colorbar(mesh, ax=ax, label="weight")
        ax.grid(False)
    return figure


def conflicts_figure(data: RunData) -> FigureResult:
    """Mean cosine between the tasks' gradients and the number of conflicting pairs, per balanced network."""
    statistics = [s for s in ("mean_cosine", "conflicting_pairs") if balanced_networks(data, s)]
    if not statistics:
        return "the balancer logged no conflict statistics"
    figure, axes = _new_figure(len(statistics))
    for ax, statistic in zip(axes, statistics):
        for network in balanced_networks(data, statistic):
            ax.plot(*data.series(f"balancer/{network}/{statistic}"), linewidth=1.2, label=network)
        ax.set_title(f"balancer/<network>/{statistic}", fontsize=9)
        if statistic == "mean_cosine":
            ax.axhline(0.0, color="gray", linewidth=0.8)
        ax.legend(fontsize=7)
    return figure


FIGURES: dict[str, Callable[[RunData], FigureResult]] = {
    "success": success_figure,
    "episodic_return": episodic_return_figure,
    "losses": losses_figure,
    "temperatures": temperatures_figure,
    "balancer_weights": weights_figure,
    "conflicts": conflicts_figure,
}
"""Every figure by the name of its file (``<name>.png``)."""


# ------------------------------------------------------------------------------------------ writing
@dataclass(frozen=True)
class PlotResult:
    """What :func:`plot_run` wrote, and the figures it skipped with the reason."""

    out: Path
    written: list[Path]
    skipped: dict[str, str]


def check_out_dir(out: Path) -> None:
    """RunDirError unless ``out`` is (or can become) a writable directory."""
    ancestor = out
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise RunDirError(f"--out {out}: {ancestor} is not a writable directory")


def plot_run(run_dir: Path, out: Path | None = None) -> PlotResult:
    """Write every figure of :data:`FIGURES` that has data as ``out/<name>.png`` (default ``run_dir/plots``)."""
    data = load_run(run_dir)
    out = run_dir / PLOTS_DIR if out is None else out
    check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    written, skipped = [], {}
    for name, draw in FIGURES.items():
        figure = draw(data)
        if isinstance(figure, str):
            skipped[name] = figure
            continue
        path = out / f"{name}.png"
        FigureCanvasAgg(figure).print_png(str(path))
        written.append(path)
    return PlotResult(out, written, skipped)


def describe(result: PlotResult) -> str:
    """One line: where the figures are, which ones, and what was skipped."""
    names = ", ".join(path.name for path in result.written) or "none"
    line = f"plots in {result.out}: {names}"
    if result.skipped:
        line += "; skipped " + "; ".join(f"{name}.png ({reason})" for name, reason in result.skipped.items())
    return line


@dataclass(frozen=True)
class Args:
    """The figures of one mtrl-train run (it may still be training), as PNG files."""

    run_dir: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="RUN_DIR")]]
    """A run directory written by mtrl-train."""
    out: Path | None = None
    """Where the PNG files go (default RUN_DIR/plots)."""


def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(Args, args=sys.argv[1:] if argv is None else argv, prog=PROGRAM, description=__doc__)
    try:
        result = plot_run(args.run_dir, args.out)
    except (RunDirError, ConfigDataError, ValueError) as error:
        print(f"{PROGRAM}: error: {first_line(error)}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"{PROGRAM}: error: {first_line(error)}", file=sys.stderr)
        return 1
    print(describe(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
