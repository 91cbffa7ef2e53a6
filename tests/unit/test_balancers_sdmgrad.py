"""SDMGrad: its projected stochastic update of the simplex weights against a numpy reimplementation of
the paper's Algorithm 1 (from the two batches' Jacobians, not their Gramian), the deterministic
direction-oriented problem it solves when both batches are one (against scipy's NNLS), and the second
batch the trainers give it: computed only for it, its gradients entering only the weights.

The gradient sets are those of tests/unit/test_balancers.py (random, conflicting with norms spread
100x, near-opposite pairs, low rank ``D < T``; T in {2, 10, 50}).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import nnls
from test_balancers import HARD_CASES, _single_thread, rms_norm  # noqa: F401  (autouse fixture)

from agents.ppo import MultiTaskPPO, PPOConfig
from agents.sac import MultiTaskSAC, SACConfig
from launch.config import BalancerConfig
from mtrl.balancers import SDMGrad, balancer_takes, make_balancer
from mtrl.balancers.sdmgrad import project_to_simplex
from mtrl.balancers.testing import check_balancer
from mtrl.gradients import balanced_gradients, per_task_gradients, module_task_loss
from mtrl.nn import MultiTaskMLP
from mtrl.replay import MultiTaskReplay
from mtrl.rollout import Rollout

LAM = 0.6


# ---------------------------------------------------------------------------------------------
# references (numpy, scipy)


def projection_reference(v: np.ndarray) -> np.ndarray:
    """Projection onto the simplex by Duchi et al. (ICML 2008), Figure 1: the sorted-threshold rule, in numpy."""
    u = np.sort(v)[::-1]
    cumulative = np.cumsum(u)
    rho = np.nonzero(u * np.arange(1, len(v) + 1) > cumulative - 1.0)[0][-1]
    theta = (cumulative[rho] - 1.0) / (rho + 1)
    return np.maximum(v - theta, 0.0)


def algorithm_reference(
    first: np.ndarray, second: np.ndarray, w: np.ndarray, lam: float, step: float, momentum: float, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Algorithm 1's inner loop from the Jacobians ``first``, ``second`` (``[T, D]``, batches zeta and zeta').

    ``w <- P(w - step * v)``, ``v <- momentum v + G(zeta) (G(zeta')^T w + lam g0(zeta'))`` (the
    authors' heavy ball; momentum 0: the paper's plain step), on gradients divided by the mean
    ``sqrt(|<g_i(zeta), g_i(zeta')>|)``. Returns the new ``w`` and the weights over ``first``'s rows.
    """
    scale = np.mean(np.sqrt(np.abs(np.einsum("td,td->t", first, second))))
    first, second = first / scale, second / scale
    velocity = np.zeros_like(w)
    for _ in range(steps):
        velocity = momentum * velocity + first @ (second.T @ w + lam * second.mean(0))
        w = projection_reference(w - step * velocity)
    return w, (w + lam / len(w)) / (1.0 + lam)


def deterministic_reference(grads: np.ndarray, lam: float, penalty: float = 1e4) -> np.ndarray:
    """``argmin_{w in simplex} 1/2 ||w @ G + lam g0||^2`` by NNLS, the constraint ``sum(w) = 1`` a stiff row."""
    num_tasks = grads.shape[0]
    scale = rms_norm(grads)
    matrix = np.vstack([grads.T / scale, penalty * np.ones((1, num_tasks))])
    target = np.concatenate([-lam * grads.mean(0) / scale, [penalty]])
    w, _ = nnls(matrix, target, maxiter=50 * num_tasks)
    return w / w.sum()


def objective(w: np.ndarray, grads: np.ndarray, lam: float) -> float:
    """``1/2 ||w @ G + lam g0||^2`` in units of the squared root-mean-square gradient norm."""
    u = w @ grads + lam * grads.mean(0)
    return 0.5 * float(u @ u) / rms_norm(grads) ** 2


