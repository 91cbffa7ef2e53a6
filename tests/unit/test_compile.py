"""mtrl.compile: compiled functions keep more graphs than dynamo's per-function limit."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from mtrl.compile import compile_static


def _affine(x: Tensor) -> Tensor:
    return x * 2.0 + 1.0


@pytest.mark.slow
def test_compiled_function_is_not_held_to_dynamos_graph_limit() -> None:
    compiled = compile_static(_affine)
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(recompile_limit=1):  # dynamo alone would run shapes 2 and 3 eagerly
        for size in (3, 4, 5):
            x = torch.randn(size)
            torch.testing.assert_close(compiled(x), _affine(x))
        assert torch._dynamo.config.recompile_limit == 1  # the global setting is left alone
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == before + 3
    assert compiled.__name__ == "_affine"
