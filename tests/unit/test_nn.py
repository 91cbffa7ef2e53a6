"""Tests for mtrl.nn: batched per-task layers, the MLP trunk and the multi-task MLP."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from mtrl.nn import MLP, BatchedLinear, MultiTaskMLP, bf16_autocast

T, B, IN, OUT = 3, 5, 4, 2


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_batched_linear_shapes_and_init() -> None:
    layer = BatchedLinear(T, IN, OUT)
    assert layer.weight.shape == (T, IN, OUT)
    assert layer.bias.shape == (T, OUT)
    bound = 1.0 / math.sqrt(IN)
    assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
    assert not torch.equal(layer.weight[0], layer.weight[1])  # independent per task
    assert layer(torch.randn(T, B, IN)).shape == (T, B, OUT)


def test_batched_linear_equals_per_task_linear() -> None:
    layer = BatchedLinear(T, IN, OUT)
    x = torch.randn(T, B, IN)  # [T, B, in]
    expected = torch.stack([F.linear(x[t], layer.weight[t].T, layer.bias[t]) for t in range(T)])
    torch.testing.assert_close(layer(x), expected)


def test_batched_linear_under_vmap_over_tasks() -> None:
    layer = BatchedLinear(T, IN, OUT)
    x = torch.randn(T, B, IN)

    def one_task(weight: torch.Tensor, bias: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        assert weight.shape == (IN, OUT) and xs.shape == (B, IN)
        return functional_call(layer, {"weight": weight, "bias": bias}, (xs,))

    out = vmap(one_task)(layer.weight, layer.bias, x)
    torch.testing.assert_close(out, layer(x))


def test_mlp_structure() -> None:
    trunk = MLP(IN, [8, 6], None, nn.Tanh)
    assert [type(m) for m in trunk] == [nn.Linear, nn.Tanh, nn.Linear, nn.Tanh]
    assert trunk.out_dim == 6
    full = MLP(IN, [8], OUT)
    assert isinstance(full[-1], nn.Linear) and full(torch.randn(T, B, IN)).shape == (T, B, OUT)
    assert MLP(IN, [], None)(torch.ones(2, IN)).equal(torch.ones(2, IN))


def test_multitask_mlp_parameter_split_per_task_head() -> None:
    net = MultiTaskMLP(IN, [8, 8], OUT, T)
    shared, task = net.shared_parameters(), net.task_parameters()
    assert set(task) == {"head.weight", "head.bias"}
    assert all(p.shape[0] == T for p in task.values())
    assert set(shared) == {f"trunk.{i}.{kind}" for i in (0, 2) for kind in ("weight", "bias")}
    assert set(shared) | set(task) == {name for name, _ in net.named_parameters()}
    assert not set(shared) & set(task)
    for name, param in {**shared, **task}.items():
        assert param is net.get_parameter(name)


def test_multitask_mlp_shared_head() -> None:
    net = MultiTaskMLP(IN, [8], OUT, T, per_task_head=False)
    assert net.task_parameters() == {}
    assert set(net.shared_parameters()) == {name for name, _ in net.named_parameters()}
    x = torch.randn(1, B, IN).expand(T, B, IN)  # the same rows for every task
    out = net(x)
    assert out.shape == (T, B, OUT)
    torch.testing.assert_close(out[1], out[0])


def test_multitask_mlp_per_task_heads_differ_and_run_under_vmap() -> None:
    net = MultiTaskMLP(IN, [8], OUT, T)
    x = torch.randn(1, B, IN).expand(T, B, IN)
    out = net(x)  # [T, B, out]
    assert out.shape == (T, B, OUT)
    assert not torch.allclose(out[0], out[1])
    shared, task = net.shared_parameters(), net.task_parameters()

    def one_task(task_slice: dict[str, torch.Tensor], xs: torch.Tensor) -> torch.Tensor:
        return functional_call(net, {**shared, **task_slice}, (xs,))

    torch.testing.assert_close(vmap(one_task)(task, x), out)


def test_bf16_autocast_is_a_no_op_when_off_and_refused_off_cuda():
    with bf16_autocast(False, torch.device("cpu")):
        assert torch.get_autocast_dtype("cuda") is not None and not torch.is_autocast_enabled("cuda")
    with pytest.raises(ValueError, match="bf16 autocast needs a CUDA device, got 'cpu'"):
        bf16_autocast(True, torch.device("cpu"))
