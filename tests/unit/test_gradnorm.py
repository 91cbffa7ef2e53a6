"""GradNorm: validation, state, determinism, renormalisation and the equalisation of gradient norms."""

from __future__ import annotations

import copy

import pytest
import torch

from mtrl.balancers import BALANCERS, GradNorm, Mean, make_balancer


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def scaled_gradients(scales: list[float], dim: int = 40, seed: int = 0) -> torch.Tensor:
    """Random unit directions times ``scales``: ``[T, dim]``."""
    grads = torch.randn(len(scales), dim, generator=torch.Generator().manual_seed(seed))
    return grads / grads.norm(dim=1, keepdim=True) * torch.tensor(scales)[:, None]


def test_registered_and_built_by_name() -> None:
    assert BALANCERS["gradnorm"] is GradNorm
    balancer = make_balancer("gradnorm", 3, seed=1, alpha=0.5, lr=0.01)
    assert isinstance(balancer, GradNorm) and (balancer.options.alpha, balancer.options.lr) == (0.5, 0.01)
    assert balancer.requires_grads and balancer.requires_losses


@pytest.mark.parametrize(
    ("num_tasks", "options", "message"),
    [
        (0, {}, r"num_tasks must be an integer >= 1, got 0"),
        (2, {"alpha": -0.5}, r"alpha must be a finite number >= 0, got -0.5"),
        (2, {"alpha": float("inf")}, r"alpha must be .* got inf"),
        (2, {"lr": 0.0}, r"lr must be a finite number > 0, got 0.0"),
        (2, {"min_weight": 0.0}, r"min_weight must be a finite number > 0, got 0.0"),
        (2, {"min_weight": 1.5}, r"min_weight must be a finite number in \(0, 1\], got 1.5"),
        (2, {"min_loss": -1.0}, r"min_loss must be a finite number > 0, got -1.0"),
    ],
)
def test_arguments_are_validated(num_tasks: int, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GradNorm(num_tasks, GradNorm.Options(**options))


def test_needs_losses() -> None:
    grads = scaled_gradients([1.0, 2.0])
    with pytest.raises(ValueError, match=r"losses of shape \[2\], got None"):
        GradNorm(2).combine(grads)
    with pytest.raises(ValueError, match=r"losses of shape \[2\], got \(3,\)"):
        GradNorm(2).weights(grads @ grads.T, torch.ones(3))


def rounding_noise(shape: tuple[int, ...], size: float, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """``1 + delta`` with ``|delta|`` uniform in ``[size / 10, size]`` and a random sign: the relative
    error another summation order (another CPU's BLAS kernel) leaves in a sum."""
    magnitude = size * (0.1 + 0.9 * torch.rand(shape, generator=generator, dtype=torch.float64))
    sign = torch.randint(0, 2, shape, generator=generator).to(torch.float64) * 2 - 1
    return (1 + sign * magnitude).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("noise", [1e-7, 1e-6])
def test_equal_tasks_give_the_mean(dtype: torch.dtype, noise: float) -> None:
    """Equal tasks keep equal weights (the mean gradient) however the rounding falls: each call's
    gradients carry fresh relative noise of ``noise`` per task, as another BLAS order would leave."""
    grads = scaled_gradients([2.0, 2.0, 2.0, 2.0]).to(dtype)
    losses = torch.full((4,), 0.7, dtype=dtype)
    gradnorm, mean = GradNorm(4), Mean(4)
    # the first call: all w_i = 1, so the same weights 1/T go through the same code as Mean's
    assert torch.equal(gradnorm.combine(grads, losses), mean.combine(grads))
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        noisy = grads * rounding_noise((4, 1), noise, gen, dtype)  # [T, D]
        direction = gradnorm.combine(noisy, losses)
        torch.testing.assert_close(direction, mean.combine(noisy), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(gradnorm.loss_weights, torch.ones(4), rtol=1e-6, atol=0)


@pytest.mark.parametrize("noise", [1e-7, 1e-6, 4e-4])
def test_rounding_noise_of_the_gramian_diagonal_leaves_equal_weights(noise: float) -> None:
    """The same through :meth:`GradNorm.weights`, the noise on the Gramian's diagonal itself, up to
    the ``4e-4`` a scalar kernel's float32 sum over 1e6 squares is off by; equal losses too."""
    grads = scaled_gradients([2.0, 2.0, 2.0, 2.0])
    gram = grads @ grads.T  # [T, T]
    losses = torch.full((4,), 0.7)
    gradnorm = GradNorm(4)
    gen = torch.Generator().manual_seed(1)
    for _ in range(50):
        noisy = gram.clone()
        noisy.diagonal().mul_(rounding_noise((4,), noise, gen, gram.dtype))
        weights = gradnorm.weights(noisy, losses * rounding_noise((4,), 1e-7, gen, losses.dtype))
        torch.testing.assert_close(weights, torch.full((4,), 0.25), rtol=1e-6, atol=0)
    torch.testing.assert_close(gradnorm.loss_weights, torch.ones(4), rtol=1e-6, atol=0)
    assert torch.count_nonzero(gradnorm.exp_avg) == 0  # no step was taken at all


def test_without_the_dead_zone_rounding_noise_moves_equal_weights() -> None:
    """The noise of the tests above is enough to move the weights of the paper's plain ``sign``
    (``dead_zone=0``): Adam's normalisation turns each rounding-level ``±1`` into a full step."""
    norms = torch.full((4,), 2.0)
    gradnorm = GradNorm(4)
    gen = torch.Generator().manual_seed(0)
    spreads = []
    for _ in range(20):
        gradnorm._step(norms * rounding_noise((4,), 1e-6, gen, norms.dtype), torch.ones(4), dead_zone=0.0)
        spreads.append((gradnorm.loss_weights.max() - gradnorm.loss_weights.min()).item())
    assert max(spreads) > 1e-2


@pytest.mark.parametrize("which", ["norm", "loss"])
def test_a_one_percent_difference_still_moves_the_weights(which: str) -> None:
    """A real difference, 1e-2 relative (7x the float32 dead zone), in one task's gradient norm or in
    its training rate moves the weights by a full step, in GradNorm's direction."""
    grads = scaled_gradients([2.0, 2.0 * 1.01, 2.0, 2.0] if which == "norm" else [2.0, 2.0, 2.0, 2.0])
    gradnorm = GradNorm(4)
    gradnorm.weights(grads @ grads.T, torch.full((4,), 0.7))  # L(0): equal
    if which == "loss":  # task 1's loss ratio 1.01x the others': it trains slower, is pushed up
        torch.testing.assert_close(gradnorm.loss_weights, torch.ones(4), rtol=1e-6, atol=0)  # no step yet
        gradnorm.weights(grads @ grads.T, torch.tensor([0.7, 0.7 * 1.01, 0.7, 0.7]))
        assert gradnorm.loss_weights[1] > 1.02
    else:  # task 1's norm 1.01x the others': it is pushed down by the first call's step
        assert gradnorm.loss_weights[1] < 0.98
    others = gradnorm.loss_weights[[0, 2, 3]]
    torch.testing.assert_close(others, others[:1].expand(3), rtol=1e-6, atol=0)  # the equal ones stay equal
    assert (others < 1.0).all() if which == "loss" else (others > 1.0).all()


def test_weights_are_renormalised_to_sum_to_the_number_of_tasks() -> None:
    grads = scaled_gradients([0.1, 1.0, 10.0])
    gradnorm = GradNorm(3, GradNorm.Options(lr=0.2))
    for step in range(50):
        losses = torch.tensor([1.0, 0.9**step, 0.8**step])
        direction = gradnorm.combine(grads, losses)
        weights = gradnorm.diagnostics()["weights"]
        torch.testing.assert_close(weights @ grads, direction)
        assert weights.sum().item() == pytest.approx(1.0, abs=1e-6)
        assert gradnorm.loss_weights.sum().item() == pytest.approx(3.0, abs=1e-5)
        assert (gradnorm.loss_weights > 0).all()


def test_first_call_stores_the_initial_losses_once() -> None:
    grads = scaled_gradients([1.0, 3.0])
    gradnorm = GradNorm(2)
    gradnorm.weights(grads @ grads.T, torch.tensor([2.0, 5.0]))
    gradnorm.weights(grads @ grads.T, torch.tensor([1.0, 1.0]))
    assert torch.equal(gradnorm.initial_losses, torch.tensor([2.0, 5.0]))
    assert bool(gradnorm.has_initial)


def test_norms_of_a_100x_larger_task_move_toward_the_other() -> None:
    """Two tasks with equal training rates, one's gradient 100x the other's: GradNorm equalises
    the weighted norms ``w_i ||g_i||`` (the balanced steps) from 100x to about 1x."""
    grads = scaled_gradients([1.0, 100.0])
    losses = torch.tensor([1.0, 100.0])  # loss 100x larger, same ratio L/L(0) throughout
    gradnorm = GradNorm(2)
    ratios = []
    for _ in range(200):
        weights = gradnorm.weights(grads @ grads.T, losses)
        weighted = weights * grads.norm(dim=1)
        ratios.append((weighted[1] / weighted[0]).item())
    assert ratios[0] == pytest.approx(100.0, rel=1e-5)
    assert all(later < earlier for earlier, later in zip(ratios[:60], ratios[1:61]))  # monotone at first
    assert max(ratios[100:]) < 1.1 and min(ratios[100:]) > 0.9  # then stays within 10% of equal norms


def test_training_two_tasks_whose_losses_differ_100x() -> None:
    """A shared linear layer fitted to two regression tasks, task 1's loss 100x task 0's: with
    GradNorm the per-task gradient norms weighted by the learned weights approach each other."""
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 8, generator=gen)
    targets = [inputs @ torch.randn(8, 4, generator=gen) for _ in range(2)]
    scales = (1.0, 100.0)
    layer = torch.nn.Linear(8, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(4, 8, generator=gen) / 8**0.5)
        layer.bias.zero_()
    params = list(layer.parameters())
    optimizer = torch.optim.SGD(params, lr=1e-4)
    gradnorm = GradNorm(2, GradNorm.Options(alpha=1.5))

    def task_gradients() -> tuple[torch.Tensor, torch.Tensor]:
        losses, grads = [], []
        for target, scale in zip(targets, scales):
            loss = scale * torch.nn.functional.mse_loss(layer(inputs), target)
            grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
            losses.append(loss.detach())
        return torch.stack(grads), torch.stack(losses)  # [2, D], [2]

    ratios = []  # G_1 / G_0: the balanced norms w_i ||g_i||
    for _ in range(200):
        grads, losses = task_gradients()
        direction = gradnorm.combine(grads, losses)  # [D]
        weighted = gradnorm.diagnostics()["weights"] * grads.norm(dim=1)  # [2]
        ratios.append((weighted[1] / weighted[0]).item())
        optimizer.zero_grad()
        for param, chunk in zip(params, direction.split([p.numel() for p in params])):
            param.grad = chunk.view_as(param).clone()
        optimizer.step()
    assert ratios[0] > 50.0  # about 100x apart at the start
    assert all(1 / 1.5 < ratio < 1.5 for ratio in ratios[-50:])  # within 1.5x over the last 50 steps
    # and settle at GradNorm's target: G_1 / G_0 = (r_1 / r_0) ** alpha (task 1 trains faster here)
    loss_ratios = losses / gradnorm.initial_losses
    target = (loss_ratios[1] / loss_ratios[0]) ** 1.5
    assert target < 0.95
    assert ratios[-1] == pytest.approx(target.item(), rel=0.05)


def test_gradient_scale_does_not_change_the_weights() -> None:
    grads = scaled_gradients([0.5, 1.0, 4.0, 20.0])
    losses = torch.tensor([1.0, 2.0, 0.5, 3.0])
    runs = []
    for scale in (1e-8, 1.0, 1e4):
        gradnorm = GradNorm(4)
        scaled = grads * scale
        runs.append(torch.stack([gradnorm.weights(scaled @ scaled.T, losses * 0.97**k) for k in range(30)]))
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(runs[2], runs[1], rtol=1e-4, atol=1e-6)


def test_slower_task_gets_a_larger_share_with_positive_alpha() -> None:
    grads = scaled_gradients([1.0, 1.0])
    gradnorm = GradNorm(2, GradNorm.Options(alpha=1.5))
    for step in range(60):  # task 0's loss stays, task 1's falls: task 0 trains slower
        gradnorm.weights(grads @ grads.T, torch.tensor([1.0, 0.95**step]))
    assert gradnorm.loss_weights[0] > gradnorm.loss_weights[1]


def test_deterministic_and_state_dict_round_trip() -> None:
    grads = scaled_gradients([1.0, 5.0, 0.2], seed=3)
    losses = torch.rand(12, 3, generator=torch.Generator().manual_seed(1)) + 0.1
    first, second = GradNorm(3), GradNorm(3)
    for row in losses[:6]:
        assert torch.equal(first.combine(grads, row), second.combine(grads, row))
    state = copy.deepcopy(first.state_dict())
    assert {"loss_weights", "exp_avg", "exp_avg_sq", "adam_steps", "initial_losses", "has_initial"} <= set(state)
    restored = GradNorm(3)
    restored.load_state_dict(state)
    for row in losses[6:]:
        assert torch.equal(first.combine(grads, row), restored.combine(grads, row))
        assert torch.equal(first.loss_weights, restored.loss_weights)


@pytest.mark.parametrize(
    "grads",
    [
        torch.zeros(3, 10),
        scaled_gradients([1.0, 0.0, 2.0]),
        scaled_gradients([1e-8, 1e-8, 1e-8]),
        scaled_gradients([1e4, 1.0, 1e-4]),
    ],
    ids=["all_zero", "one_zero", "tiny", "spread_1e8"],
)
def test_degenerate_inputs_stay_finite(grads: torch.Tensor) -> None:
    gradnorm = GradNorm(3)
    for losses in ([1.0, 2.0, 3.0], [0.0, -1.0, 2.0], [1e-12, 5.0, 1e6]):
        direction = gradnorm.combine(grads, torch.tensor(losses))
        assert torch.isfinite(direction).all() and torch.isfinite(gradnorm.loss_weights).all()
        assert gradnorm.loss_weights.sum().item() == pytest.approx(3.0, rel=1e-5)
        assert (gradnorm.loss_weights > 0).all()


def test_single_task_is_its_gradient() -> None:
    grads = torch.randn(1, 6)
    gradnorm = GradNorm(1)
    for _ in range(3):
        assert torch.equal(gradnorm.combine(grads, torch.ones(1)), grads[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_runs_without_host_sync() -> None:
    grads = scaled_gradients([1.0, 100.0, 3.0]).cuda()
    losses = torch.tensor([1.0, 2.0, 3.0]).cuda()
    gradnorm = GradNorm(3).cuda()
    expected = GradNorm(3)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = [gradnorm.combine(grads, losses) for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for direction in got:
        torch.testing.assert_close(direction.cpu(), expected.combine(grads.cpu(), losses.cpu()), rtol=1e-5, atol=1e-5)
