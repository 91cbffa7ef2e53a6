"""One trial of a sweep: run its mtrl-train process to the end, resuming where it stopped.

:func:`run_trial` is what a Ray task executes (on any node that sees the sweep directory). It
starts ``python -m launch.train`` as a child process, so a trial that crashes, is killed or runs
out of memory takes only its own process down, and it chooses the command from what the run
directory holds: a new run, ``--resume RUN`` when there is a checkpoint (never from zero when one
exists; a run that died after writing its final evaluation ends without training or evaluating
again), or ``--resume RUN --restart`` for a run that stopped before its first checkpoint. A stop
(the sweep's stop file appearing, or the task being cancelled) is passed on as SIGTERM: the run
checkpoints at its next episode boundary and exits. The child gets SIGTERM too if the Ray worker
running it dies (``PR_SET_PDEATHSIG``), so no trainer outlives its task.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from launch.run_dir import CHECKPOINT_DIR, CONFIG_FILE, read_final_evaluation
from mtrl.checkpoint import list_checkpoints

POLL_S = 0.5
STOP_GRACE_S = 300.0
"""How long a stopped trial may take to reach its next episode boundary and checkpoint before it is killed."""
BAD_INPUT_STATUS = 2
"""mtrl-train's exit status for bad arguments: retrying cannot help."""


def trial_command(run_dir: Path, argv: list[str]) -> list[str]:
    """mtrl-train's arguments for this attempt: start, resume from the newest checkpoint, or restart in place."""
    if list_checkpoints(run_dir / CHECKPOINT_DIR):
        return ["--resume", str(run_dir)]
    if (run_dir / CONFIG_FILE).is_file():
        return ["--resume", str(run_dir), "--restart"]
    return [*argv, "--run-dir", str(run_dir)]


def final_success(run_dir: Path) -> float | None:
    """The final evaluation's success rate, or None when the run has none (yet)."""
    record = read_final_evaluation(run_dir)
    return None if record is None else float(record["success_rate"])


def _die_with_parent() -> None:
    """In the child: SIGTERM when the process that started it (the Ray worker) dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the stop file and the task's cancellation still stop the trial


def _last_line(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def run_trial(run_dir: str, argv: list[str], log_path: str, stop_file: str) -> dict[str, Any]:
    """Run one attempt of a trial; returns its exit status, whether it finished, and its last output line."""
    run, log, stop = Path(run_dir), Path(log_path), Path(stop_file)
    command = [sys.executable, "-m", "launch.train", *trial_command(run, argv)]
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with log.open("a") as out:
        out.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command[1:])}\n")
        out.flush()
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        stopped = False
        try:
            while child.poll() is None:
                if stop.exists() and not stopped:
                    stopped = True
                    child.send_signal(signal.SIGTERM)
                    _wait_or_kill(child, STOP_GRACE_S)
                    break
                time.sleep(POLL_S)
        except (KeyboardInterrupt, SystemExit):  # the task was cancelled
            stopped = True
            child.send_signal(signal.SIGTERM)
            _wait_or_kill(child, STOP_GRACE_S)
        returncode = child.wait()
    return {
        "returncode": returncode,
        "finished": returncode == 0 and not stopped and final_success(run) is not None,
        "stopped": stopped,
        "seconds": time.time() - started,
        "last_line": _last_line(log),
    }


def _wait_or_kill(child: subprocess.Popen, grace_s: float) -> None:
    try:
        child.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        child.kill()
