"""One host-to-device copy per vector step: the environments' numpy output packed into one buffer.

A training loop gets several arrays from each vector step (observations, rewards, flags, final
observations) and needs all of them on the learner's device. Converting each on its own costs one
copy (and on CUDA one transfer and one launch) per array; :class:`StepUpload` writes them into one
float32 host buffer, field after field, and moves that buffer to the device in one copy. On CUDA
the host buffer is pinned memory and the copy is asynchronous (``non_blocking``): the learner's
stream orders it before the kernels that read it. Each field comes back as a contiguous
task-grouped view ``[T, E, ...]`` of that step's device buffer.

Every call gets a new device buffer, so what an earlier call returned stays valid however long the
loop keeps it (the SAC loop stores the previous step's observations after the next upload). On
CUDA the two pinned host buffers alternate, and a buffer is refilled only after its earlier copy
has finished (an event per buffer; by then it always has: the loop reads the actions back in
between, which waits for the stream).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor


class StepUpload:
    """Copies named per-environment numpy arrays to the device as one float32 buffer per call.

    ``fields`` maps each name to the shape of one environment's value (``()`` for a reward or a
    flag, ``(obs_dim,)`` for an observation); the arrays given to :meth:`__call__` are ``[N, ...]``
    with ``N = num_tasks * envs_per_task`` environments ordered by task. Values are cast to
    float32 (flags become 0.0 / 1.0).
    """

    def __init__(self, fields: Mapping[str, tuple[int, ...]], num_tasks: int, envs_per_task: int, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.num_tasks, self.envs_per_task = num_tasks, envs_per_task
        num_envs = num_tasks * envs_per_task
        self.shapes = {name: tuple(shape) for name, shape in fields.items()}
        self.spans: dict[str, tuple[int, int]] = {}  # name -> (start, stop) in the flat buffer
        offset = 0
        for name, shape in self.shapes.items():
            size = num_envs * math.prod(shape)
            self.spans[name] = (offset, offset + size)
            offset += size
        self.size = offset
        self.pinned = self.device.type == "cuda"
        self._host = [torch.empty(self.size, pin_memory=True) for _ in range(2)] if self.pinned else []
        self._copied: list[torch.cuda.Event | None] = [None, None]
        self._turn = 0

    def __call__(self, **arrays: np.ndarray) -> dict[str, Tensor]:
        """Every field's array (``[N, ...]``) on the device as ``[T, E, ...]`` float32, in one copy."""
        if arrays.keys() != self.shapes.keys():
            raise KeyError(f"StepUpload needs exactly {sorted(self.shapes)}, got {sorted(arrays)}")
        host = self._next_host_buffer()  # [size]
        flat = host.numpy()
        for name, array in arrays.items():
            start, stop = self.spans[name]
            flat[start:stop] = np.asarray(array).reshape(-1)
        if self.pinned:
            buffer = host.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._copied[self._turn] = event
            self._turn = 1 - self._turn
        else:
            buffer = host  # the device is the host: the packing was the one copy
        return {
            name: buffer[start:stop].view(self.num_tasks, self.envs_per_task, *self.shapes[name])
            for name, (start, stop) in self.spans.items()
        }

    def _next_host_buffer(self) -> Tensor:
        """A host buffer free to write: a new one on the CPU, the next pinned one on CUDA once its last copy is done."""
        if not self.pinned:
            return torch.empty(self.size)
        copied = self._copied[self._turn]
        if copied is not None:
            copied.synchronize()
        return self._host[self._turn]
