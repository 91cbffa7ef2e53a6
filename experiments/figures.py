"""The report's PNG figures, drawn from the summary (:mod:`experiments.summary`) with matplotlib's Agg canvas.

Figures are ``matplotlib.figure.Figure`` objects on a ``FigureCanvasAgg``, never pyplot's: no
global figure registry, no display, nothing left open after a figure is written. The plots are
those of Agarwal et al. 2021 (aggregate intervals, performance profiles, probability of
improvement, sample-efficiency curves) plus a groups x tasks heatmap.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

FIGURE_DIR = "figures"
ANNOTATE_CELLS = 300
"""Heatmaps with at most this many cells get their values written in."""


def _save(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=120)


def _new(columns: int, width: float, height: float) -> tuple[Figure, list[Axes]]:
    figure = Figure(figsize=(width * columns, height), layout="constrained")
    return figure, list(np.atleast_1d(figure.subplots(1, columns)))


def aggregate_figure(summary: dict[str, Any], path: Path) -> None:
    """Mean and IQM of every group with their 95% intervals (none drawn for one-seed groups, marked n/a)."""
    groups = summary["groups"]
    figure, axes = _new(2, 5.0, 0.5 * len(groups) + 1.5)
    names = [g["name"] for g in groups]
    for ax, key, title in zip(axes, ("mean", "iqm"), ("Mean", "IQM")):
        estimates = [g[key] for g in groups]
        positions = np.arange(len(groups))
        ax.barh(positions, [e["value"] for e in estimates], color="tab:blue", alpha=0.7)
        for y, e in zip(positions, estimates):
            if e["ci"] is None:
                ax.text(0.02, y, "no interval (one seed)", va="center", fontsize=8)
            else:
                low, high = e["ci"]
                ax.errorbar(e["value"], y, xerr=[[e["value"] - low], [high - e["value"]]], color="black", capsize=4)
        ax.set_yticks(positions, names if ax is axes[0] else [""] * len(names))
        ax.set_xlim(0.0, 1.0)
        ax.invert_yaxis()
        ax.set_xlabel(f"{title} of {summary['score']['kind']} success")
        ax.set_title(title)
    figure.suptitle(f"{summary['score']['label']}: 95% stratified-bootstrap intervals", fontsize=9)
    _save(figure, path)


def _band(ax: Axes, x: list[float], series: dict[str, Any], label: str, step: bool = False) -> None:
    line = ax.step(x, series["value"], where="post", label=label) if step else ax.plot(x, series["value"], label=label)
    if series["low"] is not None:
        color = line[0].get_color()
        ax.fill_between(x, series["low"], series["high"], alpha=0.25, color=color, step="post" if step else None)


def _legend_below(figure: Figure, ax: Axes) -> None:
    """One legend for the whole figure, under its panels, so that long group names never cover a curve."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncols=1, fontsize=7, frameon=False)


def curves_figure(summary: dict[str, Any], path: Path) -> None:
    """Mean and IQM success against environment steps, with 95% bands, at the steps each group's runs share."""
    figure, axes = _new(2, 5.5, 4.0 + 0.15 * len(summary["groups"]))
    for group in summary["groups"]:
        curve = group["curve"]
        if curve is not None:
            for ax, key in zip(axes, ("mean", "iqm")):
                _band(ax, curve["steps"], curve[key], group["name"])
    for ax, title in zip(axes, ("Mean", "IQM")):
        ax.set_xlabel("environment steps")
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 450000 -> 450k
        ax.set_ylabel(f"{title} success (periodic evaluations)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(title)
    _legend_below(figure, axes[0])
    _save(figure, path)


def _heatmap(ax: Axes, values: np.ndarray, rows: list[str], columns: list[str], label: str) -> None:
    image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xticks(range(len(columns)), columns, rotation=90 if len(columns) > 3 else 0, fontsize=8)
    if values.size <= ANNOTATE_CELLS:
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
    ax.figure.colorbar(image, ax=ax, label=label)


def per_task_figure(summary: dict[str, Any], path: Path) -> None:
    """Groups x tasks heatmap of the per-task mean success over seeds (blank where a group lacks the task)."""
    groups = summary["groups"]
    tasks = list(dict.fromkeys(t for g in groups for t in g["tasks"]))
    values = np.array([[g["per_task"][t]["value"] if t in g["per_task"] else np.nan for t in tasks] for g in groups])
    figure, (ax,) = _new(1, max(6.0, 0.35 * len(tasks) + 3.0), 0.4 * len(groups) + 2.5)
    _heatmap(ax, values, [g["name"] for g in groups], tasks, "mean success over seeds")
    ax.set_title(f"Per-task {summary['score']['label']}", fontsize=9)
    _save(figure, path)


def profiles_figure(summary: dict[str, Any], path: Path) -> None:
    """Performance profiles: fraction of seed x task scores above each threshold, with 95% bands."""
    figure, (ax,) = _new(1, 6.0, 4.0 + 0.15 * len(summary["groups"]))
    for group in summary["groups"]:
        _band(ax, summary["profile_taus"], group["profile"], group["name"], step=True)
    ax.set_xlabel(f"{summary['score']['kind']} success rate threshold tau")
    ax.set_ylabel("fraction of seed x task scores > tau")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(-0.02, 1.02)
    _legend_below(figure, ax)
    _save(figure, path)


def improvement_figure(summary: dict[str, Any], path: Path) -> None:
    """P(row > column) for every ordered pair of groups (blank for pairs on different tasks)."""
    names = [g["name"] for g in summary["groups"]]
    values = np.full((len(names), len(names)), np.nan)
    for pair in summary["probability_of_improvement"]:
        if pair["value"] is not None:
            values[names.index(pair["x"]), names.index(pair["y"])] = pair["value"]
    size = 0.7 * len(names) + 3.0
    figure, (ax,) = _new(1, size + 1.0, size)
    _heatmap(ax, values, names, names, "P(row > column)")
    ax.set_title("Probability of improvement", fontsize=9)
    _save(figure, path)


FIGURES: dict[str, Callable[[dict[str, Any], Path], None]] = {
    "aggregate.png": aggregate_figure,
    "curves.png": curves_figure,
    "per_task.png": per_task_figure,
    "profiles.png": profiles_figure,
    "improvement.png": improvement_figure,
}


def figure_names(summary: dict[str, Any]) -> list[str]:
    """The figures this summary gets: curves only with periodic evaluations, improvement only with two groups."""
    has_curves = any(g["curve"] is not None for g in summary["groups"])
    return [
        name
        for name in FIGURES
        if (name != "curves.png" or has_curves) and (name != "improvement.png" or len(summary["groups"]) > 1)
    ]


def write_figures(summary: dict[str, Any], out_dir: Path) -> list[str]:
    """Write the summary's figures under ``out_dir/figures``; their paths relative to ``out_dir``."""
    (out_dir / FIGURE_DIR).mkdir(parents=True, exist_ok=True)
    written = []
    for name in figure_names(summary):
        FIGURES[name](summary, out_dir / FIGURE_DIR / name)
        written.append(f"{FIGURE_DIR}/{name}")
    return written
