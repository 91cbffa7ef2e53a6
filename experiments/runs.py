"""Finding run directories under the inputs and reading their config and evaluations (json only).

A run directory is any directory holding ``config.json`` (what mtrl-train writes; a sweep holds
its trials one or two levels down). Its evaluations are ``eval/step_<12 digits>.json`` (periodic)
and ``eval/final.json`` (the final evaluation), each
``{"step", "episodes_per_task", "success_rate", "per_task_success", "per_task_return"}``. A run
whose scored evaluation is missing or unreadable is returned as a :class:`SkippedRun` with the
reason, never raised. A config saved before SAC's loop fields had their own section is read in
today's layout (:func:`launch.replay_loop.move_loop_fields`), so older and newer runs group together.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from launch.replay_loop import move_loop_fields
from mtrl.config_io import ConfigDataError

CONFIG_FILE = "config.json"
"""The run's config, as launch.run_dir writes it."""
EVAL_DIR = "eval"
FINAL_FILE = "final.json"
PERIODIC_FILE = re.compile(r"step_(\d{12})\.json")

Score = Literal["final", "best"]
"""Which evaluation scores a run: ``final`` (``eval/final.json``) or ``best`` (its best periodic evaluation)."""


class ReportInputError(ValueError):
    """An input the report cannot work from (a bad path, no runs); the CLI prints its one line and exits 2."""


class RunFileError(ValueError):
    """A run file (config, evaluation) that is missing, not JSON, or not what it should hold."""


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a run: success rate per task after ``step`` environment steps."""

    step: int
    episodes_per_task: int
    per_task_success: dict[str, float]

    @property
    def success_rate(self) -> float:
        """Mean over tasks of the per-task success rates (Meta-World's success rate)."""
        return math.fsum(self.per_task_success.values()) / len(self.per_task_success)


@dataclass(frozen=True)
class Run:
    """A usable run: its config, the evaluation that scores it, and its periodic evaluations."""

    path: Path
    config: dict[str, Any]
    seed: int
    scored: Evaluation
    periodic: list[Evaluation]
    """Readable periodic evaluations, by step."""
    ignored: list[str] = field(default_factory=list)
    """Periodic evaluation files that could not be read, each with its reason."""

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.scored.per_task_success)


@dataclass(frozen=True)
class SkippedRun:
    """A run directory left out of every statistic, and why."""

    path: Path
    reason: str


def find_run_dirs(inputs: list[Path]) -> list[Path]:
    """Every directory at or under ``inputs`` holding ``config.json``, each once, in a stable order.

    The search does not descend into a run directory (its ``checkpoints/`` and ``eval/`` hold no
    runs). Raises :class:`ReportInputError` for an input that is not a directory.
    """
    found: dict[Path, Path] = {}
    for root in inputs:
        if not root.is_dir():
            raise ReportInputError(f"{root}: {'not a directory' if root.exists() else 'no such directory'}")
        for directory, subdirs, files in os.walk(root):
            if CONFIG_FILE in files:
                found.setdefault(Path(directory).resolve(), Path(directory))
                subdirs.clear()
            else:
                subdirs.sort()
    return sorted(found.values(), key=lambda p: str(p))