# ---------------------------------------------------------------------------------------------
# the balancer


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.floats(-1e3, 1e3, allow_subnormal=False), min_size=1, max_size=12),
)
def test_the_device_projection_is_duchis(values: list[float]) -> None:
    v = np.array(values)
    got = project_to_simplex(torch.from_numpy(v)).numpy()
    np.testing.assert_allclose(got, projection_reference(v), atol=1e-12 * max(1.0, np.abs(v).max()))
    assert got.min() >= 0.0 and abs(got.sum() - 1.0) <= 1e-12 * max(1.0, np.abs(v).max())


@pytest.mark.parametrize(("momentum", "step"), [(0.5, 10.0), (0.0, 0.05)], ids=["authors", "paper"])
@pytest.mark.parametrize("num_tasks", [2, 10, 50])
def test_each_update_is_algorithm_1s_inner_loop_from_two_batches(momentum: float, step: float, num_tasks: int) -> None:
    rng = np.random.default_rng(num_tasks)
    mean = rng.standard_normal((num_tasks, 30)) * np.geomspace(0.1, 10.0, num_tasks)[:, None]  # [T, D]
    balancer = SDMGrad(num_tasks, SDMGrad.Options(lam=LAM, step_size=step, momentum=momentum, inner_steps=7))
    w = np.full(num_tasks, 1.0 / num_tasks)
    for _ in range(3):  # the weights carry over from one update to the next
        first, second = (mean + 2.0 * rng.standard_normal(mean.shape) for _ in range(2))  # two noisy batches
        got = balancer.weights(torch.from_numpy(first @ second.T)).numpy()
        w, expected = algorithm_reference(first, second, w, LAM, step, momentum, 7)
        np.testing.assert_allclose(balancer.simplex_weights.numpy(), w, atol=1e-10)
        np.testing.assert_allclose(got, expected, atol=1e-10)
        assert abs(got.sum() - 1.0) < 1e-12  # the mean-gradient scale


#: Inner steps for the deterministic problem: the projected gradient method is slow on the
#: ill-conditioned, conflicting sets (a first-order method; the paper's analysis is for few steps).
DETERMINISTIC_STEPS = {"conflicting50": 20_000, "near_opposite50": 20_000, "low_rank50": 5_000}


@pytest.mark.parametrize("case", list(HARD_CASES))
def test_with_one_batch_twice_it_solves_the_deterministic_direction_oriented_problem(case: str) -> None:
    grads = HARD_CASES[case](11)
    num_tasks = grads.shape[0]
    gram = grads @ grads.T
    normalised = gram / np.mean(np.sqrt(gram.diagonal())) ** 2
    step = 1.0 / np.linalg.eigvalsh(normalised).max()  # 1/L on the normalised problem: a descent method
    options = SDMGrad.Options(lam=LAM, step_size=step, momentum=0.9, inner_steps=DETERMINISTIC_STEPS.get(case, 3_000))
    balancer = SDMGrad(num_tasks, options)
    weights = balancer.weights(torch.from_numpy(gram)).numpy()
    w = balancer.simplex_weights.numpy()
    reference = deterministic_reference(grads, LAM)
    rms = rms_norm(grads)
    # the objective is 1-strongly convex in u = w @ G + lam g0: a gap of 5e-9 rms^2 bounds the error
    # of u by 1e-4 rms (the near-opposite set is the slowest to get there)
    assert objective(w, grads, LAM) <= objective(reference, grads, LAM) + 5e-9
    direction, expected = weights @ grads, (reference @ grads + LAM * grads.mean(0)) / (1.0 + LAM)
    assert np.linalg.norm(direction - expected) <= 1e-3 * np.linalg.norm(expected) + 1e-4 * rms
    # the dual's optimality condition: no task improves less along u than the combination w @ G does
    u = w @ grads + LAM * grads.mean(0)
    assert (w @ grads) @ u - (grads @ u).min() <= 1e-6 * rms**2


def test_lambda_moves_the_direction_from_mgda_to_the_mean() -> None:
    grads = HARD_CASES["gaussian10"](3)
    gram = torch.from_numpy(grads @ grads.T)
    mean = grads.mean(0)
    far = SDMGrad(10, SDMGrad.Options(lam=1e6)).weights(gram).numpy() @ grads
    assert np.linalg.norm(far - mean) <= 1e-5 * np.linalg.norm(mean)
    step = 1.0 / np.linalg.eigvalsh(grads @ grads.T / np.mean(np.linalg.norm(grads, axis=1)) ** 2).max()
    mgda = SDMGrad(10, SDMGrad.Options(lam=0.0, step_size=step, momentum=0.9, inner_steps=3_000)).weights(gram).numpy()
    expected = deterministic_reference(grads, 0.0)  # the min-norm point of the convex hull
    np.testing.assert_allclose(mgda @ grads, expected @ grads, atol=1e-6 * rms_norm(grads))


