"""mtrl-report: statistics over finished mtrl-train runs, after Agarwal et al. 2021 ("Deep
Reinforcement Learning at the Edge of the Statistical Precipice"), with rliable.

``mtrl-report SWEEP`` (or any run directories) groups the runs by config, seeds aside, and writes
``report.md``, ``report.json`` and ``figures/*.png`` into ``--out`` (default: the one input).
Every argument and path is checked before anything is written: a bad path, no runs, an output
directory that cannot be written, or an existing report without ``--overwrite`` is refused in one
line, exit 2. A run whose scored evaluation is missing or broken is listed as skipped, not fatal.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tyro

from experiments.figures import FIGURE_DIR, FIGURES, write_figures
from experiments.groups import group_runs
from experiments.markdown import render
from experiments.runs import ReportInputError, Score, find_run_dirs, load_runs
from experiments.summary import summarize

PROGRAM = "mtrl-report"
REPORT_MD = "report.md"
REPORT_JSON = "report.json"
MAX_SEED = 2**32 - 1
"""NumPy's global RNG takes seeds in [0, 2^32 - 1]."""


@dataclass(frozen=True)
class Args:
    """Mean and IQM success with 95% stratified-bootstrap intervals, probability of improvement,
    performance profiles, per-task success and sample-efficiency curves over groups of runs."""

    paths: tyro.conf.Positional[tuple[Path, ...]]
    """Sweep directories or run directories: every directory under them holding config.json is a run."""
    out: Path | None = None
    """Where report.md, report.json and figures/ go; default: the input, when there is only one."""
    score: Score = "final"
    """final: each run's eval/final.json; best: each run's best periodic evaluation (best over training, as the
    CAGrad paper reports)."""
    reps: int = 2000
    """Bootstrap samples per interval (rliable recommends at least 2000)."""
    seed: int = 0
    """Seed of the bootstrap (NumPy's global RNG, seeded before every rliable call): the same seed, the same report."""
    overwrite: bool = False
    """Replace an existing report in --out."""


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def output_dir(args: Args) -> Path:
    """The checked output directory (raises :class:`ReportInputError` with the one line to print)."""
    if args.out is None and len(args.paths) != 1:
        raise ReportInputError("--out is needed with more than one input")
    out = args.out if args.out is not None else args.paths[0]
    existing = _nearest_existing(out)
    if not existing.is_dir():
        raise ReportInputError(f"--out: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ReportInputError(f"--out: {existing} is not writable")
    present = [name for name in (REPORT_MD, REPORT_JSON, FIGURE_DIR) if (out / name).exists()]
    if present and not args.overwrite:
        raise ReportInputError(f"{out} already holds a report ({', '.join(present)}); pass --overwrite to replace it")
    return out


def check_args(args: Args) -> None:
    """Refuse bad numbers and an empty input list (raises :class:`ReportInputError`)."""
    if not args.paths:
        raise ReportInputError("give at least one sweep or run directory")
    if args.reps < 1:
        raise ReportInputError(f"--reps must be >= 1, got {args.reps}")
    if not 0 <= args.seed <= MAX_SEED:
        raise ReportInputError(f"--seed must be in [0, {MAX_SEED}], got {args.seed}")


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_report(summary: dict[str, Any], out: Path) -> None:
    """Figures first, then report.json, then report.md (figures of an earlier report are replaced or removed)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in FIGURES:
        (out / FIGURE_DIR / name).unlink(missing_ok=True)
    summary["figures"] = write_figures(summary, out)
    _write_atomically(out / REPORT_JSON, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    _write_atomically(out / REPORT_MD, render(summary))


def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(Args, args=argv, prog=PROGRAM)
    try:
        check_args(args)
        run_dirs = find_run_dirs(list(args.paths))
        if not run_dirs:
            inputs = ", ".join(map(str, args.paths))
            raise ReportInputError(f"no run directories (directories holding config.json) under {inputs}")
        out = output_dir(args)
        runs, skipped = load_runs(run_dirs, args.score)
        if not runs:
            first = skipped[0]
            raise ReportInputError(
                f"none of the {len(skipped)} runs found is usable (first: {first.path}: {first.reason})"
            )
    except ReportInputError as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return 2
    groups, unjoined = group_runs(runs)
    ignored = [(run.path, reason) for run in runs for reason in run.ignored]
    summary = summarize(groups, skipped + unjoined, ignored, score=args.score, reps=args.reps, seed=args.seed, base=out)
    try:
        write_report(summary, out)
    except OSError as error:
        print(f"{PROGRAM}: error: writing the report into {out}: {error}", file=sys.stderr)
        return 1
    for group in summary["groups"]:
        mean, iqm = group["mean"], group["iqm"]
        print(f"{group['name']}: {len(group['seeds'])} seeds, mean {mean['value']:.3f}, IQM {iqm['value']:.3f}")
    if summary["skipped"]:
        print(f"{len(summary['skipped'])} runs skipped (listed in {out / REPORT_MD})")
    print(f"wrote {out / REPORT_MD}, {out / REPORT_JSON} and {len(summary['figures'])} figures in {out / FIGURE_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