def read_json(path: Path) -> Any:
    """The JSON value in ``path``; a :class:`RunFileError` naming what is wrong otherwise."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RunFileError("missing") from None
    except OSError as error:
        raise RunFileError(f"unreadable ({error.strerror or error})") from None
    try:
        return json.loads(text)
    except ValueError as error:
        raise RunFileError(f"not valid JSON ({error})") from None


def parse_evaluation(data: Any) -> Evaluation:
    """An :class:`Evaluation` from an evaluation record; a :class:`RunFileError` if it is not one."""
    if not isinstance(data, dict):
        raise RunFileError("not a JSON object")
    step, episodes, success = data.get("step"), data.get("episodes_per_task"), data.get("per_task_success")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise RunFileError(f"step must be an integer >= 0, got {step!r}")
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise RunFileError(f"episodes_per_task must be an integer >= 1, got {episodes!r}")
    if not isinstance(success, dict) or not success:
        raise RunFileError("per_task_success must be a non-empty object of task -> success rate")
    for task, value in success.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise RunFileError(f"per_task_success[{task!r}] must be a number in [0, 1], got {value!r}")
    return Evaluation(step, episodes, {task: float(value) for task, value in success.items()})


def read_evaluation(path: Path) -> Evaluation:
    """The evaluation in ``path`` (raises :class:`RunFileError`)."""
    return parse_evaluation(read_json(path))


def read_periodic(run_dir: Path) -> tuple[list[Evaluation], list[str]]:
    """The readable ``eval/step_*.json`` by step, and a reason for each one that is not."""
    evaluations, ignored = [], []
    eval_dir = run_dir / EVAL_DIR
    names = sorted(p.name for p in eval_dir.iterdir() if PERIODIC_FILE.fullmatch(p.name)) if eval_dir.is_dir() else []
    for name in names:
        try:
            evaluations.append(read_evaluation(eval_dir / name))
        except RunFileError as error:
            ignored.append(f"{EVAL_DIR}/{name}: {error}")
    return evaluations, ignored


def best_evaluation(periodic: list[Evaluation]) -> Evaluation:
    """The periodic evaluation with the highest success rate (the earliest of equals)."""
    return max(periodic, key=lambda e: (e.success_rate, -e.step))


def current_layout(config: Any) -> Any:
    """A run's saved config in today's layout, every field present: read and written back by
    :func:`launch.config.config_from_plain`, so a field added since the run was saved has its default
    (the behaviour the run had) and groups with newer runs. A config that cannot be read that way (a
    balancer plugin no longer installed, a field since removed) keeps its fields as saved, the loop
    fields of SAC's former layout moved (:func:`launch.replay_loop.move_loop_fields`)."""
    from launch.config import config_from_plain  # imports torch: only when there is a run to read

    try:
        return config_from_plain(config).to_plain()
    except (ConfigDataError, ValueError, TypeError):
        return move_loop_fields(config)


def load_run(run_dir: Path, score: Score) -> Run | SkippedRun:
    """The run in ``run_dir`` scored by ``score``, or why it is skipped."""
    try:
        config = current_layout(read_json(run_dir / CONFIG_FILE))
    except (RunFileError, ConfigDataError) as error:
        return SkippedRun(run_dir, f"{CONFIG_FILE}: {error}")
    seed = config.get("seed") if isinstance(config, dict) else None
    if isinstance(seed, bool) or not isinstance(seed, int):
        return SkippedRun(run_dir, f"{CONFIG_FILE}: not a run config (no integer seed)")
    periodic, ignored = read_periodic(run_dir)
    if score == "best":
        if not periodic:
            return SkippedRun(run_dir, f"no readable periodic evaluation ({EVAL_DIR}/step_*.json)")
        scored = best_evaluation(periodic)
    else:
        final = run_dir / EVAL_DIR / FINAL_FILE
        if not final.exists():
            return SkippedRun(run_dir, f"{EVAL_DIR}/{FINAL_FILE}: missing (the run has not finished, or stopped early)")
        try:
            scored = read_evaluation(final)
        except RunFileError as error:
            return SkippedRun(run_dir, f"{EVAL_DIR}/{FINAL_FILE}: {error}")
    return Run(run_dir, config, seed, scored, periodic, ignored)


def load_runs(run_dirs: list[Path], score: Score) -> tuple[list[Run], list[SkippedRun]]:
    """Every run of ``run_dirs``, split into the usable ones and the skipped ones."""
    loaded = [load_run(path, score) for path in run_dirs]
    return [r for r in loaded if isinstance(r, Run)], [r for r in loaded if isinstance(r, SkippedRun)]
