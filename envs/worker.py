"""Environment worker processes: a small pool where every worker steps several environments.

gymnasium's AsyncVectorEnv runs one process per environment; here the number of workers is
independent of the number of environments (MT50 on a 2-core machine: 2 workers of about 25
environments each, stepped in turn, shared out by step cost). Observations travel through shared
memory (envs.buffers); the pipe to each worker only carries a short command and its
acknowledgement.

Failures: every wait on the workers watches each pipe together with the process sentinel. A worker
that raises sends (env index, command, traceback); a worker that dies (os._exit, a segfault, the
OOM killer, SIGKILL) is noticed by its sentinel at once; one that makes no progress for `timeout_s`
(EnvConfig.worker_timeout_s) is killed. Progress is the worker moving on to its next environment
(envs.buffers `progress`, which the learner looks at about once a second), so the deadline bounds
one environment's reset or step, however many environments the worker owns, and a hung simulator
(deadlocked, SIGSTOPped) costs seconds, not the whole command's worth of a large share. Building
the environments (the "start" wait) has its own deadline per environment, BUILD_TIMEOUT_S or
timeout_s if larger: a build takes far longer than a step. When the learner itself was not running
(stopped with SIGSTOP or Ctrl-Z, a suspended Slurm job, a starved machine), the time it missed is
added to every deadline, so its workers, stopped along with it, do not count as hung. Each failure
becomes an `EnvWorkerError` in the learner, raised after the whole pool is shut down, whose first
line says by itself what happened (died / killed by a signal / made no progress for N s / raised
X), in which worker, environment and task; `kind`, `task` and the other attributes say the same to
a program, and a worker's traceback follows the first line and is kept in `worker_traceback`.

Signals: workers ignore SIGINT and SIGTERM, and so does the forkserver (envs._forkserver_preload).
Ctrl-C reaches only the learner, whose KeyboardInterrupt closes the pool through `close()`, the
context manager or the `weakref.finalize` backstop, which also runs at interpreter exit. Slurm's
SIGTERM to every process of a job step leaves the pool running, so the learner decides: it can
finish its step, checkpoint and then close the pool. Closing sends "close" to every worker,
waits, then kills (SIGKILL: SIGTERM would be ignored). A worker whose learner was killed sees its
pipe close and exits, and so does the forkserver; a forkserver killed under its workers makes
them look dead (exit code 255) to the learner. Workers are daemon processes.

Temp dir: multiprocessing's per-process temporary directory (the forkserver's socket lives there)
is `<tempdir>/mtrl-mp-<pid>-...` instead of `pymp-...`, and every pool start removes those of
learners that died without cleaning up (envs.tempdirs).

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
from typing import Any, NoReturn

from envs.buffers import BufferLayout, StepBuffers
from envs.config import DEFAULT_WORKER_TIMEOUT_S, check_timeout
from envs.runner import CommandError, EnvFactory, EnvGroup
from envs.specs import EnvSpec
from envs.task_env import TaskEnv
from envs.tasks import step_cost
from envs.tempdirs import install_temp_dir, remove_orphaned_temp_dirs

START_METHODS = ("forkserver", "spawn", "fork")
DEFAULT_START_METHOD = "forkserver"
DEFAULT_TIMEOUT_S = DEFAULT_WORKER_TIMEOUT_S
"""Longest a worker may spend on one environment's part of a command (EnvConfig.worker_timeout_s)."""
BUILD_TIMEOUT_S = 60.0
"""Longest a worker may spend building one environment, or starting up before its first (the
start wait uses this or timeout_s, whichever is larger): building compiles a MuJoCo model, orders
of magnitude slower than a step, and many workers may be building on few cores at once."""
FAILURE_KINDS = ("died", "timeout", "raised")

_PRELOAD = ["envs._forkserver_preload"]
_STALL_S = 1.0
"""A wait that returns this much later than asked means the learner was not running (module doc)."""
_SUMMARY_CHARS = 300
_LISTED_ENVS = 4


