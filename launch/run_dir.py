"""Run directories: naming, refusing to clobber an existing run, and the saved config."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"


class RunDirError(ValueError):
    """A run directory cannot be used as asked (it exists already, or is missing on resume)."""


def default_run_dir(benchmark: str, algo: str, balancer: str, seed: int, root: Path = Path("runs")) -> Path:
    """``runs/<benchmark>__<algo>__<balancer>__<seed>__<time>``."""
    name = benchmark.replace(",", "+").replace("/", "_")
    return root / f"{name}__{algo}__{balancer}__{seed}__{time.strftime('%Y%m%d-%H%M%S')}"


def create_run_dir(path: Path) -> Path:
    """Create a fresh run directory; an existing non-empty one is refused, never overwritten."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise RunDirError(
            f"run directory {path} already exists; continue it with --resume {path} or choose another --run-dir"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def existing_run_dir(path: Path) -> Path:
    """A run directory to resume, which must exist and hold checkpoints."""
    if not path.is_dir():
        raise RunDirError(f"--resume {path}: no such run directory")
    if not (path / "checkpoints").is_dir():
        raise RunDirError(f"--resume {path}: no checkpoints directory in it (was it created by mtrl-train?)")
    return path


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def save_config(run_dir: Path, config: Any) -> None:
    """Write the config as readable JSON (the checkpoints hold the config object itself)."""
    (run_dir / CONFIG_FILE).write_text(json.dumps(_jsonable(config), indent=2) + "\n")
