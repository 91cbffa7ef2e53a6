"""The two-objective toy of CAGrad (Liu et al. 2021, "Conflict-Averse Gradient Descent for
Multi-task Learning", NeurIPS, Figure 1), run with the balancers of :mod:`mtrl.balancers`.

The point ``x`` in the plane is the only (shared) parameter; the two task losses are the authors'
(Cranial-XIX/CAGrad ``toy.py``): log-barrier-like valleys for ``x2 > 0`` blended by ``tanh`` into two
shifted quadratics for ``x2 < 0``. Their average is flat along a valley and has its minimum on the
segment of Pareto-optimal points ``x1 in [-7, 7]`` near ``x2 = -8.36``. Every method starts from
the same three points and steps Adam (lr 1e-3) on the balancer's direction for 100k steps, as in
the authors' script.

    mtrl-toy --out runs/toy            # writes runs/toy/toy.png and runs/toy/toy.json

CAGrad's runs are the slow ones (its solver runs at every step); runs are spread over ``--workers``
processes, and ``--steps`` shortens them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import torch
import tyro
from torch import Tensor

from benchmarks.report import check_output_dir
import mtrl.balancers as balancers

#: Floor of the log terms (authors' ``LOWER``).
LOWER = 5e-6
#: The three starting points of the paper's figure.
STARTS: tuple[tuple[float, float], ...] = ((-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0))
#: The paper's methods, in its order ("mean" is plain Adam on the average loss).
METHODS: tuple[str, ...] = ("mean", "mgda", "pcgrad", "cagrad")
#: The task minima of the quadratic (x2 < 0) parts sit at x1 = -7 and x1 = 7: the Pareto segment.
PARETO_X1 = (-7.0, 7.0)
#: Plot window ``[-LIMIT, LIMIT]^2``.
LIMIT = 10.5


@dataclasses.dataclass(frozen=True)
class Args:
    """Reproduce CAGrad's Figure 1 toy: trajectories of Mean, MGDA, PCGrad and CAGrad."""

    out: Path = Path("runs/toy")
    """Directory for toy.png and toy.json (made when missing)."""
    steps: int = 100_000
    """Adam steps per run (the authors' script uses 100k)."""
    lr: float = 1e-3
    """Adam learning rate."""
    methods: tuple[str, ...] = METHODS
    """Balancer names from mtrl.balancers; unavailable ones are skipped."""
    c: float = 0.5
    """CAGrad's conflict-aversion radius."""
    dtype: Literal["float32", "float64"] = "float32"
    """Precision of the point and the losses (the authors use float32)."""
    record_every: int = 100
    """Keep every n-th point of each trajectory for the plot."""
    workers: int = os.cpu_count() or 1
    """Processes running the (method, start) runs; 1 runs them in this process."""


