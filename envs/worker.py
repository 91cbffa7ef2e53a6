"""Environment worker processes: a small pool where every worker steps several environments.

gymnasium's AsyncVectorEnv runs one process per environment; here the number of workers is
independent of the number of environments (MT50 on a 2-core machine: 2 workers of about 25
environments each, stepped in turn, shared out by step cost). Observations travel through shared
memory (envs.buffers); the pipe to each worker only carries a short command and its
acknowledgement.

Failures: every wait on the workers watches each pipe together with the process sentinel, with
a deadline (timeout_s). A worker that raises sends (env index, command, traceback); a worker that
dies (os._exit, a segfault, the OOM killer) is noticed by its sentinel at once; one that does not
answer in time is killed. Each becomes an `EnvWorkerError` in the learner naming the worker, the
environment and its task, after the whole pool is shut down ("close" to every worker, join, then
terminate, then kill). Workers ignore SIGINT, so Ctrl-C reaches only the learner, whose
KeyboardInterrupt closes the pool through `close()`, the context manager or the
`weakref.finalize` backstop, which also runs at interpreter exit. A worker whose learner was
killed sees its pipe close and exits. Workers are daemon processes.

Start method: "forkserver" by default, with metaworld and this module preloaded in the server, so
a worker starts as a fork of an interpreter that has already imported metaworld and mujoco, and
never a fork of the learner, which may be running torch threads ("fork" is unsafe then, and
Python 3.12 warns about it). Measured on 2 shared cores, 2 workers of 4 environments, learner
importing torch: forkserver 1.0-2.1 s to start (185 MB per worker), spawn 2.8 s (208 MB; every
worker imports metaworld itself), fork 1.1-1.7 s. The learner's __main__ is not re-imported in
the workers (see _main_not_reimported).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import signal
import sys
import time
import traceback
import types
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

from envs.buffers import BufferLayout, StepBuffers
from envs.runner import CommandError, EnvFactory, EnvGroup
from envs.specs import EnvSpec
from envs.task_env import TaskEnv
from envs.tasks import step_cost

START_METHODS = ("forkserver", "spawn", "fork")
DEFAULT_START_METHOD = "forkserver"
DEFAULT_TIMEOUT_S = 300.0
"""Longest a worker may take to answer one command (building its environments included)."""

_PRELOAD = ["envs.worker"]


class EnvWorkerError(RuntimeError):
    """An environment worker raised, died or stopped answering; the message names the task."""


def assign_to_workers(specs: Sequence[EnvSpec], num_workers: int) -> list[list[int]]:
    """Environment indices of every worker, balanced by step cost (envs.tasks.step_cost).

    A vector step lasts as long as the slowest worker's share, and Meta-World tasks' step costs
    differ up to 7x; longest-first greedy assignment (LPT) gives, from the measured costs, 96-100%
    of the ideal balance for MT10 at 2-4 workers and MT50 at 2-16, against 48-79% for contiguous
    blocks of equal size. Each worker steps its environments in index order.
    """
    if not 1 <= num_workers <= len(specs):
        raise ValueError(f"num_workers must be in [1, {len(specs)}], got {num_workers}")
    loads = [0.0] * num_workers
    groups: list[list[int]] = [[] for _ in range(num_workers)]
    for spec in sorted(specs, key=lambda s: (-step_cost(s.task_name), s.env_index)):
        w = min(range(num_workers), key=lambda k: (loads[k], k))
        loads[w] += step_cost(spec.task_name)
        groups[w].append(spec.env_index)
    return [sorted(group) for group in groups]


def _worker_main(
    conn: mp_connection.Connection,
    slot: int,
    specs: Sequence[EnvSpec],
    layout: BufferLayout,
    memory: object,
    factory: EnvFactory,
) -> None:
    """Worker loop: build the environments, then answer commands until "close" or a lost learner."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    group = None
    try:
        buffers = StepBuffers(layout, memory)
        group = EnvGroup(specs, buffers, slot, factory)
        conn.send(("ok", None))
        while True:
            try:
                command, argument = conn.recv()
            except (EOFError, OSError):
                return  # the learner is gone
            if command == "close":
                conn.send(("ok", None))
                return
            conn.send(("ok", group.handle(command, argument)))
    except CommandError as error:
        _send_error(conn, error.env_index, error.command, error.__cause__ or error)
    except Exception as error:  # noqa: BLE001 - reported to the learner, never swallowed
        _send_error(conn, -1, "worker", error)
    finally:
        if group is not None:
            group.close()


def _send_error(conn: mp_connection.Connection, env_index: int, command: str, error: BaseException) -> None:
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    try:
        conn.send(("error", (env_index, command, f"{type(error).__name__}: {error}", text)))
    except (OSError, EOFError):
        pass


@contextlib.contextmanager
def _main_not_reimported() -> Iterator[None]:
    """Start processes without re-importing the learner's __main__ in them.

    multiprocessing re-runs the parent's main module in every spawn/forkserver child so that
    objects defined there can be unpickled; for a training script that imports torch this doubled
    a worker's memory (185 -> 375 MB) and took its start from 1 to 5 s here. Workers need nothing
    from __main__, so while they start, __main__ is a bare module: the path
    multiprocessing.spawn.get_preparation_data takes for interactive sessions (no file, no spec).
    """
    original = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = original


def _describe(specs: Sequence[EnvSpec], env_index: int) -> str:
    """The environment being run, or all of a worker's environments when unknown."""
    for spec in specs:
        if spec.env_index == env_index:
            return f"env {env_index} (task {spec.task_name!r})"
    return "envs " + ", ".join(f"{spec.env_index} ({spec.task_name!r})" for spec in specs)


