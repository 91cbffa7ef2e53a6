"""Experiment tracking on Weights & Biases: one W&B run per run directory, fed by :class:`mtrl.logging.RunLogger`.

``wandb`` is an optional extra (``pip install 'mtrl[track]'``), imported only when a run is
tracked, so everything else works without it.

The W&B run is named after the run directory. Its id is drawn when the run is first tracked and
kept in the run directory (:data:`WANDB_RUN_FILE`), so a resumed run continues the same W&B run
(``resume="allow"``) wherever the directory has moved. The id is not the directory's name: names
repeat (sweep trials are named by their settings and seed, ``--run-dir`` is free), and a W&B id is
unique in its project. A run restarted from the beginning (``mtrl-train --resume RUN_DIR
--restart``) loses the file with its other logs and gets a new W&B run, since W&B refuses steps
lower than those a run already holds.

W&B cannot delete what it holds, so where metrics.jsonl drops the records after the checkpoint a
run resumes from, the W&B run keeps them, and a resumed run sends only the records past the last
step the W&B run may hold (on the CPU the records in between are the same ones again: a resumed
run repeats the interrupted one exactly). That step is the last one metrics.jsonl ever held (every
record reaches metrics.jsonl first): its last step when the run resumes, or that of an earlier
resume, kept in the file, when the run has been cut back since.
"""

from __future__ import annotations

import json
import os
import secrets
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

WANDB_RUN_FILE = "wandb_run.json"
"""The run directory's record of its W&B run: ``{"id": ..., "logged_until": step or null}``."""
WANDB_MISSING = "--track needs wandb: pip install 'mtrl[track]'"
"""The error of a tracked run where wandb is not installed."""
_ID_ALPHABET = string.ascii_lowercase + string.digits
_ID_LENGTH = 8


class TrackingError(RuntimeError):
    """W&B could not start or resume the run (not logged in, unreachable, refused the project)."""


@dataclass(frozen=True)
class WandbTarget:
    """Where a run is tracked on W&B and the config it is recorded with."""

    project: str
    entity: str | None = None
    """The W&B user or team; None: the logged-in user's default entity."""
    config: Mapping[str, Any] = field(default_factory=dict)
    """The run's config as plain data (what config.json holds)."""


@dataclass(frozen=True)
class WandbRunRecord:
    """What a run directory keeps of its W&B run (:data:`WANDB_RUN_FILE`)."""

    id: str
    logged_until: int | None = None
    """The last step the W&B run may hold from before the latest resume (None: not resumed)."""

    @classmethod
    def load(cls, run_dir: Path) -> WandbRunRecord | None:
        """The record, None if the run has not been tracked (or the file does not hold a W&B id)."""
        try:
            data = json.loads((run_dir / WANDB_RUN_FILE).read_text())
            run_id, until = data["id"], data["logged_until"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not (isinstance(run_id, str) and run_id and all(char in _ID_ALPHABET for char in run_id)):
            return None
        return cls(run_id, until if isinstance(until, int) else None)

    def save(self, run_dir: Path) -> None:
        path = run_dir / WANDB_RUN_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({"id": self.id, "logged_until": self.logged_until}) + "\n")
        os.replace(tmp, path)


def new_run_id() -> str:
    """A fresh W&B run id (W&B's form: 8 lowercase letters and digits), from OS randomness: no seeded generator is touched."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH))


def check_tracking(project: str, entity: str | None) -> None:
    """Raise a one-line ``ValueError`` unless wandb is installed and takes this project name (W&B's own check)."""
    try:
        import wandb
    except ImportError:
        raise ValueError(WANDB_MISSING) from None
    if not project.strip():
        raise ValueError(f"wandb_project must name a W&B project, got {project!r}")
    try:
        wandb.Settings(project=project, entity=entity)
    except Exception as error:  # wandb's UsageError names the characters a project name may not hold
        raise ValueError(f"wandb_project: {error}") from None


class WandbSink:
    """The W&B run of a run directory: ``log`` sends a record of scalars at its global step.

    ``logged_until``: on resume, the last step of the run's metrics.jsonl before it is cut back to
    the checkpoint (None for a new run).
    """

    def __init__(self, run_dir: Path, target: WandbTarget, logged_until: int | None = None) -> None:
        import wandb

        saved = WandbRunRecord.load(run_dir)
        if saved is None:  # a new W&B run holds nothing
            record = WandbRunRecord(new_run_id())
        else:
            steps = [step for step in (saved.logged_until, logged_until) if step is not None]
            record = WandbRunRecord(saved.id, max(steps, default=None))
        try:
            self._run = wandb.init(
                project=target.project,
                entity=target.entity,
                id=record.id,
                name=run_dir.name,
                config=dict(target.config),
                resume="allow",
            )
        except Exception as error:  # wandb raises its own errors (no API key, unreachable server, ...)
            raise TrackingError(f"W&B could not start run {record.id} ({run_dir.name}): {error}") from error
        try:  # kept once W&B has the run
            record.save(run_dir)
        except BaseException:
            self.close(failed=True)
            raise
        self._skip_until = record.logged_until

    def log(self, step: int, values: Mapping[str, float]) -> None:
        """One record at ``step``; records at the same step are one W&B history row."""
        if self._skip_until is not None and step <= self._skip_until:
            return
        self._run.log(dict(values), step=step)

    def close(self, failed: bool = False) -> None:
        """Finish the W&B run (marked failed with ``failed``); sends what is still buffered."""
        if self._run is not None:
            self._run.finish(exit_code=1 if failed else 0)
            self._run = None
