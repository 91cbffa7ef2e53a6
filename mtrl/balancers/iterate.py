"""Fixed-count solver iterations, optionally through ``torch.compile``.

The balancers' inner solvers (CAGrad's and MGDA's interior-point method, Nash-MTL's Newton method)
run a fixed number of iterations on a ``T x T`` problem. Such a problem is all per-operation
overhead in eager mode (a few dozen small tensor operations per iteration), so the trainer
compiles the iterations, several to one call: fewer calls pay less dispatch overhead, more make
compiling slower; eight per call was the best trade measured (docs/benchmarks.md gives the
figures). Inductor caches the result on disk, so later processes compile in a few seconds.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import Tensor

from mtrl.compile import compile_static

#: ``step(*state, *constants) -> state``: one iteration, tensors in and out, no host synchronisation.
StepFn = Callable[..., tuple[Tensor, ...]]

#: Iterations per compiled call.
COMPILED_CHUNK = 8


def iterate(
    step: StepFn, state: tuple[Tensor, ...], constants: tuple[Tensor, ...], iterations: int, compiled: bool = False
) -> tuple[Tensor, ...]:
    """Apply ``step`` ``iterations`` times to ``state``; with ``compiled``, whole chunks run compiled.

    ``step`` must be a module-level function (the compiled chunk is cached per function and state
    size; one graph per problem size). The compiled iterates equal the eager ones up to rounding.
    Traced inside an enclosing ``torch.compile`` (a whole compiled update), the chunks are always
    compiled and called as their own graph.
    """
    enclosed = torch.compiler.is_compiling()  # traced into a compiled whole update
    chunks, remainder = divmod(iterations, COMPILED_CHUNK) if compiled or enclosed else (0, iterations)
    for _ in range(chunks):
        # unrolled into the enclosing graph, the iterations make inductor take minutes (CAGrad's 40:
        # 477 s at T = 3 on this 2-core machine, against ~40 s for the rest of a SAC update), so
        # there the chunk stays its own graph, called from the enclosing one
        state = (_chunk_outside_graph if enclosed else _run_chunk)(step, state, constants)
    for _ in range(remainder):
        state = step(*state, *constants)
    return state


@functools.cache
def _compiled_chunk(step: StepFn, state_size: int) -> StepFn:
    """:data:`COMPILED_CHUNK` applications of ``step`` (unrolled when traced), through ``torch.compile``
    (:func:`mtrl.compile.compile_static`)."""

    def chunk(*state_and_constants: Tensor) -> tuple[Tensor, ...]:
        state, constants = state_and_constants[:state_size], state_and_constants[state_size:]
        for _ in range(COMPILED_CHUNK):
            state = step(*state, *constants)
        return state

    return compile_static(chunk)


def _run_chunk(step: StepFn, state: tuple[Tensor, ...], constants: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return _compiled_chunk(step, len(state))(*state, *constants)


#: :func:`_run_chunk` called from a graph being compiled: a graph break, then the chunk's own graph.
_chunk_outside_graph = torch.compiler.disable(_run_chunk)
