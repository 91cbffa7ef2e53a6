"""Interrupt a tiny training run again and again, resume it every time, and compare with the uninterrupted run.

    python scripts/fault_drill.py --kills 10 --terms 5 --out drill.json

Each round starts (or resumes) the run in a subprocess, waits a random time, then sends SIGKILL to
the whole process group (a crash, the OOM killer) or SIGTERM to the group (a preemption, as Slurm
sends it). After every round it checks that the newest checkpoint loads, that no worker process
and no temporary checkpoint directory is left, and counts the checkpoints that fail to load. The
final parameters and the logged training records must equal those of a run never interrupted.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mtrl.checkpoint import list_checkpoints, load_checkpoint, load_latest
from mtrl.logging import read_metrics

TINY = [
    "smoke", "--env.benchmark", "reach-v3,drawer-close-v3", "--env.max-episode-steps", "50",
    "--env.num-workers", "1", "--sac.hidden-dims", "32", "32", "--replay.warmup-steps", "100",
    "--replay.batch-size-per-task", "16", "--log-every", "100", "--checkpoint-every", "400",
    "--final-eval-episodes", "1", "--torch-threads", "1", "--no-progress",
]


def _records(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("time", "charts/SPS")} for r in read_metrics(run / "metrics.jsonl")]


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def _left_behind(pgid: int, grace_s: float = 10.0) -> int:
    """Processes of the run's group still alive ``grace_s`` after the learner exited (workers exit on their own)."""
    deadline = time.monotonic() + grace_s
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return len(_group_members(pgid))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--terms", type=int, default=5)
    parser.add_argument("--total-steps", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0, help="seeds the moments of the interruptions")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="mtrl-drill-"))
    straight, drilled = root / "straight", root / "drilled"
    subprocess.run([sys.executable, "-m", "launch.train", *TINY, "--total-steps", str(args.total_steps), "--run-dir", str(straight)], check=True, capture_output=True)

    signals = [signal.SIGKILL] * args.kills + [signal.SIGTERM] * args.terms
    rng.shuffle(signals)
    rounds, corrupt, orphans, leftovers, term_exits = [], 0, 0, 0, []
    command = [sys.executable, "-m", "launch.train", *TINY, "--total-steps", str(args.total_steps), "--run-dir", str(drilled)]
    for sig in signals:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        delay = rng.uniform(3.0, 15.0)
        time.sleep(delay)
        finished = process.poll() is not None
        if not finished:
            os.killpg(process.pid, sig)
        _, err = process.communicate(timeout=180)
        orphans += _left_behind(process.pid)
        if sig == signal.SIGTERM and not finished:
            term_exits.append(process.returncode)
        checkpoints = list_checkpoints(drilled / "checkpoints")
        for path in checkpoints:
            try:
                load_checkpoint(path)
            except Exception:  # noqa: BLE001 - counted, that is the point
                corrupt += 1
        leftovers += len(list((drilled / "checkpoints").glob(".tmp_*"))) if (drilled / "checkpoints").is_dir() else 0
        step = load_latest(drilled / "checkpoints")[1]["global_step"] if checkpoints else 0
        last_line = err.strip().splitlines()[-1] if err.strip() else ""
        rounds.append({
            "signal": sig.name, "after_s": round(delay, 1), "finished_first": finished, "exit": process.returncode,
            "checkpoint_step": step, "last_stderr_line": last_line[:300],
        })
        if checkpoints:
            command = [sys.executable, "-m", "launch.train", "--resume", str(drilled)]
        else:
            command = [sys.executable, "-m", "launch.train", "--resume", str(drilled), "--restart"] if (drilled / "config.json").exists() else command
    subprocess.run(command, check=True, capture_output=True)

    a = load_latest(straight / "checkpoints")[1]["agent"]["modules"]
    b = load_latest(drilled / "checkpoints")[1]["agent"]["modules"]
    report = {
        "interruptions": len(signals),
        "sigkill": args.kills,
        "sigterm": args.terms,
        "sigterm_exit_codes": term_exits,
        "corrupt_checkpoints": corrupt,
        "orphan_processes": orphans,
        "temporary_dirs_left": leftovers,
        "parameters_equal": all(torch.equal(a[k], b[k]) for k in a),
        "records_equal": _records(straight) == _records(drilled),
        "rounds": rounds,
        "run_dirs": str(root),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if report["parameters_equal"] and report["records_equal"] and not corrupt else 1


if __name__ == "__main__":
    sys.exit(main())