def toy_losses(x: Tensor) -> Tensor:
    """The two task losses at points ``x: [..., 2]`` -> ``[..., 2]``."""
    x1, x2 = x[..., 0], x[..., 1]
    valley1 = (0.5 * (-x1 - 7) - torch.tanh(-x2)).abs().clamp_min(LOWER).log() + 6
    valley2 = (0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs().clamp_min(LOWER).log() + 6
    bowl1 = ((x1 - 7) ** 2 + 0.1 * (x2 + 8) ** 2) / 10 - 20
    bowl2 = ((x1 + 7) ** 2 + 0.1 * (x2 + 8) ** 2) / 10 - 20
    upper = torch.tanh(0.5 * x2).clamp_min(0)  # weight of the valleys (x2 > 0)
    lower = torch.tanh(-0.5 * x2).clamp_min(0)  # weight of the bowls (x2 < 0)
    return torch.stack([valley1 * upper + bowl1 * lower, valley2 * upper + bowl2 * lower], dim=-1)


def toy_gradients(x: Tensor) -> tuple[Tensor, Tensor]:
    """Losses ``[2]`` and per-task gradients ``G: [2, 2]`` (row i = grad of L_i) at ``x: [2]``.

    One backward for both tasks: task i's loss is evaluated on its own copy of ``x`` (row i).
    """
    with torch.enable_grad():
        copies = x.detach().expand(2, 2).clone().requires_grad_(True)  # [task, coordinate]
        losses = toy_losses(copies).diagonal()  # [2]: L_i at row i
        (grads,) = torch.autograd.grad(losses.sum(), copies)  # [2, 2]
    return losses.detach(), grads


def pareto_gap(grads: Tensor) -> float:
    """``min_{a in [0, 1]} ||a g1 + (1 - a) g2||``: zero exactly at Pareto-stationary points."""
    g1, g2 = grads[0].double(), grads[1].double()
    diff = g1 - g2
    denom = float(diff @ diff)
    a = 0.5 if denom == 0.0 else min(max(float(-(g2 @ diff)) / denom, 0.0), 1.0)
    return float((a * g1 + (1 - a) * g2).norm())


def available_methods(names: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The requested names present in the registry, and a reason for each skipped one."""
    present = [name for name in names if name in balancers.BALANCERS]
    skipped = {name: "not in mtrl.balancers" for name in names if name not in balancers.BALANCERS}
    return present, skipped


def make_method(name: str, c: float) -> balancers.Balancer:
    """A two-task balancer; CAGrad rescaled by ``1/(1+c)`` as in the authors' toy."""
    kwargs: dict[str, Any] = {"c": c, "rescale": 2} if name == "cagrad" else {}
    return balancers.make_balancer(name, 2, seed=0, **kwargs)


def run_one(method: str, start: tuple[float, float], steps: int, lr: float, c: float, dtype: str, record_every: int) -> dict:
    """Adam on the balancer's direction from ``start``; the final point and a thinned path.

    Runs on one thread (the tensors are tiny), restoring the thread count afterwards.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _descend(method, start, steps, lr, c, dtype, record_every)
    finally:
        torch.set_num_threads(threads)


def _descend(method: str, start: tuple[float, float], steps: int, lr: float, c: float, dtype: str, record_every: int) -> dict:
    """The run of :func:`run_one`, on whatever threads torch has."""
    balancer = make_method(method, c)
    x = torch.tensor(start, dtype=getattr(torch, dtype), requires_grad=True)  # [2]
    optimizer = torch.optim.Adam([x], lr=lr)
    path = [list(start)]
    began = time.perf_counter()
    for step in range(1, steps + 1):
        losses, grads = toy_gradients(x)  # [2], [2, 2]
        x.grad = balancer.combine(grads, losses)  # [2]
        optimizer.step()
        if step % record_every == 0 or step == steps:
            path.append(x.detach().tolist())
        if steps >= 10_000 and step % (steps // 10) == 0:
            print(f"{method} from {start}: {step}/{steps} steps, {time.perf_counter() - began:.0f} s", flush=True)
    final = x.detach()
    losses, grads = toy_gradients(final)
    f1, f2 = losses.tolist()
    return {
        "method": method,
        "start": list(start),
        "final": final.tolist(),
        "f1": f1,
        "f2": f2,
        "mean_loss": 0.5 * (f1 + f2),
        "pareto_gap": pareto_gap(grads),
        "steps": steps,
        "seconds": time.perf_counter() - began,
        "path": path,
    }


def average_loss_grid(n: int = 400) -> tuple[Tensor, Tensor, Tensor]:
    """``X, Y, mean loss`` on an ``n x n`` grid over the plot window (float64)."""
    axis = torch.linspace(-LIMIT, LIMIT, n, dtype=torch.float64)
    grid_y, grid_x = torch.meshgrid(axis, axis, indexing="ij")
    return grid_x, grid_y, toy_losses(torch.stack([grid_x, grid_y], dim=-1)).mean(-1)


def average_minimum() -> tuple[float, float]:
    """The minimiser of the average loss: a grid search refined by L-BFGS in float64."""
    grid_x, grid_y, mean = average_loss_grid(801)
    index = int(mean.argmin())
    x = torch.tensor([float(grid_x.flatten()[index]), float(grid_y.flatten()[index])], dtype=torch.float64)
    x.requires_grad_(True)
    optimizer = torch.optim.LBFGS([x], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = toy_losses(x).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    return tuple(x.detach().tolist())  # type: ignore[return-value]


def run_all(args: Args) -> dict:
    """Every (method, start) run; the JSON report (paths included, for the plot)."""
    methods, skipped = available_methods(args.methods)
    for name, reason in skipped.items():
        print(f"{name}: skipped ({reason})", file=sys.stderr)
    jobs = [(m, s, args.steps, args.lr, args.c, args.dtype, args.record_every) for m in methods for s in STARTS]
    jobs.sort(key=lambda job: job[0] != "cagrad")  # the slowest runs first
    if args.workers <= 1:
        results = [run_one(*job) for job in jobs]
    else:
        with ProcessPoolExecutor(min(args.workers, len(jobs)), mp_context=get_context("spawn")) as pool:
            results = list(pool.map(run_one, *zip(*jobs)))
    minimum = average_minimum()
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for result in results:
        result["distance_to_average_minimum"] = math.dist(result["final"], minimum)
        runs[result.pop("method")].append(result)
    for method in runs:
        runs[method].sort(key=lambda r: STARTS.index(tuple(r["start"])))
    return {
        "steps": args.steps,
        "lr": args.lr,
        "cagrad_c": args.c,
        "dtype": args.dtype,
        "average_minimum": list(minimum),
        "average_minimum_loss": float(toy_losses(torch.tensor(minimum, dtype=torch.float64)).mean()),
        "pareto_segment": {"x1": list(PARETO_X1), "x2": minimum[1]},
        "skipped": skipped,
        "methods": runs,
    }


def plot(report: dict, path: Path) -> None:
    """One panel per method: average-loss contours, the three trajectories, start and end points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid_x, grid_y, mean = average_loss_grid()
    methods = list(report["methods"])
    fig, axes = plt.subplots(1, max(len(methods), 1), figsize=(4.2 * max(len(methods), 1), 4.4), squeeze=False)
    minimum = report["average_minimum"]
    for ax, method in zip(axes[0], methods):
        ax.contour(grid_x.numpy(), grid_y.numpy(), mean.numpy(), levels=25, cmap="viridis", linewidths=0.8)
        ax.plot(PARETO_X1, [minimum[1]] * 2, color="gray", linewidth=5, alpha=0.6, zorder=1, label="Pareto set")
        ax.plot(*minimum, marker="*", markersize=14, color="k", zorder=6, label="average minimum")
        for run in report["methods"][method]:
            points = torch.tensor(run["path"])  # [N, 2]
            progress = torch.linspace(0, 1, points.shape[0]).numpy()
            ax.scatter(points[:, 0], points[:, 1], c=progress, cmap="autumn", s=3, zorder=4)
            ax.plot(*run["start"], marker="o", markersize=8, color="k", zorder=5)
            ax.plot(*run["final"], marker="X", markersize=9, color="tab:blue", markeredgecolor="w", zorder=7)
        ax.set_title(f"{method} ({report['steps']} steps)")
        ax.set_xlim(-LIMIT, LIMIT)
        ax.set_ylim(-LIMIT, LIMIT)
        ax.set_aspect("equal")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle("CAGrad toy (Liu et al. 2021): average loss; paths red to yellow, o start, X end", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(report: dict, out: Path) -> None:
    """``out/toy.png`` and ``out/toy.json`` (the JSON without the trajectories)."""
    out.mkdir(parents=True, exist_ok=True)
    plot(report, out / "toy.png")
    summary = {
        **report,
        "methods": {m: [{k: v for k, v in r.items() if k != "path"} for r in runs] for m, runs in report["methods"].items()},
    }
    (out / "toy.json").write_text(json.dumps(summary, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    args = tyro.cli(Args, args=argv)
    check_output_dir("--out", args.out, create=True)
    report = run_all(args)
    write_outputs(report, args.out)
    for method, runs in report["methods"].items():
        for run in runs:
            print(
                f"{method:>8} from {tuple(run['start'])}: end ({run['final'][0]:+.3f}, {run['final'][1]:+.3f}) "
                f"mean loss {run['mean_loss']:+.4f} pareto gap {run['pareto_gap']:.2e} "
                f"distance to average minimum {run['distance_to_average_minimum']:.3f} ({run['seconds']:.0f} s)"
            )
    print(f"wrote {args.out / 'toy.png'} and {args.out / 'toy.json'}")


if __name__ == "__main__":
    main()
