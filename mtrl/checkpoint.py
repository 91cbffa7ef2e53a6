"""Atomic checkpoints: one directory per checkpoint, written under a temporary name, then renamed.

Layout of ``<checkpoints>/step_000000012345/``:
- ``state.pt``: the payload (``torch.save`` of a dict the trainer assembles: config, counters,
  every state_dict, replay contents, RNG states), made only of tensors, dicts, lists, tuples,
  strings, numbers and None, and loaded with ``torch.load(weights_only=True)``: a crafted
  checkpoint cannot run code, it is refused;
- ``meta.json``: format version, step, and the size and SHA-256 of ``state.pt``.

A checkpoint directory exists under its final name only once both files are complete and
flushed to disk, so a crash or SIGKILL at any moment leaves the previous checkpoints intact; a
newest checkpoint that is truncated or corrupt anyway (a disk fault, a copy gone wrong) fails its
checksum and :func:`load_latest` reports it and falls back to the one before. A write that fails
(a full disk, an I/O error) removes its temporary directory and raises
:class:`CheckpointWriteError`; the checkpoints already written stay as they were.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

FORMAT_VERSION = 3
"""3: one config per algorithm (its ``algo`` in the saved config) and the agent's balanced steps
each saved whole; 2: payloads of plain data only (``weights_only`` loading); 1 held pickled
config objects."""
CHECKPOINT_PREFIX = "step_"
_TMP_PREFIX = ".tmp_"


class CheckpointError(RuntimeError):
    """No intact checkpoint could be loaded."""


class CheckpointVersionError(CheckpointError):
    """A checkpoint of another format version: not broken, so never skipped or set aside."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (nothing of it is left; older checkpoints are intact)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:012d}"


def list_checkpoints(directory: Path | str) -> list[Path]:
    """Complete-looking checkpoint directories, oldest first (temporary ones are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))


def save_checkpoint(directory: Path | str, step: int, payload: dict[str, Any], keep: int = 3) -> Path:
    """Write ``payload`` as the checkpoint for ``step`` atomically; keep the newest ``keep``."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / checkpoint_name(step)
    if final.exists():
        raise FileExistsError(f"checkpoint {final} already exists")
    tmp = directory / f"{_TMP_PREFIX}{final.name}"
    try:
        _write(tmp, step, payload)
        os.rename(tmp, final)
    except BaseException as error:  # an interruption too: never leave a partial directory behind
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(error, (OSError, RuntimeError)):  # torch's stream writer reports a full disk as a RuntimeError
            raise
        raise CheckpointWriteError(
            f"cannot write checkpoint {final.name} in {directory}: {_reason(error)} "
            f"({shutil.disk_usage(directory).free} bytes free there); the earlier checkpoints are intact"
        ) from error
    _fsync_dir(directory)
    for old in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write(tmp: Path, step: int, payload: dict[str, Any]) -> None:
    """``state.pt`` and ``meta.json`` under ``tmp``, each flushed to disk."""
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    state_path = tmp / "state.pt"
    with state_path.open("wb") as file:
        torch.save(payload, file)
        file.flush()
        os.fsync(file.fileno())
    meta = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "state_bytes": state_path.stat().st_size,
        "state_sha256": _sha256(state_path),
    }
    with (tmp / "meta.json").open("w") as file:
        json.dump(meta, file, indent=2)
        file.flush()
        os.fsync(file.fileno())
    _fsync_dir(tmp)


def _reason(error: BaseException) -> str:
    """One line for an OSError (its strerror) or for torch's writer error (which wraps the errno text)."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    first = str(error).strip().splitlines()
    return first[0] if first else type(error).__name__


def verify_checkpoint(path: Path | str) -> dict[str, Any]:
    """The checkpoint's meta data if its files are complete and match their checksum, else raise."""
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: unreadable meta.json ({error})") from error
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointVersionError(
            f"{path}: checkpoint format version {meta.get('format_version')!r}, but this mtrl reads version "
            f"{FORMAT_VERSION}; use the mtrl release that wrote it"
        )
    state_path = path / "state.pt"
    if not state_path.is_file() or state_path.stat().st_size != meta["state_bytes"]:
        raise CheckpointError(f"{path}: state.pt is missing or truncated")
    if _sha256(state_path) != meta["state_sha256"]:
        raise CheckpointError(f"{path}: state.pt does not match its checksum")
    return meta


