"""The categorical value (mtrl.categorical) against the C51 paper's projection, written out as its Algorithm 1."""

from __future__ import annotations

import math

import pytest
import torch

from mtrl.categorical import CategoricalSupport, check_support

K, V_MIN, V_MAX = 11, -2.0, 3.0


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def c51_algorithm_1(probs: torch.Tensor, values: torch.Tensor, v_min: float, v_max: float, num_bins: int) -> torch.Tensor:
    """Bellemare, Dabney & Munos 2017, Algorithm 1, one sample at a time (``probs``, ``values``: ``[J]``)."""
    dz = (v_max - v_min) / (num_bins - 1)
    m = [0.0] * num_bins
    for p, tz in zip(probs.tolist(), values.tolist()):
        tz = min(max(tz, v_min), v_max)
        b = (tz - v_min) / dz
        lower, upper = math.floor(b), math.ceil(b)
        if lower == upper:  # b on an atom: all of p goes there
            m[lower] += p
        else:
            m[lower] += p * (upper - b)
            m[upper] += p * (b - lower)
    return torch.tensor(m)


def test_the_support_is_evenly_spaced_and_the_mean_is_the_expectation_of_the_softmax():
    support = CategoricalSupport(K, V_MIN, V_MAX)
    assert torch.allclose(support.atoms, torch.tensor([V_MIN + i * 0.5 for i in range(K)]))
    assert support.bin_width == 0.5
    logits = torch.randn(4, 5, K)
    expected = (torch.softmax(logits, -1) * support.atoms).sum(-1)
    torch.testing.assert_close(support.mean(logits), expected)
    assert "atoms" not in support.state_dict()  # derived from the config, not checkpointed


def test_the_projection_is_the_papers_algorithm_1():
    support = CategoricalSupport(K, V_MIN, V_MAX)
    probs = torch.softmax(torch.randn(64, K), -1)  # [N, J]
    values = torch.randn(64, K) * 3  # [N, J]: many beyond the support, some exactly on atoms or its ends
    values[0] = support.atoms  # every source atom on an atom
    values[1, :3] = torch.tensor([V_MIN, V_MAX, V_MAX + 5.0])
    projected = support.project(probs, values)
    reference = torch.stack([c51_algorithm_1(p, v, V_MIN, V_MAX, K) for p, v in zip(probs, values)])
    torch.testing.assert_close(projected, reference, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(projected[0], probs[0])  # atoms that land on atoms keep their mass


def test_the_projected_target_is_a_distribution_whose_mean_is_the_clipped_bellman_target():
    support = CategoricalSupport(K, V_MIN, V_MAX)
    T, B = 3, 200
    next_probs = torch.softmax(torch.randn(T, B, K), -1)  # [T, B, K]
    reward = torch.randn(T, B) * 2  # some targets far beyond either end
    continuation = 0.9 * (torch.rand(T, B) > 0.2).float()  # gamma * (1 - done)
    penalty = torch.randn(T, B) * 0.3  # alpha * log pi
    target = support.bellman_target(next_probs, reward, continuation, penalty)  # [T, B, K]
    assert target.shape == (T, B, K) and (target >= 0).all()
    torch.testing.assert_close(target.sum(-1), torch.ones(T, B))
    # the mean is exactly the mean of the clipped shifted atoms ...
    shifted = reward[..., None] + continuation[..., None] * (support.atoms - penalty[..., None])
    torch.testing.assert_close((target * support.atoms).sum(-1), (next_probs * shifted.clamp(V_MIN, V_MAX)).sum(-1))
    # ... so where the whole shifted support lies inside [v_min, v_max] it is the scalar soft Bellman target
    scalar = reward + continuation * ((next_probs * support.atoms).sum(-1) - penalty)  # [T, B]
    inside = (shifted.min(-1).values >= V_MIN) & (shifted.max(-1).values <= V_MAX)
    assert inside.sum() > 10 and (~inside).sum() > 10
    torch.testing.assert_close((target * support.atoms).sum(-1)[inside], scalar[inside], atol=1e-5, rtol=1e-5)
    # a point mass moves to the scalar target clipped to the support
    point = torch.zeros(T, B, K)
    point[..., 4] = 1.0
    target = support.bellman_target(point, reward, continuation, penalty)
    scalar = (reward + continuation * (support.atoms[4] - penalty)).clamp(V_MIN, V_MAX)
    torch.testing.assert_close((target * support.atoms).sum(-1), scalar, atol=1e-5, rtol=1e-5)
    assert ((target > 0).sum(-1) <= 2).all()  # on the two atoms around it


def test_the_cross_entropy_is_that_of_the_softmax_and_is_least_at_the_target():
    support = CategoricalSupport(K, V_MIN, V_MAX)
    target = torch.softmax(torch.randn(5, K), -1)
    logits = torch.randn(5, K, requires_grad=True)
    loss = support.cross_entropy(logits, target)
    torch.testing.assert_close(loss, -(target * torch.log_softmax(logits, -1)).sum(-1))
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    torch.testing.assert_close(grad, torch.softmax(logits, -1) - target)  # zero where softmax(logits) = target


@pytest.mark.parametrize(
    ("num_bins", "v_min", "v_max", "message"),
    [
        (1, -1.0, 1.0, r"^sac\.num_bins must be an integer >= 2, got 1$"),
        (101, 1.0, 1.0, r"^sac\.v_min must be < sac\.v_max, got v_min=1\.0, v_max=1\.0$"),
        (101, 2.0, -2.0, r"^sac\.v_min must be < sac\.v_max"),
    ],
)
def test_a_support_without_two_atoms_or_with_min_not_below_max_is_refused(num_bins, v_min, v_max, message):
    with pytest.raises(ValueError, match=message):
        check_support("sac.", num_bins, v_min, v_max)
    with pytest.raises(ValueError):
        CategoricalSupport(num_bins, v_min, v_max)