def test_a_cross_gramian_with_a_negative_diagonal_gives_finite_weights_on_the_simplex() -> None:
    cross = torch.tensor([[-1e-9, 2.0, 0.0], [1.0, -3.0, 0.5], [0.0, 0.0, 0.0]], dtype=torch.float64)
    for gram in (cross, torch.zeros(3, 3, dtype=torch.float64), 1e-300 * cross):
        balancer = SDMGrad(3)
        weights = balancer.weights(gram)
        assert torch.isfinite(weights).all() and abs(float(weights.sum()) - 1.0) < 1e-12
        assert (balancer.simplex_weights >= 0).all()


def test_the_test_kit_passes_and_the_weights_are_checkpointed() -> None:
    check_balancer(SDMGrad)
    stepped = SDMGrad(4)
    grads = torch.randn(4, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    stepped.weights(grads @ grads.T)
    restored = SDMGrad(4)
    restored.load_state_dict(stepped.state_dict())
    assert torch.equal(restored.simplex_weights, stepped.simplex_weights)
    assert not torch.equal(restored.simplex_weights, SDMGrad(4).simplex_weights)


def test_options_are_run_options_and_bad_ones_name_the_field() -> None:
    assert balancer_takes("sdmgrad") == ("lam", "step_size", "momentum", "inner_steps", "compile_solver")
    assert make_balancer("sdmgrad", 3, lam=0.3).options.lam == 0.3
    for field, value, allowed in [("lam", -1.0, ">= 0"), ("step_size", 0.0, "> 0"), ("momentum", 1.0, r"\[0, 1\)"), ("inner_steps", 0, ">= 1")]:
        with pytest.raises(ValueError, match=f"{field} must be .*{allowed}.*got {value!r}"):
            SDMGrad.Options(**{field: value})


def test_the_run_config_takes_its_options_and_checks_them() -> None:
    config = BalancerConfig(name="sdmgrad", lam=0.2, inner_steps=5)
    config.check(3, ["lam", "inner_steps"])
    assert config.options() == SDMGrad.Options(lam=0.2, inner_steps=5)
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\), got 1.0"):
        BalancerConfig(name="sdmgrad", momentum=1.0).check(3, ["momentum"])
    with pytest.raises(ValueError, match="--balancer.lam is not an option of balancer 'cagrad'"):
        BalancerConfig(name="cagrad").check(3, ["lam"])


# ---------------------------------------------------------------------------------------------
# the second batch

T, B, IN, OUT = 3, 6, 4, 2


def _loss(forward, x, y):
    prediction = forward(x)  # [B, OUT]
    return (prediction - y).pow(2).mean(), prediction.mean()


def _data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, B, IN, generator=g), torch.randn(T, B, OUT, generator=g)


class CrossSpy(SDMGrad):
    """SDMGrad that keeps the matrix its weights were computed from."""

    def weights(self, gram, losses=None):
        self.seen = gram.clone()
        return super().weights(gram, losses)


def test_the_second_batch_enters_only_the_weights() -> None:
    torch.manual_seed(0)
    module = MultiTaskMLP(IN, (8,), OUT, T)
    first, second = _data(0), _data(1)
    balancer = CrossSpy(T)
    result = balanced_gradients(module, _loss, first, balancer, has_aux=True, second_inputs=second)
    task_loss = module_task_loss(module, _loss)
    g1 = per_task_gradients(task_loss, module.shared_parameters(), module.task_parameters(), first, has_aux=True)
    g2 = per_task_gradients(task_loss, module.shared_parameters(), module.task_parameters(), second, has_aux=True)
    torch.testing.assert_close(balancer.seen, g1.shared @ g2.shared.T)  # the cross Gramian G1 G2^T
    weights = SDMGrad(T).weights(g1.shared @ g2.shared.T)
    direction = torch.cat([result.grads[name].reshape(-1) for name in module.shared_parameters()])
    torch.testing.assert_close(direction, weights @ g1.shared)  # the direction is the first batch's
    for name, grad in g1.task.items():
        torch.testing.assert_close(result.grads[name], grad)
    torch.testing.assert_close(result.losses, g1.losses)
    torch.testing.assert_close(balancer.last_mean_cosine, _mean_cosine(g1.shared))  # diagnostics: the first batch's


