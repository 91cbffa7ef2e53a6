"""Run logging: TensorBoard event files, a ``metrics.jsonl`` a script can read, and a progress bar.

Tags follow CleanRL's style (``charts/SPS``, ``losses/qf_loss``, ``eval/success_rate``, ...) and
the global step is the total number of environment steps. Every ``log`` call writes the same
numbers to TensorBoard, as one JSON line ``{"step": ..., "time": ..., <tag>: <value>, ...}`` and,
for a tracked run, to its Weights & Biases run (:mod:`mtrl.tracking`).

On resume, :meth:`RunLogger.__init__` with ``resume_step`` drops what was logged after the
checkpoint the run continues from (from metrics.jsonl, and from TensorBoard via ``purge_step``),
so a resumed run's logs read as if it had never been interrupted; W&B, which cannot drop what it
holds, is sent only the records past those it may have.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Mapping

from tqdm import tqdm

from mtrl.tracking import WandbSink, WandbTarget

METRICS_FILE = "metrics.jsonl"


def truncate_metrics(path: Path, after_step: int) -> None:
    """Keep only the lines of a metrics.jsonl with ``step <= after_step`` (and no torn last line)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("step", math.inf) <= after_step:
            kept.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    tmp.replace(path)


def last_logged_step(path: Path) -> int | None:
    """The step of the last whole record of a metrics.jsonl (its records are in step order); None if it has none."""
    if not path.is_file():
        return None
    for line in reversed(path.read_text().splitlines()):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def read_metrics(path: Path | str, partial: bool = False) -> list[dict]:
    """All records of a metrics.jsonl.

    ``partial``: the file of a run that may still be writing: a missing file has no records and a
    line that does not parse (the line being written) is skipped.
    """
    path = Path(path)
    if partial and not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if not partial:
                raise
    return records


class RunLogger:
    """Writes scalars to TensorBoard and metrics.jsonl under ``run_dir``, and to W&B given ``wandb``."""

    def __init__(
        self,
        run_dir: Path | str,
        tensorboard: bool = True,
        resume_step: int | None = None,
        wandb: WandbTarget | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / METRICS_FILE
        self._metrics = None
        self._writer = None
        self._wandb = None
        if wandb is not None:  # first: a run W&B refuses leaves the run directory as it was
            logged_until = last_logged_step(self.metrics_path) if resume_step is not None else None
            self._wandb = WandbSink(self.run_dir, wandb, logged_until)
        try:
            if resume_step is not None:
                truncate_metrics(self.metrics_path, resume_step)
            self._metrics = self.metrics_path.open("a")
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                purge = None if resume_step is None else resume_step + 1
                self._writer = SummaryWriter(str(self.run_dir), purge_step=purge)
        except BaseException:
            self.close(failed=True)
            raise

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        """Write one record of plain Python numbers (the caller has already synced them)."""
        values = {tag: float(value) for tag, value in scalars.items()}
        self._metrics.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")
        self._metrics.flush()
        if self._writer is not None:
            for tag, value in values.items():
                self._writer.add_scalar(tag, value, step)
        if self._wandb is not None:
            self._wandb.log(step, values)

    def flush(self) -> None:
        """Put what was logged on disk in TensorBoard's event file too (metrics.jsonl is flushed at every record)."""
        if self._writer is not None:
            self._writer.flush()

    def add_text(self, tag: str, text: str) -> None:
        if self._writer is not None:
            self._writer.add_text(tag, text)

    def close(self, failed: bool = False) -> None:
        """Close every sink; ``failed`` marks the W&B run failed (a run that ended on an error)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._metrics is not None and not self._metrics.closed:
            self._metrics.close()
        if self._wandb is not None:
            self._wandb.close(failed=failed)
            self._wandb = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(failed=exc_type is not None)


class Progress:
    """A progress bar over environment steps showing steps/s, ETA and the last success rate."""

    def __init__(self, total_steps: int, initial_step: int = 0, enabled: bool = True) -> None:
        self._bar = tqdm(
            total=total_steps,
            initial=initial_step,
            unit="step",
            unit_scale=True,
            dynamic_ncols=True,
            disable=not enabled,
            smoothing=0.05,
        )
        self._success: str = "-"

    def update(self, step: int) -> None:
        self._bar.update(step - self._bar.n)

    def set_success(self, success_rate: float) -> None:
        self._success = f"{success_rate:.2f}"
        self._bar.set_postfix_str(f"success={self._success}", refresh=False)

    def close(self) -> None:
        self._bar.close()
