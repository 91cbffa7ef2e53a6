"""SIGTERM and SIGINT as a request to stop at the next checkpoint, not as an abrupt death.

Slurm, Kubernetes and Ray send SIGTERM before they kill a job; Ctrl-C sends SIGINT. The first of
either sets :attr:`StopRequest.signal_name`; the training loop finishes the step it is in, writes a
checkpoint at the next point where one can be taken (an episode boundary; for PPO a rollout end)
and returns. A second signal raises :class:`Interrupted` at once, for a user who does not want to
wait; the last good checkpoint is then still intact, since checkpoints are written atomically.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
    """A second stop signal: leave now, without a new checkpoint."""


class StopRequest:
    """Installs the handlers (main thread only) and records the first stop signal."""

    def __init__(self, program: str) -> None:
        self.program = program
        self.signal_name: str | None = None
        self._announced = False
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def install(self) -> StopRequest:
        for number in STOP_SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def reinstall(self) -> None:
        """Install the handlers again over whatever replaced them since :meth:`install`, keeping what
        :meth:`restore` puts back. ``ray.init`` replaces SIGTERM's in the driver (with a handler that
        dumps a stack and aborts) and ``ray.shutdown`` leaves SIGTERM at its default action, so a
        sweep calls this after each."""
        for number in self._previous:
            signal.signal(number, self._handle)

    def restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def __enter__(self) -> StopRequest:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def announce(self, what_follows: str) -> None:
        """Say once, from the loop (never from the handler, which may interrupt a write to stderr), what happens now."""
        if self.signal_name is not None and not self._announced:
            self._announced = True
            print(f"{self.program}: {self.signal_name} received: {what_follows} (send it again to stop at once)", file=sys.stderr, flush=True)

    def _handle(self, number: int, frame: FrameType | None) -> None:
        name = signal.Signals(number).name
        if self.signal_name is not None:
            raise Interrupted(f"second stop signal ({name}): stopped without a new checkpoint")
        self.signal_name = name  # only a flag: the loop acts on it between steps