def _mean_cosine(grads: torch.Tensor) -> torch.Tensor:
    unit = grads / grads.norm(dim=1, keepdim=True)
    cosine = unit @ unit.T
    return cosine[torch.triu_indices(T, T, 1).unbind()].mean()


def test_other_balancers_ignore_a_second_batch() -> None:
    torch.manual_seed(0)
    module = MultiTaskMLP(IN, (8,), OUT, T)
    with_second = balanced_gradients(module, _loss, _data(0), make_balancer("cagrad", T), has_aux=True, second_inputs=_data(1))
    without = balanced_gradients(module, _loss, _data(0), make_balancer("cagrad", T), has_aux=True)
    for name, grad in without.grads.items():
        assert torch.equal(with_second.grads[name], grad), name


OBS, ACT = 5, 2
BOX = np.ones(ACT, dtype=np.float32)


def _sac(name: str) -> MultiTaskSAC:
    torch.manual_seed(0)
    config = SACConfig(hidden_dims=(16,), compile_gradients=False)
    balancers = {network: (CrossSpy(T) if name == "spy" else make_balancer(name, T)) for network in MultiTaskSAC.BALANCED_NETWORKS}
    return MultiTaskSAC(OBS, -BOX, BOX, T, config, balancers, seed=0)


def _replay() -> MultiTaskReplay:
    replay = MultiTaskReplay(T, 64, OBS, ACT)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        replay.add(torch.randn(T, 2, OBS, generator=g), torch.rand(T, 2, ACT, generator=g) * 2 - 1, torch.randn(T, 2, generator=g),
                   torch.randn(T, 2, OBS, generator=g), torch.zeros(T, 2))
    return replay


@pytest.mark.parametrize("name", ["sdmgrad", "cagrad", "mean", "famo"])
def test_the_sac_update_draws_a_second_batch_only_for_sdmgrad(name: str) -> None:
    agent, replay = _sac(name), _replay()
    sampler, reference = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    batch, second = agent.sample_batches(replay, B, sampler)
    expected = replay.sample(B, reference)
    assert torch.equal(batch.obs, expected.obs)  # the first batch is the one every balancer gets
    if name == "sdmgrad":
        assert agent.needs_second_batch
        assert torch.equal(second.obs, replay.sample(B, reference).obs)
    else:
        assert not agent.needs_second_batch and second is None
    assert torch.equal(sampler.get_state(), reference.get_state())  # nothing else was drawn
    noise = agent.generator.get_state()
    agent.update(batch, second)
    draws = agent.generator.get_state()
    other = _sac(name)
    other.generator.set_state(noise)
    other.update(batch)
    assert torch.equal(draws, other.generator.get_state()) == (name != "sdmgrad")  # sdmgrad: the second batch's noise


def test_sac_gives_both_networks_balancers_the_cross_gramian() -> None:
    agent, replay = _sac("spy"), _replay()
    batch, second = agent.sample_batches(replay, B, torch.Generator().manual_seed(1))
    agent.update(batch, second)
    for step in agent.balanced_steps.values():
        seen = step.balancer.seen
        assert not torch.allclose(seen, seen.T)  # two batches: a cross Gramian, not a Gramian
    agent.update(batch)  # without a second batch: the first one twice
    for step in agent.balanced_steps.values():
        torch.testing.assert_close(step.balancer.seen, step.balancer.seen.T)


