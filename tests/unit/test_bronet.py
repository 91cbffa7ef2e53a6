"""BroNet (mtrl.bronet) against the BRO paper's block, and per-task gradients through it and the LayerNorm MLP."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtrl.bronet import ORTHOGONAL_GAIN, BroNet, BroNetBlock, MultiTaskBroNet
from mtrl.categorical import CategoricalSupport
from mtrl.gradients import module_task_loss, per_task_gradients
from mtrl.nn import BatchedLinear, MLP, MultiTaskMLP

T, B, IN, WIDTH, K = 3, 6, 5, 8, 7


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _randomise(module: nn.Module) -> None:
    """Move every parameter off its initial value (LayerNorms start at scale 1 and shift 0, biases at 0)."""
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.3 * torch.randn_like(param))


def _layer_norm(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    """LayerNorm written out: ``(x - mean) / sqrt(var + eps) * scale + shift`` over the last axis."""
    mean, var = x.mean(-1, keepdim=True), x.var(-1, correction=0, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def test_a_block_is_the_residual_of_two_normalised_linear_layers():
    block = BroNetBlock(WIDTH)
    _randomise(block)
    h = torch.randn(T, B, WIDTH)
    inner = torch.relu(_layer_norm(h @ block.linear1.weight.T + block.linear1.bias, block.norm1))
    expected = h + _layer_norm(inner @ block.linear2.weight.T + block.linear2.bias, block.norm2)
    torch.testing.assert_close(block(h), expected, atol=1e-5, rtol=1e-5)


def test_the_trunk_is_a_normalised_input_layer_then_the_blocks():
    net = BroNet(IN, WIDTH, blocks=2)
    _randomise(net)
    assert [type(m) for m in net.blocks] == [BroNetBlock, BroNetBlock]
    x = torch.randn(T, B, IN)
    h = torch.relu(_layer_norm(x @ net.input.weight.T + net.input.bias, net.input_norm))
    torch.testing.assert_close(net(x), net.blocks[1](net.blocks[0](h)), atol=1e-5, rtol=1e-5)
    # parameters: the input layer and its norm, then per block two w x w layers and two norms
    per_block = 2 * (WIDTH * WIDTH + WIDTH) + 2 * 2 * WIDTH
    assert sum(p.numel() for p in net.parameters()) == IN * WIDTH + WIDTH + 2 * WIDTH + 2 * per_block


def test_linear_layers_start_orthogonal_with_gain_sqrt_2_and_zero_bias():
    net = MultiTaskBroNet(IN, WIDTH, 1, K, T)
    square = net.trunk.blocks[0].linear1.weight  # [w, w]
    torch.testing.assert_close(square @ square.T, ORTHOGONAL_GAIN**2 * torch.eye(WIDTH), atol=1e-5, rtol=1e-5)
    head = net.output.head
    assert isinstance(head, BatchedLinear)
    for task_weight in head.weight:  # [w, out]: orthonormal columns times the gain
        torch.testing.assert_close(task_weight.T @ task_weight, ORTHOGONAL_GAIN**2 * torch.eye(K), atol=1e-5, rtol=1e-5)
    assert not torch.equal(head.weight[0], head.weight[1])
    assert all((p == 0).all() for n, p in net.named_parameters() if n.endswith("bias") and "norm" not in n)


def test_the_parameter_split_puts_only_the_output_layer_per_task():
    net = MultiTaskBroNet(IN, WIDTH, 2, K, T)
    assert set(net.task_parameters()) == {"output.head.weight", "output.head.bias"}
    assert len(net.shared_parameters()) + 2 == len(list(net.parameters()))
    assert "trunk.blocks.1.norm2.weight" in net.shared_parameters()
    shared = MultiTaskBroNet(IN, WIDTH, 2, K, T, per_task_head=False)
    assert shared.task_parameters() == {} and len(shared.shared_parameters()) == len(list(shared.parameters()))


def test_a_task_slice_under_vmap_equals_the_whole_batch():
    net = MultiTaskBroNet(IN, WIDTH, 2, K, T)
    _randomise(net)
    x = torch.randn(T, B, IN)
    shared, task = net.shared_parameters(), net.task_parameters()

    def one_task(task_params: dict[str, Tensor], xs: Tensor) -> Tensor:
        return torch.func.functional_call(net, {**shared, **task_params}, (xs,))

    torch.testing.assert_close(torch.func.vmap(one_task)(task, x), net(x), atol=1e-5, rtol=1e-5)


def _loop_reference(net: nn.Module, loss_of: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor):
    """Per-task gradients the slow way: one backward pass per task, on its own rows only."""
    shared, task = net.shared_parameters(), net.task_parameters()
    rows, task_grads = [], {name: torch.zeros_like(p) for name, p in task.items()}
    for t in range(T):
        loss = loss_of(net(x)[t], y[t])  # the whole batch's forward, task t's loss
        grads = torch.autograd.grad(loss, [*shared.values(), *task.values()])
        rows.append(torch.cat([g.reshape(-1) for g in grads[: len(shared)]]))
        for name, grad in zip(task, grads[len(shared) :]):
            task_grads[name][t] = grad[t]
    return torch.stack(rows), task_grads


def _mse(out: Tensor, y: Tensor) -> Tensor:
    return F.mse_loss(out, y)


SUPPORT = CategoricalSupport(K, -1.0, 1.0)


def _cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    return SUPPORT.cross_entropy(logits, target).mean()


@pytest.mark.parametrize("per_task_head", [True, False])
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda head: MultiTaskBroNet(IN, WIDTH, 2, K, T, head), id="bronet"),
        pytest.param(lambda head: MultiTaskMLP(IN, (WIDTH, WIDTH), K, T, head, layer_norm=True), id="layer-norm-mlp"),
    ],
)
@pytest.mark.parametrize("loss_of", [_mse, _cross_entropy], ids=["mse", "cross-entropy"])
def test_per_task_gradients_through_it_equal_a_loop_of_per_task_backward_passes(make, per_task_head, loss_of):
    net = make(per_task_head)
    _randomise(net)
    x = torch.randn(T, B, IN)
    y = torch.randn(T, B, K) if loss_of is _mse else torch.softmax(torch.randn(T, B, K), -1)
    loss = module_task_loss(net, lambda forward, xs, ys: loss_of(forward(xs), ys))
    grads = per_task_gradients(loss, net.shared_parameters(), net.task_parameters(), (x, y))
    shared_ref, task_ref = _loop_reference(net, loss_of, x, y)
    torch.testing.assert_close(grads.shared, shared_ref, atol=1e-5, rtol=1e-4)
    assert grads.task.keys() == task_ref.keys()
    for name in task_ref:
        torch.testing.assert_close(grads.task[name], task_ref[name], atol=1e-5, rtol=1e-4)


def test_the_mlp_puts_a_layer_norm_between_every_hidden_layer_and_its_activation_only_when_asked():
    plain = MLP(IN, (WIDTH, WIDTH), K)
    assert [type(m) for m in plain] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    normed = MLP(IN, (WIDTH, WIDTH), K, layer_norm=True)
    assert [type(m) for m in normed] == [nn.Linear, nn.LayerNorm, nn.ReLU, nn.Linear, nn.LayerNorm, nn.ReLU, nn.Linear]
    _randomise(normed)
    x = torch.randn(B, IN)
    h = torch.relu(_layer_norm(normed[0](x), normed[1]))
    h = torch.relu(_layer_norm(normed[3](h), normed[4]))
    torch.testing.assert_close(normed(x), normed[6](h), atol=1e-5, rtol=1e-5)