class WorkerPool:
    """N worker processes, each owning a share of the environments (assign_to_workers)."""

    def __init__(
        self,
        specs: Sequence[EnvSpec],
        layout: BufferLayout,
        num_workers: int,
        factory: EnvFactory = TaskEnv,
        start_method: str = DEFAULT_START_METHOD,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if start_method not in START_METHODS:
            raise ValueError(f"start_method={start_method!r} is not one of {', '.join(START_METHODS)}")
        self.timeout_s = float(timeout_s)
        self.closed = False
        context = mp.get_context(start_method)
        if start_method == "forkserver":
            context.set_forkserver_preload(_PRELOAD)
        self.buffers = StepBuffers.allocate(layout, context)
        by_index = {spec.env_index: spec for spec in specs}
        self.blocks = [[by_index[e] for e in block] for block in assign_to_workers(specs, num_workers)]
        self.processes: list[mp.process.BaseProcess] = []
        self.conns: list[mp_connection.Connection] = []
        self._finalizer = weakref.finalize(self, _shutdown, self.processes, self.conns)
        # a factory defined in the main script needs that script in the workers
        from_main = (
            getattr(factory, "__module__", None) == "__main__" or type(factory).__module__ == "__main__"
        )
        with contextlib.nullcontext() if from_main or start_method == "fork" else _main_not_reimported():
            for slot, block in enumerate(self.blocks):
                parent_conn, child_conn = context.Pipe(duplex=True)
                process = context.Process(
                    target=_worker_main,
                    args=(child_conn, slot, block, layout, self.buffers.memory, factory),
                    name=f"mtrl-env-worker-{slot}",
                    daemon=True,
                )
                self.conns.append(parent_conn)
                self.processes.append(process)
                process.start()
                child_conn.close()
        self._pending: list[str | None] = ["start"] * len(self.blocks)
        self.wait()

    @property
    def num_workers(self) -> int:
        return len(self.blocks)

    def send(self, command: str, arguments: Sequence[Any] | None = None) -> None:
        """Send `command` to every worker (arguments[w] to worker w) without waiting."""
        self._check_open()
        for w, conn in enumerate(self.conns):
            if self._pending[w] is not None:
                raise RuntimeError(f"worker {w} is still busy with {self._pending[w]!r}")
            self._pending[w] = command
            try:
                conn.send((command, None if arguments is None else arguments[w]))
            except OSError:
                self._fail(w, "died")

    def wait(self) -> list[Any]:
        """Every worker's answer to the last command; raises EnvWorkerError on any failure."""
        self._check_open()
        results: list[Any] = [None] * len(self.conns)
        deadline = time.monotonic() + self.timeout_s
        waiting = {w for w, pending in enumerate(self._pending) if pending is not None}
        by_handle: dict[Any, int] = {}
        for w in waiting:
            by_handle[self.conns[w]] = w
            by_handle[self.processes[w].sentinel] = w
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                w = min(waiting)
                self._fail(w, f"did not answer within {self.timeout_s:g} s")
            handles = [h for h, w in by_handle.items() if w in waiting]
            for handle in mp_connection.wait(handles, timeout=min(remaining, 1.0)):
                w = by_handle[handle]
                if w not in waiting:
                    continue
                conn = self.conns[w]
                if not conn.poll():
                    self._fail(w, "died")
                try:
                    status, payload = conn.recv()
                except (EOFError, OSError):
                    self._fail(w, "died")
                if status == "error":
                    self._fail(w, "raised", payload)
                results[w] = payload
                self._pending[w] = None
                waiting.discard(w)
        return results

    def call(self, command: str, arguments: Sequence[Any] | None = None) -> list[Any]:
        self.send(command, arguments)
        return self.wait()

    def _fail(self, w: int, what: str, payload: tuple[int, str, str, str] | None = None) -> None:
        """Shut the pool down and raise an EnvWorkerError naming the task of worker w."""
        block = self.blocks[w]
        command = self._pending[w]
        process = self.processes[w]
        if payload is not None:
            env_index, where, summary, text = payload
            self.close()
            raise EnvWorkerError(
                f"{_describe(block, env_index)} raised in environment worker {w} during {where}: "
                f"{summary}\n--- worker traceback ---\n{text}"
            )
        env_index = int(self.buffers.current_env[w])
        if what == "died":
            process.join(timeout=1.0)
            what = f"died ({_exit_reason(process.exitcode)})"
        elif process.is_alive():  # hung: no point in a polite close
            process.kill()
        self.close()
        raise EnvWorkerError(
            f"environment worker {w} {what} during {command!r} while running {_describe(block, env_index)}"
        )

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("the environment worker pool is closed")

    def close(self) -> None:
        """Stop every worker (politely, then terminate, then kill); idempotent."""
        if self.closed:
            return
        self.closed = True
        self._finalizer()


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            pass
    return f"exit code {exitcode}"


def _shutdown(processes: list[mp.process.BaseProcess], conns: list[mp_connection.Connection]) -> None:
    for process, conn in zip(processes, conns, strict=True):
        if process.is_alive():
            try:
                conn.send(("close", None))
            except OSError:
                pass
    deadline = time.monotonic() + 2.0
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.terminate()
            process.join(timeout=2.0)
        if process.is_alive():
            process.kill()
            process.join(timeout=2.0)
    for conn in conns:
        conn.close()
    for process in processes:
        if not process.is_alive():
            process.close()
