import io

import pytest
import torch

from mtrl.balanced_step import BalancedStep
from mtrl.balancers import Mean, make_balancer
from mtrl.nn import MultiTaskMLP
from mtrl.optim import OptimizerConfig
from mtrl.schedules import ScheduleConfig

T, B, IN, OUT = 3, 8, 4, 2
LINEAR = ScheduleConfig(name="linear")


def _module(seed: int = 0) -> MultiTaskMLP:
    torch.manual_seed(seed)
    return MultiTaskMLP(IN, (8,), OUT, T)


def _step(module: MultiTaskMLP, balancer=None, lr: float = 1e-2, max_grad_norm: float = 0.0) -> BalancedStep:
    config = OptimizerConfig(lr=lr, max_grad_norm=max_grad_norm)
    return BalancedStep.build("critic", module, balancer or make_balancer("pcgrad", T, seed=5), config, LINEAR, total_updates=10)


def _loss(forward, x, y):
    prediction = forward(x)  # [B, OUT]
    return (prediction - y).pow(2).mean(), prediction.mean()


def _plain_loss(forward, x, y):
    return _loss(forward, x, y)[0]


def _inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, B, IN, generator=g), torch.randn(T, B, OUT, generator=g)


def _saved(step: BalancedStep) -> dict:
    buffer = io.BytesIO()
    torch.save(step.state_dict(), buffer)  # as a checkpoint does: nothing shared with the original
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def test_step_returns_device_losses_aux_and_the_pre_clip_norm():
    step = _step(_module())
    result = step.step(_loss, _inputs(0), has_aux=True)
    assert result.losses.shape == (T,) and result.aux.shape == (T,) and result.grad_norm.shape == ()
    assert not result.losses.requires_grad
    plain = step.step(_plain_loss, _inputs(1))
    assert plain.aux is None and plain.losses.shape == (T,)
    assert step.metrics().keys() == {"balancer/critic/weights", "balancer/critic/conflicting_pairs", "balancer/critic/mean_cosine"}


def test_state_round_trip_into_a_fresh_step_continues_identically():
    a = _step(_module())
    for seed in range(3):
        a.step(_loss, _inputs(seed), has_aux=True)
    module_b = _module(seed=1)
    module_b.load_state_dict(a.module.state_dict())
    b = _step(module_b, make_balancer("pcgrad", T, seed=6))  # another seed: the loaded generator must win
    state = _saved(a)
    assert state.keys() == {"optimizer", "schedule", "balancer"}
    b.load_state_dict(state)
    for seed in range(3, 6):
        ra, rb = a.step(_loss, _inputs(seed), has_aux=True), b.step(_loss, _inputs(seed), has_aux=True)
        assert torch.equal(ra.losses, rb.losses) and torch.equal(ra.aux, rb.aux) and torch.equal(ra.grad_norm, rb.grad_norm)
    for (name, pa), pb in zip(a.module.named_parameters(), b.module.parameters()):
        assert torch.equal(pa, pb), name
    assert torch.equal(a.balancer.last_weights, b.balancer.last_weights)
    assert a.optimizer.learning_rate == b.optimizer.learning_rate


def test_loading_re_applies_the_configured_peak_learning_rate():
    a = _step(_module(), lr=1e-2)
    for seed in range(4):
        a.step(_plain_loss, _inputs(seed))
        a.optimizer.step_schedule()
    state = _saved(a)
    same = _step(_module(), lr=1e-2)
    same.load_state_dict(state)
    assert [float(g["lr"]) for g in same.optimizer.optimizer.param_groups] == [float(g["lr"]) for g in a.optimizer.optimizer.param_groups]
    changed = _step(_module(), lr=5e-3)  # a resumed run given a new rate keeps the schedule's position
    changed.load_state_dict(_saved(a))
    multiplier = 1.0 - 4 / 10  # linear, 4 of 10 updates done
    assert changed.optimizer.learning_rate == pytest.approx(5e-3 * multiplier)
    assert changed.optimizer.schedule.peak_lr == 5e-3
    changed.step(_plain_loss, _inputs(4))
    changed.optimizer.step_schedule()
    assert changed.optimizer.learning_rate == pytest.approx(5e-3 * (1.0 - 5 / 10))


def test_the_balanced_gradient_is_clipped_after_balancing_and_the_norm_before_is_reported():
    unclipped, clipped = _step(_module(), Mean(T)), _step(_module(), Mean(T), max_grad_norm=1e-3)
    ru, rc = unclipped.step(_plain_loss, _inputs(0)), clipped.step(_plain_loss, _inputs(0))
    assert torch.equal(ru.grad_norm, rc.grad_norm) and rc.grad_norm > 1e-3
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in clipped.module.parameters()]))
    assert after == pytest.approx(1e-3, rel=1e-4)
    for pu, pc in zip(unclipped.module.parameters(), clipped.module.parameters()):
        assert torch.allclose(pc.grad, pu.grad * (1e-3 / (ru.grad_norm + 1e-6)))


def test_a_negative_max_grad_norm_is_refused():
    with pytest.raises(ValueError, match="critic max_grad_norm must be a finite number >= 0"):
        BalancedStep("critic", _module(), Mean(T), _step(_module()).optimizer, max_grad_norm=-1.0)


@pytest.mark.parametrize("name", ["mean", "cagrad", "pcgrad", "famo"])
def test_a_step_never_reads_a_tensor_back_to_the_host(name, monkeypatch):
    """No ``.item()``, ``float(t)``, ``bool(t)`` or ``.tolist()`` inside a step: it can be captured as one graph."""
    step = _step(_module(), make_balancer(name, T))
    step.step(_loss, _inputs(0), has_aux=True)  # first calls may set things up

    def refuse(*args, **kwargs):
        raise AssertionError("a host read inside BalancedStep.step")

    for method in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, method, refuse)
    with pytest.raises(AssertionError, match="a host read"):
        bool(torch.ones(()))
    step.step(_loss, _inputs(1), has_aux=True)
