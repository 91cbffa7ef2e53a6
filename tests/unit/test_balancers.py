"""Gradient balancers: exact identities, accuracy against scipy, invariances, randomness, degenerate inputs.

scipy is used here only, as a precise reference: SLSQP with tight tolerances for CAGrad's dual,
NNLS (an exact active-set method) for MGDA's min-norm point, and a root solve for Nash-MTL.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import minimize, nnls, root

from mtrl.balancers import BUILTIN_BALANCERS, FAMO, MGDA, RUN_INPUTS, CAGrad, CAGradFast, Mean, NashMTL, PCGrad, balancer_takes, make_balancer
from mtrl.balancers.base import Balancer
from mtrl.balancers.options import BalancerOptions, option_docs, run_option_names, run_options

GRADIENT_BALANCERS = ["mean", "cagrad", "cagrad_fast", "pcgrad", "mgda", "nashmtl"]


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """The T x T problems are tiny: intra-op threads only add overhead, and on a busy CPU their
    spin-waiting slows these tests (and scipy's references) down by an order of magnitude."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# gradient sets


def gaussian(num_tasks: int, dim: int = 100, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((num_tasks, dim))


def conflicting(num_tasks: int = 50, dim: int = 200, seed: int = 0) -> np.ndarray:
    """Half the tasks along +v, half along -v (plus noise): many strongly negative inner products;
    norms spread 100x."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(dim)
    v /= np.linalg.norm(v)
    signs = rng.choice([-1.0, 1.0], num_tasks)
    units = signs[:, None] * 1.5 * v + rng.standard_normal((num_tasks, dim)) / np.sqrt(dim)
    units /= np.linalg.norm(units, axis=1, keepdims=True)
    norms = np.logspace(0, 2, num_tasks)
    rng.shuffle(norms)
    return norms[:, None] * units


def near_opposite(num_tasks: int = 50, dim: int = 200, seed: int = 0) -> np.ndarray:
    """Pairs g, -g (1 + 1e-3 noise), norms spread 10x."""
    rng = np.random.default_rng(seed)
    half = rng.standard_normal((num_tasks // 2, dim))
    other = -half * (1 + 1e-3 * rng.standard_normal(half.shape))
    return np.concatenate([half, other]) * np.logspace(0, 1, num_tasks)[:, None]


def low_rank(num_tasks: int = 50, dim: int = 5, seed: int = 0) -> np.ndarray:
    """D < T, norms spread 100x: the Gramian is singular and 0 is in the convex hull."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((num_tasks, dim)) * np.logspace(0, 2, num_tasks)[:, None]


HARD_CASES = {
    "gaussian2": lambda seed: gaussian(2, seed=seed),
    "gaussian10": lambda seed: gaussian(10, seed=seed),
    "gaussian50": lambda seed: gaussian(50, seed=seed),
    "conflicting50": lambda seed: conflicting(seed=seed),
    "near_opposite50": lambda seed: near_opposite(seed=seed),
    "low_rank50": lambda seed: low_rank(seed=seed),
    "low_rank10_d3": lambda seed: low_rank(10, 3, seed),
}


def degenerate_cases(num_tasks: int = 5, dim: int = 40) -> dict[str, torch.Tensor]:
    grads = torch.randn(num_tasks, dim, generator=torch.Generator().manual_seed(0))
    one_zero = grads.clone()
    one_zero[1] = 0.0
    identical = grads.clone()
    identical[1] = identical[0]
    opposite = grads.clone()
    opposite[1] = -opposite[0]
    return {
        "one_zero": one_zero,
        "all_zero": torch.zeros(num_tasks, dim),
        "identical": identical,
        "opposite": opposite,
        "scale_1e-8": grads * 1e-8,
        "scale_1e+4": grads * 1e4,
    }


def rms_norm(grads: np.ndarray) -> float:
    return float(np.sqrt((grads**2).sum(1).mean()))


def losses_for(num_tasks: int) -> torch.Tensor:
    return torch.linspace(0.5, 2.0, num_tasks)


# ---------------------------------------------------------------------------------------------
# precise references (scipy)


def cagrad_reference(grads: np.ndarray, c: float) -> np.ndarray:
    """CAGrad's direction (no rescaling) from SLSQP on the dual, with tight tolerances."""
    num_tasks = grads.shape[0]
    gram = grads @ grads.T
    gram = gram / gram.diagonal().mean()
    base = np.full(num_tasks, 1.0 / num_tasks)
    linear = gram @ base
    phi = c * np.sqrt(base @ gram @ base)

    def objective(w: np.ndarray) -> float:
        return w @ linear + phi * np.sqrt(max(w @ gram @ w, 1e-300))

    def jacobian(w: np.ndarray) -> np.ndarray:
        return linear + phi * gram @ w / np.sqrt(max(w @ gram @ w, 1e-300))

    result = minimize(
        objective,
        base,
        jac=jacobian,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * num_tasks,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(num_tasks)}],
        options={"ftol": 1e-16, "maxiter": 10_000},
    )
    g0 = grads.mean(0)
    g_w = result.x @ grads
    return g0 + c * np.linalg.norm(g0) * g_w / np.linalg.norm(g_w)


