"""How the command-line programs report a failure: one line, never a traceback."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first line of an error's message (worker errors carry the worker's traceback after it)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