def load_checkpoint(path: Path | str, map_location: torch.device | str | None = None) -> dict[str, Any]:
    """Verify and load one checkpoint's payload."""
    verify_checkpoint(path)
    try:
        return torch.load(Path(path) / "state.pt", map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:  # weights_only refused a class or function: never run it
        raise CheckpointError(
            f"{path}: state.pt holds objects other than tensors and plain data; refused without loading them"
        ) from error


def load_latest(
    directory: Path | str, map_location: torch.device | str | None = None
) -> tuple[Path, dict[str, Any]]:
    """The newest intact checkpoint and its payload; broken newer ones are reported and skipped."""
    candidates = list_checkpoints(directory)
    reasons = []
    for path in reversed(candidates):
        try:
            return path, load_checkpoint(path, map_location)
        except CheckpointVersionError:
            raise
        except Exception as error:  # a broken checkpoint of any kind: report it, try the previous one
            reasons.append(f"{path.name}: {str(error).replace(str(path) + ': ', '')}")
            warnings.warn(f"skipping checkpoint {path.name}: {error}", stacklevel=2)
    found = f"found {len(candidates)}" + (f"; newest {reasons[0]}" if reasons else "")
    raise CheckpointError(f"no intact checkpoint in {directory} ({found})")


def set_aside_newer(directory: Path | str, kept: Path) -> list[Path]:
    """Rename checkpoints newer than ``kept`` to ``broken_<name>`` (for inspection) and return the new paths.

    A run resumed from an older checkpoint than the newest one (because the newest ones were
    broken) will write those steps again; the broken directories are moved out of the way, not
    deleted.
    """
    moved = []
    for path in list_checkpoints(directory):
        if path.name > kept.name:
            target = path.with_name(f"broken_{path.name}")
            suffix = 1
            while target.exists():
                target, suffix = path.with_name(f"broken_{path.name}.{suffix}"), suffix + 1
            os.rename(path, target)
            moved.append(target)
    return moved


def capture_rng_states() -> dict[str, Any]:
    """The global RNG states of Python, NumPy and torch (CPU and every CUDA device)."""
    return {
        "python": random.getstate(),
        "numpy": _plain_numpy_state(np.random.get_state(legacy=False)),
        "torch": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_states` captured."""
    random.setstate(states["python"])
    numpy_state = dict(states["numpy"])
    numpy_state["state"] = {**numpy_state["state"], "key": np.asarray(numpy_state["state"]["key"], dtype=np.uint32)}
    np.random.set_state(numpy_state)
    torch.set_rng_state(states["torch"])
    if states["torch_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch_cuda"])


def _plain_numpy_state(state: dict[str, Any]) -> dict[str, Any]:
    """NumPy's global MT19937 state with its key array as a list of ints (no pickled arrays)."""
    return {**state, "state": {**state["state"], "key": state["state"]["key"].tolist()}}


def non_finite_tensors(payload: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the floating-point tensors in a nested payload that hold a NaN or an infinity.

    One ``isfinite().all()`` per tensor on its device, stacked per device and read to the host once
    per device.
    """
    by_device: dict[torch.device, list[tuple[str, Tensor]]] = {}
    for name, tensor in _floating_tensors(payload, prefix):
        by_device.setdefault(tensor.device, []).append((name, tensor))
    bad = []
    for named in by_device.values():
        flags = torch.stack([tensor.isfinite().all() for _, tensor in named]).tolist()
        bad += [name for (name, _), finite in zip(named, flags) if not finite]
    return bad


def _floating_tensors(value: Any, prefix: str) -> Any:
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and value.numel():
            yield prefix, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _floating_tensors(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _floating_tensors(item, f"{prefix}[{index}]")