def min_norm_reference(grads: np.ndarray, penalty: float = 1e4) -> np.ndarray:
    """Min-norm point of the convex hull by NNLS with the constraint ``sum(w) = 1`` as a stiff row."""
    num_tasks = grads.shape[0]
    matrix = np.vstack([grads.T / rms_norm(grads), penalty * np.ones((1, num_tasks))])
    target = np.zeros(matrix.shape[0])
    target[-1] = penalty
    w, _ = nnls(matrix, target, maxiter=50 * num_tasks)
    return (w / w.sum()) @ grads


def nash_reference(gram: np.ndarray) -> np.ndarray:
    """Positive root of ``K alpha = 1/alpha``: scipy's trust-region Newton on ``f(exp(u))``, then a
    ``root`` polish, in ``u = log(alpha)``."""

    def objective(u: np.ndarray) -> float:
        alpha = np.exp(u)
        return 0.5 * alpha @ gram @ alpha - u.sum()

    def residual(u: np.ndarray) -> np.ndarray:
        alpha = np.exp(u)
        return alpha * (gram @ alpha) - 1.0

    def jacobian(u: np.ndarray) -> np.ndarray:
        alpha = np.exp(u)
        return np.diag(alpha * (gram @ alpha)) + alpha[:, None] * gram * alpha[None, :]

    start = -0.5 * np.log(gram.diagonal())
    coarse = minimize(objective, start, jac=residual, hess=jacobian, method="trust-exact", options={"gtol": 1e-12})
    result = root(residual, coarse.x, jac=jacobian, method="hybr")
    assert np.abs(residual(result.x)).max() < 1e-7, result.message
    return np.exp(result.x)


def direction(balancer: Balancer, grads: np.ndarray | torch.Tensor, losses: torch.Tensor | None = None) -> np.ndarray:
    grads = torch.as_tensor(grads)
    return balancer.combine(grads, losses).numpy()


# ---------------------------------------------------------------------------------------------
# registry and validation


def test_registry_builds_every_balancer_and_drops_seed_where_unused() -> None:
    assert set(BUILTIN_BALANCERS) == {
        "mean", "cagrad", "cagrad_fast", "pcgrad", "mgda", "nashmtl", "famo", "gradnorm",
        "upgrad", "dualproj", "imtl_g", "aligned_mtl", "fairgrad", "gradvac", "uw", "dwa", "rlw", "dbmtl", "sdmgrad",
    }
    for name, cls in BUILTIN_BALANCERS.items():
        balancer = make_balancer(name, 4, seed=3)
        assert type(balancer) is cls and balancer.num_tasks == 4 and balancer.options == cls.Options()
    assert make_balancer("pcgrad", 4, seed=3).seed == 3
    assert make_balancer("cagrad_fast", 4, seed=5, num_sampled=2).seed == 5
    assert make_balancer("cagrad", 4, c=0.2).options == CAGrad.Options(c=0.2)
    assert make_balancer("cagrad", 4, compile_solver=True).compile_solver
    assert type(make_balancer("mean", 4, compile_solver=True)) is Mean  # dropped where there is no solver


