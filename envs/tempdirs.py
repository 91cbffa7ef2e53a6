"""multiprocessing's temporary directory, named after its owner, and removed after killed owners.

multiprocessing keeps a per-process temporary directory (`/tmp/pymp-XXXX`, made by
multiprocessing.util.get_temp_dir) for the forkserver's AF_UNIX socket and the like, and removes
it at interpreter exit. A learner killed with SIGKILL (or ended by an unhandled SIGTERM, the OOM
killer, a node's job cleanup) never gets there, so every such death left one directory behind.

`install_temp_dir` gives this process, instead, a directory named
`<tempdir>/mtrl-mp-<pid>-<tag>-<random>`, where `tag` identifies the host and PID namespace;
multiprocessing removes it at exit as it would its own. `remove_orphaned_temp_dirs`, run whenever
a worker pool starts, removes the directories of that form whose owner is gone. It only ever
touches names with this prefix, made on this host in this PID namespace (a PID is only meaningful
there: containers sharing /tmp, or a TMPDIR on a shared file system, see others' PIDs as dead),
owned by this user, real directories (no symlinks), and never this process's own; the owner
counts as gone when no process with its PID exists or that process is a zombie. A reused PID
keeps a dead owner's directory until that other process ends too (erring on the side of keeping).

The hook: get_temp_dir() returns `multiprocessing.current_process()._config["tempdir"]` when it
is set and only creates a `pymp-` directory when it is not (CPython 3.4 to 3.13), so setting that
one key before multiprocessing first needs a directory is enough. It is a private key, but the
alternatives are worse: swapping the public `tempfile.tempdir` while get_temp_dir runs changes
a process-wide setting under other threads' feet and still yields a `pymp-` name, so the PID
would have to go into a parent directory; a marker file inside the `pymp-` directory leaves a
window between the two, and the sweep would have to open every user's `pymp-*` directory.
`install_temp_dir` checks that get_temp_dir() really returns its directory, and otherwise
leaves multiprocessing's own in place. A process that already has a multiprocessing temp dir
(it used a forkserver or a listener before its first pool) keeps that one.

The socket path inside (`<dir>/listener-XXXXXXXX`) must fit AF_UNIX's ~108 bytes: when the
configured temp dir is too long, /tmp or /var/tmp is used instead (as Python 3.13 does for
`pymp-`), or, failing those, multiprocessing's default.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import multiprocessing.util as mp_util
import os
import re
import shutil
import socket
import tempfile

PREFIX = "mtrl-mp-"
MAX_SOCKET_PATH = 100
"""Longest AF_UNIX socket path allowed inside the directory (Linux's sun_path holds 108 bytes)."""

_SOCKET_NAME_LENGTH = len("/listener-") + 8  # multiprocessing.connection.arbitrary_address
_RANDOM_LENGTH = 8  # tempfile.mkdtemp's random part
_NAME = re.compile(re.escape(PREFIX) + r"(?P<pid>[1-9][0-9]*)-(?P<tag>[0-9a-f]{6})-[A-Za-z0-9_]+")


def owner_tag() -> str:
    """6 hex digits naming this host and PID namespace (the places where our PIDs mean something)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return hashlib.sha1(f"{socket.gethostname()}\0{namespace}".encode()).hexdigest()[:6]


def _base_dirs() -> list[str]:
    """Where this process would put its directory: the temp dir, or short fallbacks."""
    candidates = [tempfile.gettempdir(), "/tmp", "/var/tmp"]
    return list(dict.fromkeys(os.path.abspath(c) for c in candidates))


def _fits(base: str, pid: int, tag: str) -> bool:
    name = f"{PREFIX}{pid}-{tag}-" + "x" * _RANDOM_LENGTH
    return len(os.path.join(base, name)) + _SOCKET_NAME_LENGTH <= MAX_SOCKET_PATH


def install_temp_dir() -> str | None:
    """Make this process's multiprocessing temp dir an `mtrl-mp-<pid>-...` one; its path, or None.

    Idempotent; None when multiprocessing already has a directory of another name for this
    process, or no base directory is short enough and writable.
    """
    config = multiprocessing.current_process()._config  # noqa: SLF001 - the hook, see module doc
    current = config.get("tempdir")
    if current is not None:
        return current if os.path.basename(current).startswith(PREFIX) else None
    pid, tag = os.getpid(), owner_tag()
    for base in _base_dirs():
        if not (_fits(base, pid, tag) and os.path.isdir(base) and os.access(base, os.W_OK | os.X_OK)):
            continue
        try:
            path = tempfile.mkdtemp(prefix=f"{PREFIX}{pid}-{tag}-", dir=base)
        except OSError:
            continue
        config["tempdir"] = path
        # what get_temp_dir registers for its own directory: removed at exit, after the other
        # finalizers (the forkserver's socket lives in it)
        mp_util.Finalize(None, _remove_own, args=(shutil.rmtree, path), exitpriority=-100)
        if mp_util.get_temp_dir() != path:  # a multiprocessing that no longer reads the key
            _remove_own(shutil.rmtree, path)
            return None
        return path
    return None


def _remove_own(rmtree: object, path: str) -> None:
    rmtree(path, ignore_errors=True)  # type: ignore[operator]
    process = multiprocessing.current_process()
    if process is not None and process._config.get("tempdir") == path:  # noqa: SLF001
        process._config["tempdir"] = None  # noqa: SLF001


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists in this PID namespace and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def remove_orphaned_temp_dirs() -> list[str]:
    """Remove the `mtrl-mp-` directories of dead owners (rules in the module doc); their paths."""
    tag, uid, me = owner_tag(), os.getuid(), os.getpid()
    removed = []
    for base in _base_dirs():
        try:
            entries = list(os.scandir(base))
        except OSError:
            continue
        for entry in entries:
            match = _NAME.fullmatch(entry.name)
            if match is None or match["tag"] != tag:
                continue
            pid = int(match["pid"])
            if pid == me:
                continue
            try:
                if not entry.is_dir(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
            except OSError:
                continue
            if pid_alive(pid):
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            if not os.path.lexists(entry.path):
                removed.append(entry.path)
    return removed