def _rollout(agent: MultiTaskPPO, steps: int) -> Rollout:
    g = torch.Generator().manual_seed(0)
    collector = agent.collector(2)
    zeros = torch.zeros(T, 2)
    for step in range(steps):
        collector.act(torch.randn(T, 2, OBS, generator=g))
        truncated = torch.full((T, 2), float(step == steps - 1))
        collector.record(reward=torch.randn(T, 2, generator=g), terminated=zeros, truncated=truncated, final_obs=torch.randn(T, 2, OBS, generator=g))
    return collector.finish(torch.randn(T, 2, OBS, generator=g))


def test_ppo_gives_sdmgrad_the_next_minibatch_and_draws_nothing_more(monkeypatch) -> None:
    config = PPOConfig(hidden_dims=(8,), rollout_steps=4, epochs=2, minibatches=2, compile_gradients=False)
    agents = {}
    for name in ("spy", "cagrad"):
        torch.manual_seed(0)
        balancers = {network: (CrossSpy(T) if name == "spy" else make_balancer(name, T)) for network in MultiTaskPPO.BALANCED_NETWORKS}
        agents[name] = MultiTaskPPO(OBS, -BOX, BOX, T, config, balancers, seed=0)
    pairs = []
    original = MultiTaskPPO._update_minibatch

    def recording(self, minibatch, second=None):
        pairs.append((minibatch["obs"], None if second is None else second["obs"]))
        return original(self, minibatch, second)

    monkeypatch.setattr(MultiTaskPPO, "_update_minibatch", recording)
    agents["spy"].update(_rollout(agents["spy"], 4))
    assert len(pairs) == 4
    for epoch in range(2):  # in each epoch: the second of minibatch k is minibatch k + 1, cyclically
        first, following = pairs[2 * epoch], pairs[2 * epoch + 1]
        assert torch.equal(first[1], following[0]) and torch.equal(following[1], first[0])
    for step in agents["spy"].balanced_steps.values():
        assert not torch.allclose(step.balancer.seen, step.balancer.seen.T)
    pairs.clear()
    agents["cagrad"].update(_rollout(agents["cagrad"], 4))
    assert all(second is None for _, second in pairs)
    assert torch.equal(agents["spy"].generator.get_state(), agents["cagrad"].generator.get_state())


@pytest.mark.slow
def test_a_compiled_sac_update_with_two_batches_agrees_with_the_eager_one(monkeypatch) -> None:
    """The whole SAC update traced by dynamo (run by aot_eager, as tests/unit/test_whole_update.py does), second batch included."""
    from test_whole_update import _aot_eager, _close

    graphs: list = []
    monkeypatch.setattr("agents.base.compile_static", _aot_eager(graphs))
    agents = {}
    for mode in ("off", "compiled"):
        torch.manual_seed(0)
        config = SACConfig(hidden_dims=(16,), compile_gradients=False, update_graph=mode, actor_update_frequency=2)
        balancers = {network: make_balancer("sdmgrad", T) for network in MultiTaskSAC.BALANCED_NETWORKS}
        agents[mode] = MultiTaskSAC(OBS, -BOX, BOX, T, config, balancers, seed=0)
    replay = _replay()
    sampler = torch.Generator().manual_seed(2)
    for _ in range(3):
        batch, second = agents["off"].sample_batches(replay, B, sampler)
        expected, metrics = agents["off"].update(batch, second), agents["compiled"].update(batch, second)
        for key, value in expected.items():
            assert _close(metrics[key], value), key
    assert graphs
    for network, step in agents["off"].balanced_steps.items():
        other = agents["compiled"].balanced_steps[network].balancer.simplex_weights
        torch.testing.assert_close(other, step.balancer.simplex_weights, atol=1e-6, rtol=1e-5)
    for a, b in zip(agents["off"].state_dict().values(), agents["compiled"].state_dict().values()):
        assert _close(a, b)


@pytest.mark.slow
def test_the_compiled_inner_steps_match_the_eager_ones() -> None:
    rng = np.random.default_rng(4)
    first, second = rng.standard_normal((6, 30)), rng.standard_normal((6, 30))
    cross = torch.from_numpy(first @ second.T)
    eager, compiled = SDMGrad(6), SDMGrad(6, compile_solver=True)
    for _ in range(2):
        torch.testing.assert_close(compiled.weights(cross), eager.weights(cross), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(compiled.simplex_weights, eager.simplex_weights, rtol=1e-9, atol=1e-12)