@pytest.mark.parametrize("name", list(BUILTIN_BALANCERS))
def test_a_balancers_declaration_is_what_its_constructor_takes(name: str) -> None:
    """``(num_tasks, options=Options(), *, <run_inputs>)``; every option documented, every run input known."""
    cls = BUILTIN_BALANCERS[name]
    assert dataclasses.is_dataclass(cls.Options) and issubclass(cls.Options, BalancerOptions)
    assert cls.Options.__dataclass_params__.frozen
    parameters = inspect.signature(cls).parameters
    assert list(parameters) == ["num_tasks", "options", *cls.run_inputs]
    assert parameters["options"].default in (None, cls.Options()) and cls(3).options == cls.Options()  # None: the defaults
    assert all(parameters[key].kind is inspect.Parameter.KEYWORD_ONLY for key in cls.run_inputs)
    assert set(cls.run_inputs) <= set(RUN_INPUTS)
    fields = [f.name for f in dataclasses.fields(cls.Options)]
    assert set(option_docs(cls.Options)) == set(fields) and all(option_docs(cls.Options).values())
    assert balancer_takes(name) == (*run_option_names(cls.Options), *cls.run_inputs)
    other = next(c for c in BUILTIN_BALANCERS.values() if c.Options is not cls.Options)
    with pytest.raises(TypeError, match=rf"{cls.__name__} takes {cls.__name__}.Options"):
        cls(3, other.Options())


def test_runs_set_the_hyperparameters_and_keep_the_solver_settings_fixed() -> None:
    assert balancer_takes("cagrad") == ("c", "rescale", "compile_solver")
    assert balancer_takes("cagrad_fast") == ("c", "rescale", "num_sampled", "seed", "compile_solver")
    assert balancer_takes("pcgrad") == ("seed",)
    assert balancer_takes("famo") == ("lr",) and balancer_takes("gradnorm") == ("alpha", "lr")
    assert "max_iter" not in balancer_takes("nashmtl") and make_balancer("nashmtl", 3, max_iter=5).options.max_iter == 5


def test_one_option_name_shared_by_two_balancers_keeps_each_meaning() -> None:
    options = run_options(BUILTIN_BALANCERS)
    assert list(options) == [
        "statistics", "c", "rescale", "num_sampled", "lr", "alpha",
        "fairness", "beta", "log_var_lr", "temperature", "window", "norm_decay",
        "lam", "step_size", "momentum", "inner_steps",
    ]
    lr = options["lr"]
    assert (lr.type, lr.default, list(lr.meanings)) == (float, 0.025, ["famo", "gradnorm"])
    assert lr.meanings["famo"] != lr.meanings["gradnorm"]
    assert lr.help().startswith("famo: learning rate of the task logits") and "; gradnorm: learning rate of the loss weights" in lr.help()
    assert options["c"].help().startswith("cagrad / cagrad_fast: radius of the conflict-averse ball")


def test_one_option_name_with_two_defaults_is_refused() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class OtherLR(BalancerOptions):
        lr: float = 0.1
        """A learning rate with another default."""

    other = type("Other", (Balancer,), {"Options": OtherLR})
    with pytest.raises(TypeError, match=r"balancer option 'lr': other declares <class 'float'> = 0.1, famo <class 'float'> = 0.025"):
        run_options({"famo": FAMO, "other": other})


@pytest.mark.slow
def test_compiled_solver_matches_eager() -> None:
    """One compiled graph serves CAGrad, CAGrad-Fast with K = T and MGDA at the same T (same shapes);
    Nash-MTL has its own."""
    grads = torch.as_tensor(conflicting(num_tasks=6, dim=30, seed=1))
    cases = [("cagrad", {"c": 0.9}), ("cagrad_fast", {"c": 0.5, "num_sampled": 6}), ("mgda", {}), ("nashmtl", {})]
    for name, kwargs in cases:
        eager = make_balancer(name, 6, seed=2, **kwargs)
        compiled = make_balancer(name, 6, seed=2, compile_solver=True, **kwargs)
        torch.testing.assert_close(compiled.combine(grads), eager.combine(grads), rtol=1e-9, atol=1e-12)


def test_registry_rejects_unknown_name_and_argument() -> None:
    with pytest.raises(ValueError, match=r"'cagard'.*mean, cagrad, cagrad_fast, pcgrad, mgda, nashmtl, famo"):
        make_balancer("cagard", 4)
    with pytest.raises(ValueError, match=r"^balancer 'mgda' got unknown argument\(s\) c; it accepts: max_iter, compile_solver$"):
        make_balancer("mgda", 4, c=0.5)
    with pytest.raises(ValueError, match=r"^balancer 'pcgrad' got unknown argument\(s\) c; it accepts: seed$"):
        make_balancer("pcgrad", 4, c=0.5)


