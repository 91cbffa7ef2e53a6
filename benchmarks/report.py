"""What every benchmark does alike with its output: the path is checked before any work, the JSON
report is printed and written the same way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def _nearest_existing(path: Path) -> Path:
    """``path`` itself, or its closest ancestor that exists."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(flag: str, directory: Path, *, create: bool = False) -> None:
    """Refuse with a one-line ``SystemExit`` a ``directory`` that output cannot be written into.

    With ``create`` the directory may be missing: it will be made, so its closest existing
    ancestor is what must be a writable directory.
    """
    existing = _nearest_existing(directory) if create else directory
    if not existing.is_dir():
        raise SystemExit(f"{flag}: {existing} is not an existing directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SystemExit(f"{flag}: {existing} is not writable")


def check_report_file(flag: str, path: Path, *, create_parents: bool = False) -> None:
    """Refuse with a one-line ``SystemExit`` a JSON report path that cannot be written (see :func:`check_output_dir`)."""
    if path.is_dir():
        raise SystemExit(f"{flag}: {path} is a directory; give a file path for the JSON report")
    check_output_dir(flag, path.parent, create=create_parents)
    if path.exists() and not os.access(path, os.W_OK):
        raise SystemExit(f"{flag}: {path} is not writable")


def emit_report(report: dict[str, Any], path: Path | None) -> None:
    """Print ``report`` as indented JSON and, when ``path`` is given, write it there too (making its directory)."""
    text = json.dumps(report, indent=2)
    print(text)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
