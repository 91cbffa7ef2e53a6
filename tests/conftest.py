"""Shared test set-up."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

import mtrl.compile
import mtrl.gradients


@pytest.fixture(autouse=True)
def restore_torch_threads() -> Iterator[None]:
    """Trainers and benchmarks set torch's process-wide thread count; give it back after each test."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def aot_eager_compile_static(fn: Callable, mode: str | None = None) -> Callable:
    """:func:`mtrl.compile.compile_static` with torch.compile's ``aot_eager`` backend in place of inductor.

    Dynamo traces and guards as it does for the real thing (one graph per shape, reused after), and
    AOT autograd splits forward and backward, but no code is generated: no compiling C++ (seconds
    per graph on the CPU, minutes on a cold cache). ``mode`` is ignored.
    """
    compiled = torch.compile(fn, backend="aot_eager", dynamic=False)

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        with torch._dynamo.config.patch(recompile_limit=mtrl.compile.GRAPHS_PER_FUNCTION):
            return compiled(*args, **kwargs)

    return call


@pytest.fixture
def aot_eager_gradients(monkeypatch: pytest.MonkeyPatch) -> Callable:
    """The compiled per-task gradients (``compiled=True``, the agents' ``compile_gradients``) through ``aot_eager``.

    For tests of what is done with a compiled path (a benchmark's rows, a report), not of the code
    inductor generates: that keeps its own tests (test_gradients, test_sac, test_ppo and the runs of
    tests/integration). Returns :func:`aot_eager_compile_static` for other ``compile_static`` users.
    """
    monkeypatch.setattr(mtrl.gradients, "_compiled_vmapped_gradients", aot_eager_compile_static(mtrl.gradients._vmapped_gradients))
    return aot_eager_compile_static
