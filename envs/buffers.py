"""The step buffers the learner and the environment workers share.

One flat byte buffer holds every array below, each 64-byte aligned; worker processes map the
same memory (a `multiprocessing.RawArray`, inherited at process start) and write only the rows
of their own environments, so stepping moves no observation through a pipe. In-process stepping
uses the same layout on ordinary memory.

    obs           [N, obs_dim] float32   next observation (first one of a new episode after an end)
    final_obs     [N, obs_dim] float32   the observation the action led to (real end-of-episode obs)
    actions       [N, 4]       float64   written by the learner before a step
    reward        [N]          float64
    terminated    [N]          bool
    truncated     [N]          bool
    success       [N]          bool      success flag of this step
    episode_return  [N]        float64   return of the episode that ended (rows where it ended)
    episode_length  [N]        int64
    episode_success [N]        bool      success flag set at any step of the episode that ended
    current_env   [W]          int64     env each worker is stepping (-1 idle): names the task
                                         when a worker dies mid-step
    progress      [W]          int64     environments each worker has started work on, ever: the
                                         learner's sign that a worker is not hung

With one_hot, the last num_tasks columns of obs and final_obs hold the constant task id,
written once by the learner; workers write the first 39 columns only.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

_ALIGN = 64


@dataclass(frozen=True)
class BufferLayout:
    """Sizes of the shared step buffers; picklable, so a worker can rebuild the views."""

    num_envs: int
    obs_dim: int
    action_dim: int
    num_workers: int

    def fields(self) -> list[tuple[str, tuple[int, ...], np.dtype]]:
        n = self.num_envs
        return [
            ("obs", (n, self.obs_dim), np.dtype(np.float32)),
            ("final_obs", (n, self.obs_dim), np.dtype(np.float32)),
            ("actions", (n, self.action_dim), np.dtype(np.float64)),
            ("reward", (n,), np.dtype(np.float64)),
            ("terminated", (n,), np.dtype(np.bool_)),
            ("truncated", (n,), np.dtype(np.bool_)),
            ("success", (n,), np.dtype(np.bool_)),
            ("episode_return", (n,), np.dtype(np.float64)),
            ("episode_length", (n,), np.dtype(np.int64)),
            ("episode_success", (n,), np.dtype(np.bool_)),
            ("current_env", (max(self.num_workers, 1),), np.dtype(np.int64)),
            ("progress", (max(self.num_workers, 1),), np.dtype(np.int64)),
        ]

    def offsets(self) -> tuple[dict[str, int], int]:
        """Byte offset of every field and the total size."""
        offsets, size = {}, 0
        for name, shape, dtype in self.fields():
            offsets[name] = size
            size += -(-int(np.prod(shape)) * dtype.itemsize // _ALIGN) * _ALIGN
        return offsets, size


class StepBuffers:
    """Numpy views of the step buffers over one block of memory."""

    obs: np.ndarray
    final_obs: np.ndarray
    actions: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    success: np.ndarray
    episode_return: np.ndarray
    episode_length: np.ndarray
    episode_success: np.ndarray
    current_env: np.ndarray
    progress: np.ndarray

    def __init__(self, layout: BufferLayout, memory: object) -> None:
        self.layout = layout
        self.memory = memory
        offsets, size = layout.offsets()
        raw = np.frombuffer(memory, dtype=np.uint8, count=size)
        for name, shape, dtype in layout.fields():
            count = int(np.prod(shape))
            view = raw[offsets[name] : offsets[name] + count * dtype.itemsize].view(dtype)
            setattr(self, name, view.reshape(shape))

    @classmethod
    def allocate(cls, layout: BufferLayout, context: object | None = None) -> StepBuffers:
        """Zeroed buffers: shared memory from `context.RawArray` when given, else private."""
        _, size = layout.offsets()
        if context is None:
            memory: object = bytearray(size)
        else:
            memory = context.RawArray(ctypes.c_uint8, size)  # type: ignore[attr-defined]
        buffers = cls(layout, memory)
        buffers.current_env[:] = -1
        return buffers
