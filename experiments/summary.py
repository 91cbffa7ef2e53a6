"""Every number of a report, as plain data (``report.json``); report.md and the figures are drawn from it.

How the numbers are formed is :func:`aggregation_statement`, printed in report.md and stored in
report.json; the statistics are those of Agarwal et al. 2021 through rliable (:mod:`experiments.statistics`).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import numpy as np

from experiments.groups import Group
from experiments.runs import EVAL_DIR, FINAL_FILE, Run, Score, SkippedRun
from experiments.statistics import (
    CONFIDENCE,
    PROFILE_TAUS,
    Estimate,
    aggregates,
    curve_aggregates,
    estimate,
    improvement,
    performance_profile,
    task_means,
)

SCORE_LABELS: dict[str, str] = {
    "final": f"final success ({EVAL_DIR}/{FINAL_FILE})",
    "best": f"best success over training (each run's best periodic evaluation, {EVAL_DIR}/step_*.json)",
}
NO_INTERVAL = "one seed: no interval is possible"


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def aggregation_statement(score: Score, reps: int, seed: int) -> list[str]:
    """How the score matrix is formed and aggregated, and why (one paragraph a line)."""
    source = (
        "eval/final.json"
        if score == "final"
        else "its best periodic evaluation (highest mean success; a maximum over noisy evaluations, so biased upward)"
    )
    return [
        "Score matrix, per group: seeds x tasks (rliable's runs x tasks), entry (i, j) the success rate of seed i "
        f"on task j in {source}.",
        "Mean: rliable's aggregate_mean, the mean over tasks of the mean over seeds; that is the mean over seeds of "
        "each run's Meta-World success rate, the number Meta-World results are reported in.",
        "IQM: rliable's aggregate_iqm, the mean of the middle 50% of all seed x task scores, as Agarwal et al. (2021) "
        "define it: robust to one outlying task or seed. Meta-World success saturates at 1, and the IQM is exactly "
        "1.0 once three quarters of the seed x task scores are 1.0 (the 'perfect' column gives that fraction), so "
        "read it with the mean and the performance profile. An IQM over seeds of each run's success rate was not "
        "chosen: with few seeds it trims nothing (with 3 seeds it is the plain mean).",
        f"Intervals: {CONFIDENCE:.0%} percentile stratified bootstrap (rliable, task_bootstrap=False): seeds "
        f"resampled with replacement within each task, {reps} samples, NumPy's global RNG seeded with {seed} before "
        "each rliable call (rliable 1.2 draws its resamples there). They cover the variation over seeds on these "
        "tasks, not over other tasks.",
        "Probability of improvement P(X > Y): per task, the probability that a seed of X scores above a seed of Y "
        "(Mann-Whitney U / (n m), ties one half), averaged over tasks (rliable's probability_of_improvement); its "
        "interval from independent stratified bootstraps of X and Y.",
        "Performance profile: the fraction of seed x task scores above each threshold tau (rliable's score "
        "distribution).",
        "Per-task table: each task's mean over seeds and its bootstrap interval over seeds.",
        "Sample-efficiency curves: mean and IQM as above at each periodic evaluation (eval/step_*.json, with their "
        "own episodes per task), only at the steps that every run of the group was evaluated at; the steps some "
        "runs lack are left out and counted per group.",
        f"Groups with one seed: values only, 'n/a' for every interval ({NO_INTERVAL}).",
    ]


def score_matrix(runs: list[Run], tasks: tuple[str, ...]) -> np.ndarray:
    """``[seeds, tasks]``: each run's scored per-task success, tasks in ``tasks`` order."""
    return np.array([[run.scored.per_task_success[t] for t in tasks] for run in runs], dtype=np.float64)


def curve_matrix(runs: list[Run], tasks: tuple[str, ...]) -> tuple[list[int], np.ndarray, int]:
    """The steps every run was evaluated at, their scores ``[seeds, tasks, steps]``, and how many steps were left out.

    Only evaluations of the group's tasks count (an evaluation of other tasks is not one of this experiment's).
    """
    by_run = [{e.step: e for e in run.periodic if set(e.per_task_success) == set(tasks)} for run in runs]
    every = set().union(*by_run)
    shared = sorted(set.intersection(*(set(steps) for steps in by_run)))
    scores = np.array(
        [[[evals[s].per_task_success[t] for s in shared] for t in tasks] for evals in by_run], dtype=np.float64
    ).reshape(len(runs), len(tasks), len(shared))
    return shared, scores, len(every) - len(shared)