@pytest.mark.parametrize(
    ("cls", "num_tasks", "options", "run_inputs", "message"),
    [
        (Mean, 0, {}, {}, r"num_tasks must be an integer >= 1, got 0"),
        (CAGrad, True, {}, {}, r"num_tasks .* got True"),
        (CAGrad, 3, {"c": -0.1}, {}, r"c must be a finite number >= 0, got -0.1"),
        (CAGrad, 3, {"c": float("nan")}, {}, r"c must be .* got nan"),
        (CAGrad, 3, {"rescale": 3}, {}, r"rescale must be one of 0, 1, 2, got 3"),
        (CAGrad, 3, {"max_iter": 0}, {}, r"max_iter must be an integer >= 1, got 0"),
        (CAGradFast, 3, {"num_sampled": 0}, {}, r"num_sampled must be an integer in \[1, num_tasks=3\], got 0"),
        (CAGradFast, 3, {"num_sampled": 4}, {}, r"num_sampled .* got 4"),
        (CAGradFast, 3, {"rescale": -1}, {}, r"rescale must be one of 0, 1, 2, got -1"),
        (CAGradFast, 3, {}, {"seed": -1}, r"seed must be an integer in \[0, 2\*\*63\), got -1"),
        (PCGrad, 3, {}, {"seed": 1.5}, r"seed .* got 1.5"),
        (MGDA, 3, {"max_iter": -2}, {}, r"max_iter must be an integer >= 1, got -2"),
        (NashMTL, 3, {"max_iter": 2.0}, {}, r"max_iter .* got 2.0"),
        (FAMO, 3, {"lr": 0.0}, {}, r"lr must be a finite number > 0, got 0.0"),
        (FAMO, 3, {"weight_decay": -1e-3}, {}, r"weight_decay must be a finite number >= 0, got -0.001"),
        (FAMO, 3, {"min_loss": 0}, {}, r"min_loss must be a finite number > 0, got 0"),
    ],
)
def test_arguments_are_validated(cls: type[Balancer], num_tasks: int, options: dict, run_inputs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(num_tasks, cls.Options(**options), **run_inputs)


def test_cagrad_fast_default_num_sampled() -> None:
    assert CAGradFast(10).num_sampled == 4
    assert CAGradFast(2).num_sampled == 2


# ---------------------------------------------------------------------------------------------
# exact identities


def test_cagrad_with_c0_is_exactly_mean() -> None:
    grads = torch.from_numpy(conflicting(12, 30)).float()
    mean, cagrad = Mean(12), CAGrad(12, CAGrad.Options(c=0.0))
    assert torch.equal(cagrad.combine(grads), mean.combine(grads))
    assert torch.equal(cagrad.diagnostics()["weights"], mean.diagnostics()["weights"])
    assert torch.equal(CAGradFast(12, CAGradFast.Options(c=0.0, num_sampled=3)).combine(grads), mean.combine(grads))


def test_pcgrad_without_conflicts_is_exactly_mean() -> None:
    grads = torch.randn(7, 25, generator=torch.Generator().manual_seed(1)).abs()  # positive orthant
    for dtype in (torch.float32, torch.float64):
        g = grads.to(dtype)
        assert torch.equal(PCGrad(7, seed=3).combine(g), Mean(7).combine(g))


def test_pcgrad_projects_conflicting_pair() -> None:
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    # g1' = g1 - <g1,g2>/|g2|^2 g2 = (0.5, 0.5); g2' = g2 - <g2,g1>/|g1|^2 g1 = (0, 1); mean = (0.25, 0.75)
    torch.testing.assert_close(PCGrad(2).combine(grads), torch.tensor([0.25, 0.75], dtype=torch.float64))


def test_pcgrad_matches_algorithm_1_in_parameter_space() -> None:
    grads = conflicting(8, 30, seed=5)
    pcgrad = PCGrad(8, seed=2)
    state = pcgrad.generator(torch.device("cpu")).get_state()
    got = direction(pcgrad, grads)
    # the same per-task orders: uniform keys, the task itself last
    keys = torch.rand((8, 8), generator=torch.Generator().set_state(state), dtype=torch.float64)
    keys.diagonal().fill_(2.0)
    orders = keys.argsort(dim=1)[:, :7].numpy()
    projected = []
    for i, order in enumerate(orders):
        g = grads[i].copy()
        for j in order:
            dot = g @ grads[j]
            if dot < 0:
                g -= dot / (grads[j] @ grads[j]) * grads[j]
        projected.append(g)
    np.testing.assert_allclose(got, np.mean(projected, axis=0), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("c", [0.4, 0.9])
def test_cagrad_fast_with_all_tasks_sampled_is_cagrad(c: float) -> None:
    grads = torch.from_numpy(conflicting(10, 40, seed=2))
    fast = CAGradFast(10, CAGradFast.Options(c=c, num_sampled=10), seed=7)
    for _ in range(3):  # each call uses a different random order
        torch.testing.assert_close(fast.combine(grads), CAGrad(10, CAGrad.Options(c=c)).combine(grads), rtol=1e-7, atol=1e-9)


def test_cagrad_fast_with_one_sampled_gradient_is_mean() -> None:
    grads = torch.from_numpy(conflicting(10, 40, seed=3))
    mean = Mean(10).combine(grads)
    torch.testing.assert_close(CAGradFast(10, CAGradFast.Options(c=0.5, num_sampled=1, rescale=2)).combine(grads), mean, rtol=1e-12, atol=0)
    scaled = CAGradFast(10, CAGradFast.Options(c=0.5, num_sampled=1, rescale=1)).combine(grads)
    torch.testing.assert_close(scaled, mean * (1.5 / 1.25), rtol=1e-12, atol=0)


def test_cagrad_fast_g0_is_the_true_mean_and_every_task_is_used() -> None:
    fast = CAGradFast(9, CAGradFast.Options(num_sampled=4), seed=1)
    select = fast.selection(torch.device("cpu"))  # [K, T]
    assert select.shape == (4, 9)
    assert torch.equal((select > 0).sum(0), torch.ones(9, dtype=torch.long))  # each task in exactly one row
    base = torch.tensor([1 / 9, 1 / 9, 1 / 9, 6 / 9], dtype=torch.float64)
    torch.testing.assert_close(base @ select, torch.full((9,), 1 / 9, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# accuracy against scipy


@pytest.mark.parametrize(
    ("case", "c"), [(case, 0.5) for case in HARD_CASES] + [("conflicting50", 0.9), ("near_opposite50", 0.9)]
)
def test_cagrad_matches_scipy(case: str, c: float) -> None:
    grads = HARD_CASES[case](11)
    expected = cagrad_reference(grads, c)
    got = direction(CAGrad(grads.shape[0], CAGrad.Options(c=c, rescale=0)), grads)
    assert np.linalg.norm(got - expected) <= 1e-3 * np.linalg.norm(expected)
    # the direction lies in the ball ||d - g0|| <= c ||g0||
    g0 = grads.mean(0)
    assert np.linalg.norm(got - g0) <= c * np.linalg.norm(g0) * (1 + 1e-6)


@pytest.mark.parametrize("rescale", [0, 1, 2])
def test_cagrad_rescale_factors(rescale: int) -> None:
    grads = gaussian(6, 20, seed=4)
    factor = {0: 1.0, 1: 1 / (1 + 0.5**2), 2: 1 / 1.5}[rescale]
    expected = factor * cagrad_reference(grads, 0.5)
    np.testing.assert_allclose(direction(CAGrad(6, CAGrad.Options(rescale=rescale)), grads), expected, rtol=1e-5)


@pytest.mark.parametrize("case", list(HARD_CASES))
def test_mgda_is_the_min_norm_point(case: str) -> None:
    grads = HARD_CASES[case](12)
    got = direction(MGDA(grads.shape[0]), grads)
    expected = min_norm_reference(grads)
    rms = rms_norm(grads)
    assert np.linalg.norm(got - expected) <= 1e-3 * np.linalg.norm(expected) + 1e-6 * rms
    # optimality certificate: <g_i, d> >= ||d||^2 for all i bounds ||d - p||^2 by the violation
    assert got @ got - (grads @ got).min() <= 1e-8 * rms**2


@pytest.mark.parametrize(
    "grads",
    [
        [[1.0, 0.0], [0.0, 2.0]],  # interior optimum
        [[1.0, 0.0], [3.0, 1.0]],  # g1 alone is the min-norm point (gamma = 1)
        [[4.0, 4.0], [1.0, 0.5]],  # g2 alone (gamma = 0)
        [[1.0, -2.0], [-1.0, 3.0]],  # conflicting
        [[1.0, 2.0], [1.0, 2.0]],  # identical: every gamma is optimal
    ],
)
def test_mgda_two_task_closed_form(grads: list) -> None:
    g = np.array(grads)
    weights = MGDA(2).weights(torch.from_numpy(g @ g.T))
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-15) and (weights >= 0).all()
    np.testing.assert_allclose(weights.numpy() @ g, min_norm_reference(g), atol=1e-10)


@pytest.mark.parametrize("case", list(HARD_CASES))
def test_nashmtl_solves_the_bargaining_equation(case: str) -> None:
    grads = HARD_CASES[case](13)
    gram = grads @ grads.T
    weights = NashMTL(grads.shape[0]).weights(torch.from_numpy(gram)).numpy()
    assert (weights > 0).all()
    # the solver's problem, by scale invariance: the cosine matrix C + 1e-8 I, alpha~ = alpha * ||g||
    norms = np.sqrt(gram.diagonal())
    regularised = gram / np.outer(norms, norms) + 1e-8 * np.eye(len(gram))
    scaled = weights * norms
    scaled *= np.sqrt(len(gram) / (scaled @ regularised @ scaled))  # undo our normalisation
    assert np.abs(scaled * (regularised @ scaled) - 1.0).max() <= 1e-6
    if not case.startswith("low_rank"):  # there scipy's solvers stop short of the root (residual 1e-5 to 1)
        np.testing.assert_allclose(scaled, nash_reference(regularised), rtol=1e-5)
    if not case.startswith(("near_opposite", "low_rank")):  # independent gradients: the ridge is negligible
        products = weights * (gram @ weights)  # K w = const / w
        assert products.max() - products.min() <= 1e-6 * products.mean()
    # scale: sum_i w_i ||g_i|| equals the mean gradient norm
    assert weights @ norms == pytest.approx(norms.mean(), rel=1e-10)


def test_nashmtl_equal_norm_weights_sum_to_one_and_ignore_a_zero_gradient() -> None:
    units = gaussian(4, 30, seed=5)
    units /= np.linalg.norm(units, axis=1, keepdims=True)
    weights = NashMTL(4).weights(torch.from_numpy(units @ units.T))
    assert weights.sum().item() == pytest.approx(1.0, rel=1e-12)
    with_zero = np.vstack([units, np.zeros(30)])
    d_zero = direction(NashMTL(5), with_zero)
    d_ref = direction(NashMTL(4), units)
    np.testing.assert_allclose(d_zero, d_ref * 4 / 5, rtol=1e-5)  # mean norm counts the zero task


# ---------------------------------------------------------------------------------------------
# invariances


@pytest.mark.parametrize("name", ["mean", "cagrad", "mgda", "nashmtl"])
def test_permuting_tasks_permutes_weights(name: str) -> None:
    grads = torch.from_numpy(conflicting(12, 40, seed=6))
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    balancer = make_balancer(name, 12)
    d = balancer.combine(grads)
    w = balancer.diagnostics()["weights"].double()
    d_perm = balancer.combine(grads[perm])
    w_perm = balancer.diagnostics()["weights"].double()
    torch.testing.assert_close(d_perm, d, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(w_perm, w[perm], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", GRADIENT_BALANCERS)
def test_gradient_scale_does_not_change_weights(name: str) -> None:
    grads = torch.from_numpy(conflicting(8, 30, seed=7)).float()
    reference = make_balancer(name, 8, seed=1).weights(grads @ grads.T)
    for scale in (1e-8, 1e4):
        scaled = grads * scale
        weights = make_balancer(name, 8, seed=1).weights(scaled @ scaled.T)
        torch.testing.assert_close(weights, reference, rtol=2e-3, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# randomness


@pytest.mark.parametrize("name", ["pcgrad", "cagrad_fast"])
def test_seeded_randomness_is_deterministic_and_checkpointed(name: str) -> None:
    grads = torch.from_numpy(conflicting(10, 30, seed=8))

    def run(balancer: Balancer, steps: int) -> list[torch.Tensor]:
        return [balancer.combine(grads) for _ in range(steps)]

    first, second = make_balancer(name, 10, seed=4), make_balancer(name, 10, seed=4)
    for a, b in zip(run(first, 3), run(second, 3)):
        assert torch.equal(a, b)
    other = run(make_balancer(name, 10, seed=5), 3)
    assert not all(torch.equal(a, b) for a, b in zip(run(make_balancer(name, 10, seed=4), 3), other))

    original = make_balancer(name, 10, seed=4)
    run(original, 2)
    state = copy.deepcopy(original.state_dict())
    expected = run(original, 3)
    restored = make_balancer(name, 10, seed=99)
    restored.load_state_dict(state)
    assert restored.seed == 4
    for a, b in zip(run(restored, 3), expected):
        assert torch.equal(a, b)


def test_fresh_state_dict_restores_the_seed() -> None:
    state = PCGrad(6, seed=11).state_dict()
    restored = PCGrad(6, seed=0)
    restored.load_state_dict(state)
    grads = torch.from_numpy(conflicting(6, 20, seed=9))
    assert torch.equal(restored.combine(grads), PCGrad(6, seed=11).combine(grads))


def test_different_seeds_draw_different_subsets_and_orders() -> None:
    cpu = torch.device("cpu")
    assert not torch.equal(CAGradFast(20, seed=0).selection(cpu), CAGradFast(20, seed=1).selection(cpu))
    fast = CAGradFast(20, seed=0)
    assert not torch.equal(fast.selection(cpu), fast.selection(cpu))  # a new subset every call


# ---------------------------------------------------------------------------------------------
# degenerate inputs, dtypes, diagnostics


@pytest.mark.parametrize("case", list(degenerate_cases()))
@pytest.mark.parametrize("name", list(BUILTIN_BALANCERS))
def test_degenerate_inputs_give_finite_directions(name: str, case: str) -> None:
    grads = degenerate_cases()[case]  # float32
    balancer = make_balancer(name, grads.shape[0])
    for _ in range(2):  # FAMO updates on the second call
        d = balancer.combine(grads, losses_for(grads.shape[0]))
        assert d.dtype == torch.float32 and d.shape == (grads.shape[1],)
        assert torch.isfinite(d).all()
        assert torch.isfinite(balancer.diagnostics()["weights"]).all()
    scale = grads.norm(dim=1).max()
    assert d.norm() <= 10 * scale  # bounded by the gradients (CAGrad's ball, convex combinations, ...)


@pytest.mark.parametrize("name", list(BUILTIN_BALANCERS))
def test_single_task(name: str) -> None:
    grads = torch.randn(1, 10)
    d = make_balancer(name, 1).combine(grads, torch.ones(1))
    assert torch.isfinite(d).all()
    cos = torch.nn.functional.cosine_similarity(d, grads[0], dim=0)
    assert cos.item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("name", list(BUILTIN_BALANCERS))
def test_diagnostics_hold_the_last_weights(name: str) -> None:
    grads = torch.from_numpy(conflicting(6, 20, seed=10)).float()
    balancer = make_balancer(name, 6)
    d = balancer.combine(grads, losses_for(6))
    diagnostics = balancer.diagnostics()
    torch.testing.assert_close(diagnostics["weights"] @ grads, d)
    expected_conflicts = int(((grads @ grads.T) < 0).triu(1).sum())
    assert diagnostics["conflicting_pairs"].item() == expected_conflicts


# ---------------------------------------------------------------------------------------------
# properties on arbitrary small gradient sets (zeros, duplicates, huge spreads included)

small_gradients = st.integers(2, 6).flatmap(
    lambda tasks: st.integers(1, 5).flatmap(
        lambda dim: arrays(np.float64, (tasks, dim), elements=st.floats(-1e3, 1e3, allow_subnormal=False))
    )
)


@settings(max_examples=40, deadline=None)
@given(grads=small_gradients, c=st.floats(0.05, 0.95))
def test_cagrad_direction_is_in_the_ball_and_improves_the_worst_task(grads: np.ndarray, c: float) -> None:
    d = direction(CAGrad(grads.shape[0], CAGrad.Options(c=c, rescale=0)), grads)
    assert np.isfinite(d).all()
    g0 = grads.mean(0)
    scale = rms_norm(grads)
    assert np.linalg.norm(d - g0) <= c * np.linalg.norm(g0) * (1 + 1e-6) + 1e-12 * scale
    # g0 is in the ball, so CAGrad's worst-case improvement is at least g0's
    assert (grads @ d).min() >= (grads @ g0).min() - 1e-6 * scale**2


@settings(max_examples=40, deadline=None)
@given(grads=small_gradients)
def test_mgda_satisfies_the_min_norm_optimality_condition(grads: np.ndarray) -> None:
    d = direction(MGDA(grads.shape[0]), grads)
    assert np.isfinite(d).all()
    assert d @ d - (grads @ d).min() <= 1e-8 * rms_norm(grads) ** 2


@settings(max_examples=25, deadline=None)
@given(grads=small_gradients)
def test_every_balancer_is_finite_and_bounded(grads: np.ndarray) -> None:
    tasks = grads.shape[0]
    bound = 10 * np.linalg.norm(grads, axis=1).max()
    for name in BUILTIN_BALANCERS:
        d = direction(make_balancer(name, tasks), grads, losses_for(tasks).double())
        # IMTL-G's equal projections can take a direction far longer than the gradients
        # (tests/unit/test_balancers_projections.py)
        assert np.isfinite(d).all() and (name == "imtl_g" or np.linalg.norm(d) <= bound), name


# ---------------------------------------------------------------------------------------------
# FAMO


def test_famo_moves_weight_to_the_slower_task() -> None:
    famo = FAMO(3)
    steps = torch.arange(200, dtype=torch.float32)
    losses = torch.stack([0.97**steps, 0.99**steps, 0.995**steps], dim=1)  # task 0 falls fastest
    first = famo.weights(None, losses[0])
    assert torch.equal(famo.logits, torch.zeros(3))  # no update on the first call
    torch.testing.assert_close(first, torch.full((3,), 1 / 3))
    for step_losses in losses[1:]:
        weights = famo.weights(None, step_losses)
        assert weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    z = famo.task_weights()
    assert z[2] > z[1] > z[0]


def test_famo_matches_a_torch_adam_reference() -> None:
    losses = torch.rand(6, 4, generator=torch.Generator().manual_seed(0)) + 0.1
    famo = FAMO(4, FAMO.Options(lr=0.05, weight_decay=0.01))
    logits = torch.zeros(4, requires_grad=True)
    adam = torch.optim.Adam([logits], lr=0.05, weight_decay=0.01)
    famo.weights(None, losses[0])
    for prev, cur in zip(losses[:-1], losses[1:]):
        got = famo.weights(None, cur)
        delta = prev.log() - cur.log()
        adam.zero_grad()
        logits.grad = torch.autograd.grad(torch.softmax(logits, 0), logits, grad_outputs=delta)[0]
        adam.step()
        torch.testing.assert_close(famo.logits, logits.detach())
        z = torch.softmax(logits.detach(), 0)
        torch.testing.assert_close(got, (z / cur) / (z / cur).sum())


def test_famo_state_dict_round_trip_and_combine() -> None:
    losses = torch.rand(10, 3, generator=torch.Generator().manual_seed(1)) + 0.1
    grads = torch.randn(3, 8)
    famo = FAMO(3)
    for row in losses[:5]:
        famo.weights(None, row)
    restored = FAMO(3)
    restored.load_state_dict(copy.deepcopy(famo.state_dict()))
    for row in losses[5:]:
        assert torch.equal(famo.combine(grads, row), restored.combine(grads, row))
    assert famo.requires_losses and not famo.requires_grads
    with pytest.raises(ValueError, match=r"losses of shape \[3\], got None"):
        famo.combine(grads)


def test_famo_clamps_non_positive_losses() -> None:
    famo = FAMO(2, FAMO.Options(min_loss=1e-3))
    for row in ([1.0, -2.0], [0.5, 0.0]):
        assert torch.isfinite(famo.weights(None, torch.tensor(row))).all()


# ---------------------------------------------------------------------------------------------
# devices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(BUILTIN_BALANCERS))
def test_cuda_matches_cpu_without_host_sync(name: str) -> None:
    grads = torch.from_numpy(conflicting(10, 64, seed=11)).float()
    losses = losses_for(10)
    expected = make_balancer(name, 10).combine(grads, losses)
    balancer = make_balancer(name, 10).to("cuda")
    grads, losses = grads.cuda(), losses.cuda()
    balancer.combine(grads, losses)  # first call creates the generator
    torch.cuda.synchronize()
    # AlignedMTL: torch.linalg.eigh checks its solver's status on the host (see its docstring)
    torch.cuda.set_sync_debug_mode("default" if name == "aligned_mtl" else "error")
    try:
        got = balancer.combine(grads, losses)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    if name in ("pcgrad", "cagrad_fast", "gradvac", "rlw"):  # CUDA and CPU generators draw different numbers
        assert torch.isfinite(got).all()
    else:
        torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-5)
