"""Run directories: naming, refusing to clobber an existing run, the lock, and the saved config.

A run directory is created only after every field has been checked, and only once it is known
to be writable. The process that trains in it holds an advisory ``fcntl.flock`` on ``.lock``
(exclusive for mtrl-train, shared for mtrl-eval), which the kernel releases when the holder dies,
so a second process on the same run is refused and a crashed one never leaves a stale lock.
``config.json`` is the config in force; ``config_history.jsonl`` has one line per start and
resume with the fields a resume changed.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from mtrl.checkpoint import list_checkpoints

CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"
LOCK_FILE = ".lock"
CHECKPOINT_DIR = "checkpoints"
EVAL_DIR = "eval"
FINAL_EVAL_FILE = "final.json"
"""The final evaluation's record in ``EVAL_DIR``: written last, once the evaluation is in the logs."""


class RunDirError(ValueError):
    """A run directory cannot be used as asked (it exists already, is in use, or is missing on resume)."""


def default_run_dir(benchmark: str, algo: str, balancer: str, seed: int, root: Path = Path("runs")) -> Path:
    """``runs/<benchmark>__<algo>__<balancer>__<seed>__<time>``."""
    name = benchmark.replace(",", "+").replace("/", "_")
    return root / f"{name}__{algo}__{balancer}__{seed}__{time.strftime('%Y%m%d-%H%M%S')}"


def check_writable_place(path: Path, field: str) -> None:
    """Raise unless the directory ``path`` (the value of ``field``) can be made or written: the nearest of
    it and its ancestors that exists is a directory this process may write in (not a file)."""
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RunDirError(f"{field} {path}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise RunDirError(f"{field} {path}: {ancestor} is not writable")


def check_new_run_dir(path: Path) -> None:
    """Raise unless ``path`` can become a new run directory: absent or empty, under directories that can be written."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise RunDirError(f"run directory {path} already exists; continue it with --resume {path} or choose another --run-dir")
    check_writable_place(path, "--run-dir")


def create_run_dir(path: Path) -> Path:
    """Create a fresh run directory and prove it writable; an existing non-empty one is refused, never overwritten."""
    check_new_run_dir(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise RunDirError(f"--run-dir {path}: cannot create or write it ({error.strerror or error})") from error
    return path


def existing_run_dir(path: Path) -> Path:
    """A run directory to resume, which must exist and hold a checkpoint."""
    if not path.is_dir():
        raise RunDirError(f"--resume {path}: no such run directory")
    if not (path / CONFIG_FILE).is_file():
        raise RunDirError(f"--resume {path}: not a run directory of mtrl-train (no {CONFIG_FILE} in it)")
    if not list_checkpoints(path / CHECKPOINT_DIR):
        raise RunDirError(
            f"--resume {path}: the run has no checkpoint yet (it stopped before its first one); "
            f"start it again from the beginning in place with: mtrl-train --resume {path} --restart"
        )
    return path


def read_final_evaluation(run_dir: Path) -> dict[str, Any] | None:
    """The run's final evaluation record (step, episodes per task, success rates and returns), or None
    when it has none (yet) or the file is unreadable."""
    try:
        record = json.loads((run_dir / EVAL_DIR / FINAL_EVAL_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("step"), int) or not isinstance(record.get("success_rate"), (int, float)):
        return None
    return record


def clear_for_restart(path: Path) -> None:
    """Remove what a run that never checkpointed left (logs, events, evaluations), keeping its config and history."""
    keep = {CONFIG_FILE, HISTORY_FILE, LOCK_FILE}
    for entry in path.iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


class RunLock:
    """An advisory lock on a run directory, held until :meth:`release` or the holder's death."""

    def __init__(self, run_dir: Path, shared: bool = False, program: str = "mtrl-train") -> None:
        self.path = run_dir / LOCK_FILE
        try:
            self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise RunDirError(f"{run_dir}: cannot open its lock file ({error.strerror or error})") from error
        try:
            fcntl.flock(self._fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as error:
            os.close(self._fd)
            self._fd = None
            if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise RunDirError(f"{run_dir}: cannot lock it ({error.strerror or error})") from error
            holder = "training or evaluating it" if shared else "using it"
            raise RunDirError(f"{run_dir} is in use: another mtrl process is {holder}; {program} waits for none, try again when it ends") from None
        if not shared:
            try:  # the holder's pid, for a person looking; the lock itself does not need it
                os.ftruncate(self._fd, 0)
                os.write(self._fd, f"{os.getpid()}\n".encode())
            except OSError:
                pass

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step: a reader (or a run resumed after a kill) sees the old file or the new one, whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_config(run_dir: Path, plain_config: dict[str, Any]) -> None:
    """Write the config in force (as plain data) as readable JSON (replaced atomically; the history keeps what it was)."""
    write_atomically(run_dir / CONFIG_FILE, json.dumps(plain_config, indent=2) + "\n")


def load_config_data(run_dir: Path) -> dict[str, Any]:
    """The plain data of ``config.json``."""
    try:
        return json.loads((run_dir / CONFIG_FILE).read_text())
    except (OSError, ValueError) as error:
        raise RunDirError(f"{run_dir / CONFIG_FILE}: unreadable ({error})") from error


def append_history(run_dir: Path, event: str, step: int, changes: dict[str, tuple[Any, Any]] | None = None) -> None:
    """One line of ``config_history.jsonl``: the event, its step and the changed fields as ``[old, new]``."""
    record = {"event": event, "step": step, "time": time.time(), "changes": {k: list(v) for k, v in (changes or {}).items()}}
    with (run_dir / HISTORY_FILE).open("a") as file:
        file.write(json.dumps(record) + "\n")