def _series(estimates: list[Estimate]) -> dict[str, list[float] | None]:
    has_interval = bool(estimates) and estimates[0].low is not None
    return {
        "value": [e.value for e in estimates],
        "low": [e.low for e in estimates] if has_interval else None,
        "high": [e.high for e in estimates] if has_interval else None,
    }


def _curve(group: Group, reps: int, seed: int) -> dict[str, Any] | None:
    steps, scores, left_out = curve_matrix(group.runs, group.tasks)
    if not steps:
        return None
    values = estimate(scores, curve_aggregates, reps, seed)
    episodes = sorted({e.episodes_per_task for run in group.runs for e in run.periodic if e.step in set(steps)})
    return {
        "steps": steps,
        "episodes_per_task": episodes,
        "mean": _series(values[: len(steps)]),
        "iqm": _series(values[len(steps) :]),
        "left_out_steps": left_out,
    }


def _protocol(group: Group) -> dict[str, Any]:
    config = group.runs[0].config
    env = config.get("env", {}) if isinstance(config.get("env"), dict) else {}
    steps = [run.scored.step for run in group.runs]
    return {
        "algo": config.get("algo"),
        "benchmark": env.get("benchmark"),
        "reward_function_version": env.get("reward_function_version"),
        "max_episode_steps": env.get("max_episode_steps"),
        "total_steps": config.get("total_steps"),
        "episodes_per_task": sorted({run.scored.episodes_per_task for run in group.runs}),
        "scored_steps": [min(steps), max(steps)],
    }


def _path(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


def summarize_group(group: Group, base: Path, reps: int, seed: int) -> dict[str, Any]:
    """Every statistic of one group (see :func:`aggregation_statement`)."""
    scores = score_matrix(group.runs, group.tasks)  # [seeds, tasks]
    mean, iqm = estimate(scores, aggregates, reps, seed)
    per_task = estimate(scores, task_means, reps, seed)
    return {
        "name": group.name,
        "labels": group.labels,
        "seeds": group.seeds,
        "interval_note": NO_INTERVAL if len(group.runs) < 2 else None,
        "protocol": _protocol(group),
        "mean": mean.to_json(),
        "iqm": iqm.to_json(),
        "perfect_fraction": float(np.mean(scores == 1.0)),
        "tasks": list(group.tasks),
        "per_task": {task: e.to_json() for task, e in zip(group.tasks, per_task)},
        "profile": _series(performance_profile(scores, reps, seed)),
        "curve": _curve(group, reps, seed),
        "runs": [
            {
                "path": _path(run.path, base),
                "seed": run.seed,
                "step": run.scored.step,
                "episodes_per_task": run.scored.episodes_per_task,
                "success_rate": run.scored.success_rate,
            }
            for run in group.runs
        ],
    }


def improvements(groups: list[Group], reps: int, seed: int) -> list[dict[str, Any]]:
    """P(X > Y) for every ordered pair of groups on the same tasks (tasks in X's order for both)."""
    pairs = []
    for x in groups:
        for y in groups:
            if x is y:
                continue
            record: dict[str, Any] = {"x": x.name, "y": y.name}
            if set(x.tasks) != set(y.tasks):
                record |= {"value": None, "ci": None, "note": "different tasks"}
            else:
                scores_x, scores_y = score_matrix(x.runs, x.tasks), score_matrix(y.runs, x.tasks)  # [seeds, tasks]
                record |= improvement(scores_x, scores_y, reps, seed).to_json()
            pairs.append(record)
    return pairs


def summarize(
    groups: list[Group],
    skipped: list[SkippedRun],
    ignored: list[tuple[Path, str]],
    *,
    score: Score,
    reps: int,
    seed: int,
    base: Path,
) -> dict[str, Any]:
    """The whole report as plain data; paths relative to ``base`` (the output directory) where they are under it."""
    return {
        "score": {"kind": score, "label": SCORE_LABELS[score]},
        "aggregation": aggregation_statement(score, reps, seed),
        "bootstrap": {
            "reps": reps,
            "seed": seed,
            "confidence": CONFIDENCE,
            "method": "percentile, stratified over seeds within each task (rliable, task_bootstrap=False)",
        },
        "versions": {name: package_version(name) for name in ("metaworld", "rliable", "mtrl")},
        "profile_taus": PROFILE_TAUS.tolist(),
        "groups": [summarize_group(group, base, reps, seed) for group in groups],
        "probability_of_improvement": improvements(groups, reps, seed),
        "skipped": [{"path": _path(s.path, base), "reason": s.reason} for s in skipped],
        "ignored_files": [{"path": _path(path, base), "reason": reason} for path, reason in ignored],
    }