class EnvWorkerError(RuntimeError):
    """An environment worker raised, died or stopped making progress.

    The first line of the message is complete on its own (what happened, which worker, which
    environment and task) and fits in a one-line report; for "raised" the worker's traceback
    follows it. Attributes:

    kind: "died" (exited or was killed: see exitcode), "timeout" (no progress within the
      deadline; the worker was killed) or "raised" (an exception in the worker or, in-process, in
      the environment).
    worker: the worker's index, None in-process.
    command: what it was doing ("start", "step", "reset", ... for the pool; for "raised", the
      environment's own command such as "build" or "step").
    env_index, task: the environment and its task, when known (None: the worker owns several
      and was between them).
    tasks: the tasks of every environment the worker owns.
    exitcode: the worker's exit code for "died" (negative: the signal), else None.
    worker_traceback: the worker's formatted traceback for "raised", else None.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str = "raised",
        worker: int | None = None,
        command: str | None = None,
        env_index: int | None = None,
        task: str | None = None,
        tasks: tuple[str, ...] = (),
        exitcode: int | None = None,
        worker_traceback: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.worker = worker
        self.command = command
        self.env_index = env_index
        self.task = task
        self.tasks = tuple(tasks)
        self.exitcode = exitcode
        self.worker_traceback = worker_traceback

    @property
    def summary(self) -> str:
        """The first line of the message."""
        return str(self).split("\n", 1)[0]


def assign_to_workers(specs: Sequence[EnvSpec], num_workers: int) -> list[list[int]]:
    """Environment indices of every worker, balanced by step cost (envs.tasks.step_cost).

    A vector step lasts as long as the slowest worker's share, and Meta-World tasks' step costs
    differ several-fold; longest-first greedy assignment (LPT) comes much closer to the ideal
    balance than contiguous blocks of equal size (docs/benchmarks.md). Each worker steps its
    environments in index order.
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
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the learner's to handle
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # so is a scheduler's SIGTERM (module doc)
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


def _describe(specs: Sequence[EnvSpec], env_index: int) -> tuple[str, EnvSpec | None]:
    """The environment being run, or a worker's environments when unknown; and its spec."""
    for spec in specs:
        if spec.env_index == env_index:
            return f"env {env_index} (task {spec.task_name!r})", spec
    if len(specs) == 1:
        return f"env {specs[0].env_index} (task {specs[0].task_name!r})", specs[0]
    listed = ", ".join(f"{spec.env_index} ({spec.task_name!r})" for spec in specs[:_LISTED_ENVS])
    more = f" and {len(specs) - _LISTED_ENVS} more" if len(specs) > _LISTED_ENVS else ""
    return f"envs {listed}{more}", None


