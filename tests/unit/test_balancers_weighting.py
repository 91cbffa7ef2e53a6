"""FairGrad, GradVac, uncertainty weighting, DWA, RLW and DB-MTL: each method's defining equation
against an independent reference, its state through ``state_dict``, and its option checks.

The references: scipy's trust-region Newton and root solvers for FairGrad's equation, numpy
implementations of GradVac's Algorithm 1, DWA's epoch ratios and DB-MTL's update on explicit
gradients, torch's autograd and ``torch.optim.Adam`` on the uncertainty-weighting objective, and
TorchJD's FairGrad and GradVac where TorchJD is installed. The generic tests of every registered
balancer are in ``test_balancers.py``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import minimize, root

from launch.train import main as train_main
from mtrl.balancers import DBMTL, DWA, RLW, FairGrad, GradVac, NashMTL, PCGrad, UncertaintyWeighting, make_balancer
from mtrl.balancers.adam import adam_step
from mtrl.balancers.base import Balancer
from mtrl.balancers.fairgrad import _FLOOR, _RIDGE, alpha_fair_weights
from mtrl.balancers.pcgrad import other_tasks_shuffled
from test_balancers import HARD_CASES, conflicting, gaussian, low_rank, near_opposite  # tests/unit/test_balancers.py

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """T x T problems: intra-op threads only add overhead (see test_balancers.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def direction(balancer: Balancer, grads: np.ndarray, losses: np.ndarray | None = None) -> np.ndarray:
    return balancer.combine(torch.from_numpy(grads), None if losses is None else torch.from_numpy(losses)).numpy()


def round_trip(balancer: Balancer, fresh: Balancer) -> Balancer:
    """``fresh`` with ``balancer``'s state loaded (a deep copy, as a checkpoint would hold)."""
    fresh.load_state_dict(copy.deepcopy(balancer.state_dict()))
    return fresh


#: Small gradient sets with zeros, duplicates, D < T and spreads of 1e5: entries 0 or of magnitude in
#: [1e-2, 1e3] (no squared norm underflows, as it would for test_balancers.py's entries of 1e-158).
small_gradients = st.integers(2, 6).flatmap(
    lambda tasks: st.integers(1, 5).flatmap(
        lambda dim: arrays(
            np.float64, (tasks, dim), elements=st.floats(-1e3, 1e3, allow_subnormal=False).map(lambda x: 0.0 if abs(x) < 1e-2 else x)
        )
    )
)


@pytest.mark.parametrize(
    ("cls", "options", "message"),
    [
        (FairGrad, {"fairness": 0.05}, r"^fairness must be a number in \[0.1, 10.0\], got 0.05$"),
        (FairGrad, {"fairness": 11}, r"fairness .* got 11$"),
        (FairGrad, {"fairness": True}, r"fairness .* got True$"),
        (FairGrad, {"max_iter": 0}, r"^max_iter must be an integer >= 1, got 0$"),
        (GradVac, {"beta": -0.1}, r"^beta must be a number in \[0, 1\], got -0.1$"),
        (GradVac, {"beta": float("nan")}, r"beta .* got nan$"),
        (UncertaintyWeighting, {"log_var_lr": 0.0}, r"^log_var_lr must be a finite number > 0, got 0.0$"),
        (UncertaintyWeighting, {"min_loss": -1.0}, r"^min_loss must be a finite number > 0, got -1.0$"),
        (DWA, {"temperature": -1.0}, r"^temperature must be a finite number > 0, got -1.0$"),
        (DWA, {"window": 0}, r"^window must be an integer >= 1, got 0$"),
        (DWA, {"window": 2.5}, r"window .* got 2.5$"),
        (DBMTL, {"norm_decay": 1.0}, r"^norm_decay must be a number in \[0, 1\), got 1.0$"),
        (DBMTL, {"min_loss": 0.0}, r"^min_loss must be a finite number > 0, got 0.0$"),
    ],
)
def test_options_are_checked(cls: type[Balancer], options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls.Options(**options)


@pytest.mark.parametrize(
    ("option", "message"),
    [(["--balancer.fairness", "20"], "fairness must be a number in [0.1, 10.0], got 20.0"), (["--balancer.window", "0"], "window must be an integer >= 1, got 0")],
)
def test_the_command_line_refuses_an_option_out_of_range_in_one_line(option: list[str], message: str, tmp_path, capsys) -> None:
    name = "fairgrad" if "fairness" in option[0] else "dwa"
    run_dir = tmp_path / "run"
    assert train_main(["smoke", "--run-dir", str(run_dir), "--balancer.name", name, *option]) == 2
    assert capsys.readouterr().err.strip() == f"mtrl-train: error: {message}"
    assert not run_dir.exists()


def test_what_each_method_needs_and_how_it_is_registered() -> None:
    gradient = {"fairgrad": FairGrad, "gradvac": GradVac, "dbmtl": DBMTL}
    loss_weighting = {"uw": UncertaintyWeighting, "dwa": DWA, "rlw": RLW}
    for name, cls in (gradient | loss_weighting).items():
        balancer = make_balancer(name, 3, seed=2)
        assert type(balancer) is cls and balancer.requires_grads == (name in gradient)
    assert [name for name in (gradient | loss_weighting) if make_balancer(name, 3).requires_losses] == ["dbmtl", "uw", "dwa"]
    assert make_balancer("gradvac", 3, seed=7).seed == 7 and make_balancer("rlw", 3, seed=8).seed == 8
    assert FairGrad(3).compiles_well and GradVac(3).compiles_well and DBMTL(3).compiles_well  # measured: docs/benchmarks.md
    assert not any(make_balancer(name, 3).compiles_well for name in loss_weighting)  # the loss-weighted path


def test_adam_step_is_torchs_adam() -> None:
    grads = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    param, exp_avg, exp_avg_sq, steps = torch.zeros(4), torch.zeros(4), torch.zeros(4), torch.zeros(())
    reference = torch.zeros(4, requires_grad=True)
    adam = torch.optim.Adam([reference], lr=0.05)
    for grad in grads:
        adam_step(param, grad, exp_avg, exp_avg_sq, steps, 0.05)
        reference.grad = grad.clone()
        adam.step()
        torch.testing.assert_close(param, reference.detach())
    assert steps.item() == 6


# ---------------------------------------------------------------------------------------------
# FairGrad


def fairgrad_matrix(grads: np.ndarray) -> np.ndarray:
    """The solver's matrix: the Gramian over its mean diagonal, with the ridges on the diagonal."""
    gram = grads @ grads.T
    normalised = gram / gram.diagonal().mean()
    return normalised + np.diag(_RIDGE * normalised.diagonal() + _FLOOR)


def backward_error(matrix: np.ndarray, weights: np.ndarray, alpha: float, among: np.ndarray | None = None) -> float:
    """``max_i |(M w)_i - w_i ** (-1/alpha)| / ((|M| w)_i + w_i ** (-1/alpha))``: the residual relative to the
    size of the terms it is the difference of (float64 rounding gives about 1e-16), over the tasks
    ``among`` (a mask; all by default)."""
    target = weights ** (-1.0 / alpha)
    errors = np.abs(matrix @ weights - target) / (np.abs(matrix) @ weights + target)
    return float(errors[among].max() if among is not None else errors.max())


def fairgrad_reference(matrix: np.ndarray, alpha: float) -> np.ndarray:
    """The root of ``M w = w ** (-1/alpha)`` by scipy: trust-region Newton (``trust-exact``) on the convex
    ``f(w) = w^T M w / 2 - sum h(w)`` in ``u = log w`` from ``w = 1/T``, then a ``root`` polish of
    ``(M w) * w ** (1/alpha) = 1``. (The authors' ``least_squares`` on the residual, LibMTL's solver too,
    stops short of the root on some of these cases: 7e-3 relative on the conflicting T = 50 gradients
    at alpha = 10.)"""
    power = 1.0 / alpha
    exponent = 1.0 - power
    h = np.log if exponent == 0 else (lambda w: w**exponent / exponent)

    def objective(u: np.ndarray) -> float:
        w = np.exp(u)
        return 0.5 * w @ matrix @ w - h(w).sum()

    def gradient(u: np.ndarray) -> np.ndarray:
        w = np.exp(u)
        return w * (matrix @ w) - w**exponent

    def hessian(u: np.ndarray) -> np.ndarray:
        w = np.exp(u)
        return w[:, None] * matrix * w[None, :] + np.diag(w * (matrix @ w) - exponent * w**exponent)

    def scaled_residual(u: np.ndarray) -> np.ndarray:
        return (matrix @ np.exp(u)) * np.exp(power * u) - 1.0

    def scaled_jacobian(u: np.ndarray) -> np.ndarray:
        w, lift = np.exp(u), np.exp(power * u)
        return matrix * w[None, :] * lift[:, None] + np.diag(power * (matrix @ w) * lift)

    start = np.full(len(matrix), -np.log(len(matrix)))
    coarse = minimize(objective, start, jac=gradient, hess=hessian, method="trust-exact", options={"gtol": 1e-14})
    result = root(scaled_residual, coarse.x, jac=scaled_jacobian, method="hybr")
    weights = np.exp(result.x)
    assert backward_error(matrix, weights, alpha) < 1e-9, result.message
    return weights


@pytest.mark.parametrize(
    ("case", "alpha"),
    [(case, 2.0) for case in HARD_CASES] + [("gaussian10", 0.5), ("gaussian10", 1.0), ("gaussian50", 0.1), ("low_rank50", 0.1), ("conflicting50", 10.0), ("low_rank50", 10.0)],
)
def test_fairgrad_solves_its_equation(case: str, alpha: float) -> None:
    """``(G G^T) w = w ** (-1/alpha)`` on the normalised Gramian (plus the ridge) to float64 rounding, and
    the same root as scipy's where the root is well conditioned (not for rank-deficient ``G``, whose
    Gramian is singular but for the ridge: there scipy's solvers stop far from the root)."""
    grads = HARD_CASES[case](21)
    matrix = fairgrad_matrix(grads)
    solution = alpha_fair_weights(torch.from_numpy(grads @ grads.T), alpha).numpy()
    assert (solution > 0).all() and backward_error(matrix, solution, alpha) <= 1e-14
    if not case.startswith("low_rank"):
        np.testing.assert_allclose(solution, fairgrad_reference(matrix, alpha), rtol=1e-6)
    # the balancer's weights: the solution scaled so that sum_i w_i ||g_i|| = mean_i ||g_i||
    weights = FairGrad(len(grads), FairGrad.Options(fairness=alpha)).weights(torch.from_numpy(grads @ grads.T)).numpy()
    norms = np.linalg.norm(grads, axis=1)
    np.testing.assert_allclose(weights, solution * norms.mean() / (solution @ norms), rtol=1e-12)


def test_fairgrad_orthogonal_gradients_have_the_closed_form() -> None:
    """Orthogonal gradients: ``M_ii w_i = w_i ** (-1/alpha)``, so ``w_i = M_ii ** (-alpha / (alpha + 1))``
    (``M_ii = ||g_i||^2 / mean_j ||g_j||^2`` up to the ridges: ``w_i ~ ||g_i|| ** (-2 alpha / (alpha + 1))``)."""
    norms = np.array([0.5, 1.0, 3.0, 20.0])
    grads = np.diag(norms)
    diagonal = norms**2 / (norms**2).mean() * (1 + _RIDGE) + _FLOOR
    for alpha in (0.5, 1.0, 2.0, 5.0):
        weights = direction(FairGrad(4, FairGrad.Options(fairness=alpha)), grads) / norms  # the weights: G is diagonal
        expected = diagonal ** (-alpha / (alpha + 1))
        np.testing.assert_allclose(weights, expected * norms.mean() / (expected @ norms), rtol=1e-12)


@pytest.mark.parametrize("case", ["gaussian10", "conflicting50", "near_opposite50"])
def test_fairgrad_with_alpha_one_is_nash_mtl(case: str) -> None:
    """alpha = 1 is Nash-MTL's equation ``K w = 1 / w``, solved there on the cosine matrix (per-task
    scale invariance) with the same relative ridge; both scale the weights the same way."""
    grads = torch.from_numpy(HARD_CASES[case](22))
    fair = FairGrad(grads.shape[0], FairGrad.Options(fairness=1.0)).combine(grads)
    nash = NashMTL(grads.shape[0]).combine(grads)
    assert (fair - nash).norm() <= 1e-6 * nash.norm()


def test_fairgrad_weights_ignore_the_gradients_scale_and_a_zero_gradient_gets_no_budget() -> None:
    grads = torch.from_numpy(conflicting(8, 30, seed=3)).float()
    reference = FairGrad(8).weights(grads @ grads.T)
    for scale in (1e-8, 1e4):
        torch.testing.assert_close(FairGrad(8).weights((grads * scale) @ (grads * scale).T), reference, rtol=1e-4, atol=0.0)
    with_zero = torch.cat([grads, torch.zeros(1, 30)]).double()
    d = FairGrad(9).combine(with_zero)
    assert torch.isfinite(d).all() and d.norm() <= with_zero.norm(dim=1).max()


@pytest.mark.slow
def test_fairgrad_compiled_solver_matches_eager() -> None:
    """One compiled graph serves every alpha (the exponent is a tensor): two values, one graph."""
    grads = torch.from_numpy(conflicting(num_tasks=6, dim=30, seed=1))
    graphs = []
    for alpha in (0.5, 2.0):
        options = FairGrad.Options(fairness=alpha)
        compiled, eager = FairGrad(6, options, compile_solver=True).combine(grads), FairGrad(6, options).combine(grads)
        torch.testing.assert_close(compiled, eager, rtol=1e-9, atol=1e-12)
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    assert graphs[0] > 0 and graphs[1] == graphs[0]


@settings(max_examples=30, deadline=None, derandomize=True)
@given(grads=small_gradients, alpha=st.sampled_from([0.1, 0.5, 1.0, 2.0, 10.0]))
def test_fairgrad_solves_its_equation_on_arbitrary_gradients(grads: np.ndarray, alpha: float) -> None:
    """Zeros, duplicates, D < T and spreads of 1e5 included: the ridges keep a root, the solver finds it
    (to 1e-10; 1e-14 on the cases above) for every task that has a share in the direction. A task whose share ``w_i ||g_i||`` is below 1e-9
    of the largest (a zero gradient, or at alpha = 10 weights of 1e-23 or 1e-7 beside 4e4 for parallel
    gradients 500x apart) barely changes it, and its equation may be left short of the root.

    The examples are fixed (``derandomize``): at alpha = 10 about 0.1% of random sets stay short of
    1e-10 after the 40 Newton steps (docs/balancers.md), and a CI run must test the same cases everywhere."""
    gram = grads @ grads.T
    if gram.diagonal().max() == 0:
        return  # all zero: the balancer returns 1/T without solving
    solution = alpha_fair_weights(torch.from_numpy(gram), alpha).numpy()
    assert np.isfinite(solution).all() and (solution > 0).all()
    shares = solution * np.linalg.norm(grads, axis=1)
    assert backward_error(fairgrad_matrix(grads), solution, alpha, among=shares >= 1e-9 * shares.max()) <= 1e-10


def test_fairgrad_matches_torchjd() -> None:
    """TorchJD's FairGrad (scipy's ``least_squares`` on the raw Gramian, as LibMTL and the authors) gives the
    same direction up to its scale, which follows the raw Gramian's (docstring: we rescale); its default
    tolerances make it the less precise of the two."""
    torchjd = pytest.importorskip("torchjd.aggregation")
    grads = gaussian(10, seed=23)
    gram = torch.from_numpy(grads @ grads.T)
    theirs = torchjd.FairGradWeighting(alpha=2.0)(gram).numpy() @ grads
    ours = direction(FairGrad(10), grads)
    np.testing.assert_allclose(ours / np.linalg.norm(ours), theirs / np.linalg.norm(theirs), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# GradVac


def gradvac_reference(grads: np.ndarray, targets: np.ndarray, orders: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Algorithm 1 of the paper on explicit gradients ``[T, D]``: the mean of the vaccinated gradients and
    the new targets, for the visiting orders ``[T, T-1]``. The balancer's conventions: a zero gradient
    has cosine 0 with everything and receives no vaccine, nor does a vaccinated gradient cancelled
    below ``4 sqrt(eps)`` of the norms it is made of; ``sqrt(1 - phi_hat^2)`` is floored at 1e-3."""
    targets = targets.copy()
    observed = np.zeros_like(targets)
    norms = np.linalg.norm(grads, axis=1)
    vaccinated = []
    for i, order in enumerate(orders):
        g, made_of = grads[i].copy(), norms[i]  # made_of: sum_k |c_k| ||g_k|| for g = sum_k c_k g_k
        for j in order:
            norm_i = np.linalg.norm(g)
            norm_i = norm_i if norm_i > 4 * np.finfo(np.float64).eps ** 0.5 * made_of else 0.0
            phi = g @ grads[j] / (norm_i * norms[j]) if norm_i * norms[j] > 0 else 0.0
            phi_hat = targets[i, j]
            if phi < phi_hat and norms[j] > 0:
                target_sine = max(np.sqrt(max(1 - phi_hat**2, 0.0)), 1e-3)
                coefficient = norm_i * (phi_hat * np.sqrt(max(1 - phi**2, 0.0)) - phi * target_sine) / (norms[j] * target_sine)
                g = g + coefficient * grads[j]
                made_of += abs(coefficient) * norms[j]
            observed[i, j] = phi
        vaccinated.append(g)
    off_diagonal = ~np.eye(len(grads), dtype=bool)
    targets[off_diagonal] = (1 - beta) * targets[off_diagonal] + beta * observed[off_diagonal]
    return np.mean(vaccinated, axis=0), targets


def run_against_reference(gradvac: GradVac, steps: list[np.ndarray], tolerance: float = 1e-8) -> None:
    """Each call of ``gradvac`` equals the reference with the same orders; the targets are carried along.

    The tolerance is absolute, on the cosines (the targets) and relative to the largest gradient norm
    on the direction: from the Gramian, the cosine of a vaccinated gradient that has cancelled to a
    fraction ``f`` of the norms it is made of carries a rounding error of about ``eps / f^2``
    (``f = 1e-3``: 2e-10; ``f = 1e-6``: 2e-4)."""
    targets = np.zeros((gradvac.num_tasks, gradvac.num_tasks))
    for grads in steps:
        state = gradvac.generator(CPU).get_state()
        orders = other_tasks_shuffled(gradvac.num_tasks, torch.Generator().set_state(state), CPU).numpy()
        expected, targets = gradvac_reference(grads, targets, orders, gradvac.options.beta)
        got = direction(gradvac, grads)
        scale = np.linalg.norm(grads, axis=1).max()
        np.testing.assert_allclose(got, expected, rtol=0.0, atol=tolerance * scale)
        np.testing.assert_allclose(gradvac.targets.numpy(), targets, rtol=0.0, atol=tolerance)


@pytest.mark.parametrize("num_tasks", [2, 10, 50])
def test_gradvac_is_algorithm_1(num_tasks: int) -> None:
    """Four steps on correlated gradients (a shared direction plus noise, norms spread 10x): the targets
    become positive and vaccines raise cosines that are positive but below them."""
    rng = np.random.default_rng(num_tasks)
    base = rng.standard_normal(40)
    steps = [
        (base + 1.5 * rng.standard_normal((num_tasks, 40))) * np.logspace(0, 1, num_tasks)[:, None] for _ in range(4)
    ]
    run_against_reference(GradVac(num_tasks, GradVac.Options(beta=0.5), seed=num_tasks), steps)


def test_gradvac_on_adversarial_gradients_matches_algorithm_1() -> None:
    steps = [conflicting(10, 30, seed=s) for s in range(2)] + [near_opposite(10, 30, seed=2), low_rank(10, 3, seed=3)]
    run_against_reference(GradVac(10, GradVac.Options(beta=0.3), seed=1), steps)


@settings(max_examples=30, deadline=None)
@given(first=small_gradients, seed=st.integers(0, 2**16))
def test_gradvac_matches_algorithm_1_on_arbitrary_gradients(first: np.ndarray, seed: int) -> None:
    """Zeros, duplicates, D < T: two steps, the second on the same gradients reversed in sign. Entries
    1e5 apart let a vaccinated gradient cancel to ``f ~ 1e-6`` of its parts (``[0, -1]`` projected off
    ``[1, 998]`` and then off ``[-1, 0]``), whose cosine from the Gramian is then good to about 2e-4:
    tolerance 1e-3."""
    steps = [first, -first[:, ::-1].copy()]
    run_against_reference(GradVac(first.shape[0], GradVac.Options(beta=0.5), seed=seed), steps, tolerance=1e-3)


def test_gradvac_vaccine_reaches_the_target_cosine() -> None:
    """Two tasks with cosine 0.1 and targets 0.3: each ``g_i' = g_i + a_i g_j`` has cosine 0.3 with ``g_j``.
    The weights are ``((1 + a_1) / 2, (1 + a_0) / 2)``, so ``a_i`` can be read back from them."""
    g0 = np.array([1.0, 0.0, 0.0])
    g1 = 2.0 * np.array([0.1, np.sqrt(1 - 0.01), 0.0])
    gradvac = GradVac(2)
    gradvac.targets.copy_(torch.tensor([[0.0, 0.3], [0.3, 0.0]], dtype=torch.float64))
    grads = np.stack([g0, g1])
    weights = gradvac.weights(torch.from_numpy(grads @ grads.T)).numpy()
    a0, a1 = 2 * weights[1] - 1, 2 * weights[0] - 1
    cos = lambda x, y: x @ y / (np.linalg.norm(x) * np.linalg.norm(y))  # noqa: E731
    assert cos(g0 + a0 * g1, g1) == pytest.approx(0.3, abs=1e-12) and cos(g1 + a1 * g0, g0) == pytest.approx(0.3, abs=1e-12)
    np.testing.assert_allclose(gradvac.targets.numpy(), [[0.0, 0.3 * 0.99 + 0.1 * 0.01], [0.3 * 0.99 + 0.1 * 0.01, 0.0]])


def test_gradvac_first_step_is_pcgrad() -> None:
    """Targets 0: a vaccine is PCGrad's projection, and the orders are drawn alike."""
    grads = torch.from_numpy(conflicting(12, 40, seed=4))
    torch.testing.assert_close(GradVac(12, seed=5).combine(grads), PCGrad(12, seed=5).combine(grads), rtol=1e-12, atol=1e-12)


def test_gradvac_state_round_trip() -> None:
    """The targets and the generator come back from ``state_dict``: the continuation is bitwise the same."""
    steps = [torch.from_numpy(conflicting(6, 20, seed=s)) for s in range(6)]
    gradvac = GradVac(6, GradVac.Options(beta=0.5), seed=3)
    for grads in steps[:3]:
        gradvac.combine(grads)
    restored = round_trip(gradvac, GradVac(6, GradVac.Options(beta=0.5), seed=99))
    assert restored.seed == 3 and torch.equal(restored.targets, gradvac.targets) and gradvac.targets.abs().sum() > 0
    for grads in steps[3:]:
        assert torch.equal(restored.combine(grads), gradvac.combine(grads))
    assert torch.equal(restored.targets, gradvac.targets)


def test_gradvac_matches_torchjd_on_two_tasks() -> None:
    """TorchJD's GradVac (eps 0) sums what we average; with two tasks the visiting order is forced, so
    the global generator it draws from does not matter. Five steps on drifting gradients."""
    torchjd = pytest.importorskip("torchjd.aggregation")
    theirs = torchjd.GradVacWeighting(beta=0.3, eps=0.0)
    ours = GradVac(2, GradVac.Options(beta=0.3))
    rng = np.random.default_rng(5)
    for _ in range(5):
        grads = rng.standard_normal((2, 8))
        gram = torch.from_numpy(grads @ grads.T)
        torch.testing.assert_close(ours.weights(gram), theirs(gram) / 2, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# uncertainty weighting


def test_uw_is_the_papers_objective_trained_by_adam() -> None:
    """The reference: ``sum_t exp(-s_t) L_t / 2 + s_t / 2`` (LibMTL's form) differentiated by autograd and
    stepped by ``torch.optim.Adam``; the weights before each step are ``exp(-s) / T``."""
    losses = torch.rand(12, 4, generator=torch.Generator().manual_seed(0)) * 3 + 0.05
    uw = UncertaintyWeighting(4, UncertaintyWeighting.Options(log_var_lr=0.1))
    log_vars = torch.zeros(4, requires_grad=True)
    adam = torch.optim.Adam([log_vars], lr=0.1)
    for step_losses in losses:
        expected = torch.exp(-log_vars.detach()) / 4
        torch.testing.assert_close(uw.weights(None, step_losses), expected)
        adam.zero_grad()
        (torch.exp(-log_vars) * step_losses / 2 + log_vars / 2).sum().backward()
        adam.step()
        torch.testing.assert_close(uw.log_vars, log_vars.detach())


def test_uw_starts_as_the_mean_and_tends_to_inverse_losses() -> None:
    uw = UncertaintyWeighting(3, UncertaintyWeighting.Options(log_var_lr=0.05))
    losses = torch.tensor([0.1, 1.0, 4.0])
    assert torch.equal(uw.weights(None, losses), torch.full((3,), 1 / 3))
    for _ in range(2000):
        weights = uw.weights(None, losses)
    torch.testing.assert_close(weights, 1 / (3 * losses), rtol=1e-3, atol=0.0)  # exp(s) = L at the optimum


def test_uw_state_round_trip_and_a_non_positive_loss() -> None:
    losses = torch.rand(10, 3, generator=torch.Generator().manual_seed(1)) + 0.1
    uw = UncertaintyWeighting(3, UncertaintyWeighting.Options(log_var_lr=0.01))
    for row in losses[:5]:
        uw.weights(None, row)
    restored = round_trip(uw, UncertaintyWeighting(3, UncertaintyWeighting.Options(log_var_lr=0.01)))
    for row in losses[5:]:
        assert torch.equal(uw.weights(None, row), restored.weights(None, row))
    # a negative loss counts as min_loss: s tends to log(min_loss), the weight to 1 / (T min_loss)
    negative = UncertaintyWeighting(2, UncertaintyWeighting.Options(log_var_lr=0.05, min_loss=1e-3))
    for _ in range(3000):
        weights = negative.weights(None, torch.tensor([-2.0, 1.0]))
    torch.testing.assert_close(weights, torch.tensor([1 / (2 * 1e-3), 1 / 2]), rtol=1e-2, atol=0.0)
    with pytest.raises(ValueError, match=r"losses of shape \[3\], got None"):
        uw.weights(None, None)


# ---------------------------------------------------------------------------------------------
# DWA


def dwa_reference(losses: np.ndarray, window: int, temperature: float) -> np.ndarray:
    """The paper's weights divided by T for every call: epochs are windows of ``window`` calls, the
    weights of window ``n >= 2`` are ``softmax(mean_{n-1} / mean_{n-2} / temperature)``, uniform before."""
    num_calls, num_tasks = losses.shape
    means = losses[: num_calls // window * window].reshape(-1, window, num_tasks).mean(axis=1)  # [windows, T]
    weights = np.full((num_calls, num_tasks), 1.0 / num_tasks)
    for call in range(num_calls):
        n = call // window
        if n >= 2:
            ratios = means[n - 1] / means[n - 2] / temperature
            weights[call] = np.exp(ratios) / np.exp(ratios).sum()
    return weights


@pytest.mark.parametrize(("window", "temperature"), [(1, 2.0), (4, 2.0), (5, 0.5)])
def test_dwa_weights_are_the_softmax_of_the_window_ratios(window: int, temperature: float) -> None:
    rng = np.random.default_rng(window)
    losses = rng.uniform(0.99, 1.01, (37, 5)) * np.linspace(1.0, 0.2, 37)[:, None] ** np.arange(5)  # tasks descend at different rates
    dwa = DWA(5, DWA.Options(window=window, temperature=temperature))
    got = np.stack([dwa.weights(None, torch.from_numpy(row)).numpy() for row in losses])
    np.testing.assert_allclose(got, dwa_reference(losses, window, temperature), rtol=1e-12)
    assert got[-1].argmax() == 0  # the task whose loss fell least


def test_dwa_state_round_trip_mid_window() -> None:
    losses = torch.rand(23, 4, generator=torch.Generator().manual_seed(2)) + 0.1
    dwa = DWA(4, DWA.Options(window=3))
    for row in losses[:10]:
        dwa.weights(None, row)
    restored = round_trip(dwa, DWA(4, DWA.Options(window=3)))
    assert restored.window_count.item() == 1 and restored.windows_done.item() == 2
    for row in losses[10:]:
        assert torch.equal(dwa.weights(None, row), restored.weights(None, row))


# ---------------------------------------------------------------------------------------------
# RLW


def test_rlw_is_the_softmax_of_standard_normal_draws_from_its_generator() -> None:
    rlw = RLW(6, seed=9)
    reference = torch.Generator().manual_seed(9)
    losses = torch.ones(6)
    for _ in range(3):
        expected = torch.softmax(torch.randn(6, generator=reference, dtype=torch.float64), dim=0).float()
        assert torch.equal(rlw.weights(None, losses), expected)
    draws = torch.stack([rlw.weights(None, losses.double()) for _ in range(4000)])  # [N, T]
    assert (draws > 0).all() and torch.allclose(draws.sum(1), torch.ones(4000, dtype=torch.float64))
    # E[w_t] = 1/T by symmetry; the sample mean is within 4 standard errors of it
    assert (draws.mean(0) - 1 / 6).abs().max() <= 4 * draws.std(0).max() / 4000**0.5


def test_rlw_seeded_and_checkpointed() -> None:
    losses = torch.ones(5)
    first, same, other = RLW(5, seed=1), RLW(5, seed=1), RLW(5, seed=2)
    a = [first.weights(None, losses) for _ in range(3)]
    assert all(torch.equal(x, same.weights(None, losses)) for x in a)
    assert not torch.equal(a[0], other.weights(None, losses))
    restored = round_trip(first, RLW(5, seed=0))
    assert restored.seed == 1
    for _ in range(3):
        assert torch.equal(restored.weights(None, losses), first.weights(None, losses))


# ---------------------------------------------------------------------------------------------
# DB-MTL


def dbmtl_reference(grads: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """The paper's update with beta = 0 (LibMTL's DB_MTL with DB_beta = 0), divided by T: the log-loss
    gradients ``g_t / L_t``, each scaled to the largest norm, averaged."""
    log_grads = grads / losses[:, None]
    norms = np.linalg.norm(log_grads, axis=1)
    return ((norms.max() / norms)[:, None] * log_grads).mean(axis=0)


@pytest.mark.parametrize("case", list(HARD_CASES))
def test_dbmtl_balances_log_loss_gradients_to_the_largest_norm(case: str) -> None:
    grads = HARD_CASES[case](24)
    losses = np.random.default_rng(0).uniform(0.01, 10.0, len(grads))
    got = direction(DBMTL(len(grads)), grads, losses)
    expected = dbmtl_reference(grads, losses)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12 * np.linalg.norm(expected))
    # every task's share has the same norm: the largest log-loss gradient norm
    weights = DBMTL(len(grads)).weights(torch.from_numpy(grads @ grads.T), torch.from_numpy(losses)).numpy()
    shares = np.linalg.norm(weights[:, None] * grads, axis=1) * len(grads)
    np.testing.assert_allclose(shares, np.max(np.linalg.norm(grads, axis=1) / losses), rtol=1e-10)


def test_dbmtl_norm_average_and_its_state() -> None:
    """``norm_decay``: ``alpha_t`` from a moving average of ``||g_t|| / L_t`` (started at the first norms),
    which comes back from ``state_dict``."""
    rng = np.random.default_rng(3)
    steps = [(rng.standard_normal((4, 12)) * rng.uniform(0.1, 10, (4, 1)), rng.uniform(0.1, 2, 4)) for _ in range(6)]
    dbmtl = DBMTL(4, DBMTL.Options(norm_decay=0.8))
    average, directions = None, []
    for step, (grads, losses) in enumerate(steps):
        norms = np.linalg.norm(grads, axis=1) / losses
        average = norms if average is None else 0.8 * average + 0.2 * norms
        expected = (((average.max() / average) / losses)[:, None] * grads).mean(axis=0)
        directions.append(direction(dbmtl, grads, losses))
        np.testing.assert_allclose(directions[-1], expected, rtol=1e-10)
        if step == 2:
            restored = round_trip(dbmtl, DBMTL(4, DBMTL.Options(norm_decay=0.8)))
    for (grads, losses), expected in zip(steps[3:], directions[3:]):
        np.testing.assert_array_equal(direction(restored, grads, losses), expected)


def test_dbmtl_zero_gradients() -> None:
    grads = gaussian(3, 10, seed=5)
    grads[1] = 0.0
    weights = DBMTL(3).weights(torch.from_numpy(grads @ grads.T), torch.ones(3, dtype=torch.float64))
    assert weights[1] == 0 and (weights[[0, 2]] > 0).all()
    zero = DBMTL(3).combine(torch.zeros(3, 10), torch.ones(3))
    assert torch.equal(zero, torch.zeros(10))
