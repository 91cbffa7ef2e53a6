"""Interval estimates with rliable, after Agarwal et al. 2021, "Deep Reinforcement Learning at the
Edge of the Statistical Precipice" (NeurIPS).

Score matrices follow rliable's convention, runs x tasks: ``scores[i, j]`` is seed i's success
rate on task j, ``[seeds, tasks]``; curves add the evaluation steps, ``[seeds, tasks, steps]``.
Intervals are rliable's 95% percentile stratified bootstrap over seeds within each task
(``task_bootstrap=False``: the uncertainty of repeating the experiment with other seeds on these
tasks).

Reproducibility: rliable 1.2's bootstrap classes draw their resampling indices from NumPy's global
RNG (``np.random.choice`` in ``update_indices``); the ``random_state`` argument of
``get_interval_estimates`` is handed to arch and not used for those draws (and arch deprecates
it). So every rliable call here runs with the global RNG seeded by the report's seed just before
it, and the previous global state is restored after: each interval can be reproduced on its own by
``np.random.seed(seed)`` and the same call.

Deviation: a group of one seed gets point estimates only. A bootstrap over one run resamples
that run every time and would print an interval of width zero, which is not an interval.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from rliable import library as rly
from rliable import metrics
from scipy.stats import trim_mean

CONFIDENCE = 0.95
PROFILE_TAUS = np.linspace(0.0, 1.0, 101)
"""Thresholds of the performance profiles: success rates 0, 0.01, ..., 1."""


@dataclass(frozen=True)
class Estimate:
    """A point estimate and its confidence interval (``None`` where none is possible: one seed)."""

    value: float
    low: float | None = None
    high: float | None = None

    def to_json(self) -> dict[str, float | list[float] | None]:
        return {"value": self.value, "ci": None if self.low is None else [self.low, self.high]}


@contextmanager
def seeded_global_rng(seed: int) -> Iterator[None]:
    """NumPy's global RNG seeded with ``seed`` inside, as it was outside (rliable draws from it)."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def bootstrap(
    scores: np.ndarray | list[np.ndarray], func: Callable[..., np.ndarray], reps: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``func``'s values and their 95% stratified-bootstrap intervals (``rly.get_interval_estimates``).

    ``scores``: one ``[runs, tasks, ...]`` matrix, or a list of them resampled independently.
    Returns ``([k], [2, k])``: values, and lower bounds over upper bounds.
    """
    with seeded_global_rng(seed):
        points, intervals = rly.get_interval_estimates(
            {"scores": scores}, func, reps=reps, confidence_interval_size=CONFIDENCE
        )
    values = np.atleast_1d(np.asarray(points["scores"], dtype=np.float64))
    return values, np.asarray(intervals["scores"], dtype=np.float64).reshape(2, -1)


def _estimates(values: np.ndarray, intervals: np.ndarray | None) -> list[Estimate]:
    if intervals is None:
        return [Estimate(float(v)) for v in values]
    return [Estimate(float(v), float(lo), float(hi)) for v, lo, hi in zip(values, intervals[0], intervals[1])]


def estimate(scores: np.ndarray, func: Callable[[np.ndarray], np.ndarray], reps: int, seed: int) -> list[Estimate]:
    """``func(scores)`` with intervals over the seeds (``scores``: ``[seeds, tasks, ...]``); none for one seed."""
    if scores.shape[0] < 2:
        return _estimates(np.atleast_1d(func(scores)), None)
    return _estimates(*bootstrap(scores, func, reps, seed))


def aggregates(scores: np.ndarray) -> np.ndarray:
    """``[2]``: rliable's ``aggregate_mean`` (mean over tasks of the mean over seeds) and
    ``aggregate_iqm`` (the 25% trimmed mean of all seed x task scores) of ``scores`` ``[seeds, tasks]``."""
    return np.array([metrics.aggregate_mean(scores), metrics.aggregate_iqm(scores)])


def task_means(scores: np.ndarray) -> np.ndarray:
    """``[tasks]``: each task's mean over the seeds of ``scores`` ``[seeds, tasks]``."""
    return np.mean(scores, axis=0)


def curve_aggregates(scores: np.ndarray) -> np.ndarray:
    """``[2 * steps]``: :func:`aggregates` at every step of ``scores`` ``[seeds, tasks, steps]``, means first.

    The same numbers as ``aggregate_mean(scores[..., k])`` and ``aggregate_iqm(scores[..., k])`` for
    each k, computed for all steps at once (rliable's own ``aggregate_mean`` over the first two axes
    and ``trim_mean`` per step column).
    """
    by_step = scores.reshape(-1, scores.shape[-1])  # [seeds * tasks, steps]
    return np.concatenate([metrics.aggregate_mean(scores), trim_mean(by_step, proportiontocut=0.25, axis=0)])


def probability_of_improvement(scores_x: np.ndarray, scores_y: np.ndarray) -> np.ndarray:
    """``[1]``: P(X > Y) of ``scores_x`` ``[n, tasks]`` over ``scores_y`` ``[m, tasks]``, averaged over tasks.

    rliable's ``metrics.probability_of_improvement`` is the Mann-Whitney U statistic over ``n m`` per
    task (ties count one half; equal columns 0.5), through one ``scipy.stats.mannwhitneyu`` call per
    task and bootstrap sample, slow at thousands of samples. This computes the same count
    directly, for every task at once; tests check it equals rliable's.
    """
    x, y = scores_x[:, None, :], scores_y[None, :, :]  # [n, 1, tasks], [1, m, tasks]
    per_task = np.mean(x > y, axis=(0, 1)) + 0.5 * np.mean(x == y, axis=(0, 1))  # [tasks]
    return np.array([np.mean(per_task)])


def improvement(scores_x: np.ndarray, scores_y: np.ndarray, reps: int, seed: int) -> Estimate:
    """P(X > Y) (rliable's value) with its interval from independent stratified bootstraps of X and Y."""
    value = float(metrics.probability_of_improvement(scores_x, scores_y))
    if min(scores_x.shape[0], scores_y.shape[0]) < 2:
        return Estimate(value)
    _, intervals = bootstrap([scores_x, scores_y], probability_of_improvement, reps, seed)
    return Estimate(value, float(intervals[0, 0]), float(intervals[1, 0]))


def score_distribution(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """``[taus]``: the fraction of the scores ``[seeds, tasks]`` above each threshold.

    rliable's default profile (``score_distributions``, one ``np.mean(scores > tau)`` per threshold
    through ``np.vectorize``) at all thresholds in one comparison; tests check they are equal.
    """
    return np.mean(scores.reshape(-1, 1) > taus.reshape(1, -1), axis=0)


def performance_profile(scores: np.ndarray, reps: int, seed: int) -> list[Estimate]:
    """The score distribution at :data:`PROFILE_TAUS` (``rly.create_performance_profile``), with
    intervals for two seeds or more."""
    if scores.shape[0] < 2:
        return _estimates(score_distribution(scores, PROFILE_TAUS), None)
    with seeded_global_rng(seed):
        profiles, intervals = rly.create_performance_profile(
            {"scores": scores},
            PROFILE_TAUS,
            custom_profile_func=score_distribution,
            reps=reps,
            confidence_interval_size=CONFIDENCE,
        )
    return _estimates(np.asarray(profiles["scores"]), np.asarray(intervals["scores"]))