def one_line(text: str, limit: int = _SUMMARY_CHARS) -> str:
    """`text` with its whitespace runs (newlines included) made single spaces, cut at `limit`."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class WorkerPool:
    """N worker processes, each owning a share of the environments (assign_to_workers).

    timeout_s bounds each environment's part of a command; build_timeout_s (None: the larger of
    BUILD_TIMEOUT_S and timeout_s) each environment's construction, in the start wait (module doc).
    """

    def __init__(
        self,
        specs: Sequence[EnvSpec],
        layout: BufferLayout,
        num_workers: int,
        factory: EnvFactory = TaskEnv,
        start_method: str = DEFAULT_START_METHOD,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        build_timeout_s: float | None = None,
    ) -> None:
        if start_method not in START_METHODS:
            raise ValueError(f"start_method={start_method!r} is not one of {', '.join(START_METHODS)}")
        self.timeout_s = check_timeout("timeout_s", timeout_s)
        self.build_timeout_s = (
            max(BUILD_TIMEOUT_S, self.timeout_s)
            if build_timeout_s is None
            else check_timeout("build_timeout_s", build_timeout_s)
        )
        self.closed = False
        remove_orphaned_temp_dirs()
        install_temp_dir()
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

    def _limit(self, w: int) -> float:
        return self.build_timeout_s if self._pending[w] == "start" else self.timeout_s

    def wait(self) -> list[Any]:
        """Every worker's answer to the last command; raises EnvWorkerError on any failure.

        A worker's deadline restarts whenever it starts on another environment (module doc)."""
        self._check_open()
        results: list[Any] = [None] * len(self.conns)
        waiting = {w for w, pending in enumerate(self._pending) if pending is not None}
        progress = self.buffers.progress
        now = time.monotonic()
        seen = {w: int(progress[w]) for w in waiting}
        deadline = {w: now + self._limit(w) for w in waiting}
        by_handle: dict[Any, int] = {}
        for w in waiting:
            by_handle[self.conns[w]] = w
            by_handle[self.processes[w].sentinel] = w
        while waiting:
            now = time.monotonic()
            for w in sorted(waiting):
                if int(progress[w]) != seen[w]:
                    seen[w] = int(progress[w])
                    deadline[w] = now + self._limit(w)
                elif deadline[w] <= now and not self._answered(w):
                    self._fail(w, "timeout")
            timeout = max(0.0, min(1.0, min(deadline[w] for w in waiting) - now))
            handles = [h for h, w in by_handle.items() if w in waiting]
            ready = mp_connection.wait(handles, timeout=timeout)
            missed = time.monotonic() - now - timeout
            if missed > _STALL_S:  # this process was not running: nobody's fault but its own
                for w in waiting:
                    deadline[w] += missed
            for handle in ready:
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

    def _answered(self, w: int) -> bool:
        """Whether worker w's answer (or its death) is already there to be read."""
        return bool(mp_connection.wait([self.conns[w], self.processes[w].sentinel], timeout=0))

    def call(self, command: str, arguments: Sequence[Any] | None = None) -> list[Any]:
        self.send(command, arguments)
        return self.wait()

    def _fail(self, w: int, kind: str, payload: tuple[int, str, str, str] | None = None) -> NoReturn:
        """Shut the pool down and raise an EnvWorkerError naming the task of worker w."""
        block = self.blocks[w]
        command = self._pending[w]
        process = self.processes[w]
        tasks = tuple(spec.task_name for spec in block)
        exitcode = worker_traceback = None
        if payload is not None:
            env_index, command, summary, worker_traceback = payload
            where, spec = _describe(block, env_index)
            message = (
                f"{where} raised in environment worker {w} during {command}: {one_line(summary)}"
                f"\n--- worker traceback ---\n{worker_traceback}"
            )
        else:
            where, spec = _describe(block, int(self.buffers.current_env[w]))
            after = ""
            if kind == "died":
                process.join(timeout=1.0)
                exitcode = process.exitcode
                what = f"died ({_exit_reason(exitcode)})"
            else:  # hung: no point in a polite close
                if process.is_alive():
                    process.kill()
                limit = "the build deadline" if command == "start" else "worker_timeout_s"
                what = f"made no progress for {self._limit(w):g} s ({limit})"
                after = "; it was killed"
            where = where if spec is not None else f"one of {where}"
            message = f"environment worker {w} {what} during {command!r} while running {where}{after}"
        self.close()
        raise EnvWorkerError(
            message,
            kind=kind,
            worker=w,
            command=command,
            env_index=None if spec is None else spec.env_index,
            task=None if spec is None else spec.task_name,
            tasks=tasks,
            exitcode=exitcode,
            worker_traceback=worker_traceback,
        ) from None

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("the environment worker pool is closed")

    def close(self) -> None:
        """Stop every worker (politely, then SIGKILL); idempotent."""
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
    for process in processes:  # workers ignore SIGTERM, so terminate() would only wait longer
        if process.is_alive():
            process.kill()
            process.join(timeout=2.0)
    for conn in conns:
        conn.close()
    for process in processes:
        if not process.is_alive():
            process.close()
