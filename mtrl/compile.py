"""``torch.compile`` with static shapes and room for many graphs per function.

Dynamo keeps at most ``torch._dynamo.config.recompile_limit`` (8 by default) compiled graphs per
Python function and then silently runs it eagerly. mtrl's compiled functions (the vmapped per-task
gradients, the solvers' iteration chunks) are each one function shared by every loss, problem size,
shape and torch thread count in a process, so a process that trains and benchmarks several of them
(or a test session) would fall back to eager without notice. :func:`compile_static` raises the
limit for its function's calls only, leaving dynamo's global setting alone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

#: Graphs a function compiled by :func:`compile_static` may keep.
GRAPHS_PER_FUNCTION = 64

F = TypeVar("F", bound=Callable[..., Any])


def compile_static(fn: F, mode: str | None = None) -> F:
    """``torch.compile(fn, dynamic=False, mode=mode)``, calls allowed :data:`GRAPHS_PER_FUNCTION` graphs.

    Compiling is lazy (at the first call for each set of guards, e.g. shapes); the patch of dynamo's
    limit costs about 16 us per call on the CPU. Called while an enclosing function is being
    compiled (a compiled whole update calling a compiled solver), ``fn`` itself is traced into the
    enclosing graph.
    """
    compiled = torch.compile(fn, dynamic=False, mode=mode)

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        with torch._dynamo.config.patch(recompile_limit=GRAPHS_PER_FUNCTION):
            return compiled(*args, **kwargs)

    return call  # type: ignore[return-value]
