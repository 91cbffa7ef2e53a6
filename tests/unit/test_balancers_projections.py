"""UPGrad, DualProj, IMTL-G and Aligned-MTL: each method's defining property, checked against a precise
or independent reference, and against TorchJD's aggregators where torchjd is installed.

References (in tests only): scipy's NNLS, an exact active-set method, for the projections onto the
dual cone (``min_{lambda >= 0} ||(u + lambda) @ G||``); the IMTL paper's closed form with gradient
differences, in numpy; Aligned-MTL's aligned system from numpy's SVD of ``G`` itself. The gradient
sets are those of tests/unit/test_balancers.py (random, conflicting with norms spread 100x,
near-opposite pairs, low rank ``D < T``; T in {2, 10, 50}).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from scipy.optimize import nnls
from test_balancers import (  # the gradient sets, and the module's single-thread fixture (autouse)
    HARD_CASES,
    _single_thread,  # noqa: F401
    degenerate_cases,
    gaussian,
    rms_norm,
    small_gradients,
)

from mtrl.balancers import BALANCERS, AlignedMTL, DualProj, IMTLG, Mean, UPGrad, make_balancer
from mtrl.balancers.aligned_mtl import alignment_matrix
from mtrl.balancers.dual_cone import dual_cone_weights

try:
    from torchjd.aggregation import AlignedMTLWeighting, DualProjWeighting, IMTLGWeighting, UPGradWeighting
    from torchjd.linalg import QuadprogProjector

    import qpsolvers  # noqa: F401  (TorchJD's projector solves with quadprog through qpsolvers)
    import quadprog  # noqa: F401

    HAS_TORCHJD = True
except ImportError:
    HAS_TORCHJD = False

needs_torchjd = pytest.mark.skipif(not HAS_TORCHJD, reason="needs torchjd with quadprog (the test extra)")

NEW_BALANCERS = ["upgrad", "dualproj", "imtl_g", "aligned_mtl"]
#: Gradient sets whose Gramian has full rank (D >= T, no exact dependency).
FULL_RANK = ["gaussian2", "gaussian10", "gaussian50", "conflicting50", "near_opposite50"]
FLOAT64_EPS = float(np.finfo(np.float64).eps)


def gramian(grads: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(grads @ grads.T)


def direction(name: str, grads: np.ndarray) -> np.ndarray:
    return make_balancer(name, grads.shape[0]).combine(torch.from_numpy(grads)).numpy()


# ---------------------------------------------------------------------------------------------
# references


def dual_cone_reference(grads: np.ndarray, preferences: np.ndarray) -> np.ndarray:
    """Weights ``[B, T]`` of the projections of ``preferences[b] @ G`` onto ``{x : G x >= 0}``, by NNLS."""
    matrix = grads.T / rms_norm(grads)  # [D, T]
    return np.array([u + nnls(matrix, -matrix @ u, maxiter=100 * len(u))[0] for u in preferences])


def imtl_g_reference(grads: np.ndarray) -> np.ndarray:
    """The IMTL paper's closed form: ``alpha_{2:T} = g_1 U^T (D U^T)^-1``, ``alpha_1 = 1 - sum(alpha_{2:T})``."""
    units = grads / np.linalg.norm(grads, axis=1, keepdims=True)
    differences = grads[0] - grads[1:]  # [T-1, D]
    unit_differences = units[0] - units[1:]  # [T-1, D]
    rest = grads[0] @ unit_differences.T @ np.linalg.inv(differences @ unit_differences.T)  # [T-1]
    return np.concatenate([[1.0 - rest.sum()], rest])


def aligned_reference(grads: np.ndarray, eps: float = FLOAT64_EPS) -> np.ndarray:
    """Aligned-MTL's direction from the SVD of ``G`` (not of its Gramian): the mean of the rows of
    ``sigma_min P Q^T``, over the singular values whose squares pass the authors' rank tolerance."""
    left, singular, right = np.linalg.svd(grads, full_matrices=False)  # [T, r], [r], [r, D]
    kept = singular**2 > singular.max() ** 2 * grads.shape[0] * eps
    aligned = singular[kept].min() * left[:, kept] @ right[kept]  # [T, D]
    return aligned.mean(axis=0)


def equal_projection_spread(grads: np.ndarray, d: np.ndarray) -> float:
    """``(max - min) / max |.|`` of the projections of ``d`` on the unit task gradients."""
    projections = grads @ d / np.linalg.norm(grads, axis=1)
    return float(np.ptp(projections) / np.abs(projections).max())


# ---------------------------------------------------------------------------------------------
# UPGrad and DualProj: projections onto the dual cone


@pytest.mark.parametrize("case", list(HARD_CASES))
def test_dual_cone_projections_are_nnls_projections_and_meet_their_optimality_conditions(case: str) -> None:
    grads = HARD_CASES[case](21)
    num, rms = grads.shape[0], rms_norm(grads)
    tasks = np.eye(num)
    weights = dual_cone_weights(gramian(grads), torch.from_numpy(tasks)).numpy()  # [T, T], row i: projection of g_i
    projections = weights @ grads  # [T, D]
    expected = dual_cone_reference(grads, tasks) @ grads
    assert np.linalg.norm(projections - expected, axis=1).max() <= 1e-9 * rms
    products = projections @ grads.T  # [T, T]: <p_i, g_j>
    multipliers = weights - tasks
    assert products.min() >= -1e-12 * rms**2  # each projection is in the dual cone
    assert multipliers.min() >= 0.0
    assert np.abs(multipliers * products).max() <= 1e-10 * rms**2  # complementary slackness


@pytest.mark.parametrize("case", list(HARD_CASES))
def test_upgrad_is_the_mean_projection_and_conflicts_with_no_task(case: str) -> None:
    grads = HARD_CASES[case](22)
    rms = rms_norm(grads)
    d = direction("upgrad", grads)
    expected = dual_cone_reference(grads, np.eye(grads.shape[0])).mean(axis=0) @ grads
    assert np.linalg.norm(d - expected) <= 1e-9 * rms
    assert (grads @ d).min() >= -1e-12 * rms**2


@pytest.mark.parametrize("case", list(HARD_CASES))
def test_dualproj_is_the_projection_of_the_mean_gradient(case: str) -> None:
    grads = HARD_CASES[case](23)
    num, rms = grads.shape[0], rms_norm(grads)
    d = direction("dualproj", grads)
    expected = dual_cone_reference(grads, np.ones((1, num)))[0] @ grads / num
    assert np.linalg.norm(d - expected) <= 1e-9 * rms
    assert (grads @ d).min() >= -1e-12 * rms**2
    # UPGrad's direction is in the cone too, so it is no closer to the mean gradient
    mean = grads.mean(axis=0)
    assert np.linalg.norm(d - mean) <= np.linalg.norm(direction("upgrad", grads) - mean) + 1e-12 * rms


@settings(max_examples=30, deadline=None)
@given(grads=small_gradients)
def test_upgrad_and_dualproj_conflict_with_no_task_on_arbitrary_gradients(grads: np.ndarray) -> None:
    """Up to a relative 1e-10 of the weights' scale: a cone that is nearly degenerate (gradients 1e-7
    from opposite) needs multipliers of 1e9 and ``K`` holds its angles to a few digits, and where the
    multipliers are not unique the solver gets within about the root of its centring floor (1e-20)."""
    norms = np.linalg.norm(grads, axis=1)
    for name in ("upgrad", "dualproj"):
        balancer = make_balancer(name, grads.shape[0])
        d = balancer.combine(torch.from_numpy(grads)).numpy()
        weights = balancer.diagnostics()["weights"].numpy()  # float32: finite weights fit in it
        assert np.isfinite(d).all() and np.isfinite(weights).all(), name
        rounding = 1e-10 * norms * (np.abs(weights) @ norms)  # [T]
        assert (grads @ d >= -1e-9 * rms_norm(grads) ** 2 - rounding).all(), name


def test_without_conflicts_upgrad_and_dualproj_are_the_mean() -> None:
    grads = np.abs(gaussian(8, 30, seed=24))  # positive orthant: no conflicting pair
    mean = Mean(8).weights(gramian(grads)).numpy()
    for cls in (UPGrad, DualProj):
        np.testing.assert_allclose(cls(8).weights(gramian(grads)).numpy(), mean, rtol=1e-9)


def test_upgrad_projects_a_conflicting_pair() -> None:
    # g1 = (1, 0), g2 = (-1, 1): p1 = g1 - <g1,g2>/|g2|^2 g2 = (0.5, 0.5), p2 = g2 - <g2,g1>/|g1|^2 g1 = (0, 1)
    grads = np.array([[1.0, 0.0], [-1.0, 1.0]])
    np.testing.assert_allclose(direction("upgrad", grads), [0.25, 0.75], atol=1e-10)
    # the mean (0, 0.5) already has <., g1> = 0 and <., g2> > 0: DualProj leaves it
    np.testing.assert_allclose(direction("dualproj", grads), [0.0, 0.5], atol=1e-10)


@needs_torchjd
@pytest.mark.parametrize("case", list(HARD_CASES))
def test_upgrad_and_dualproj_match_torchjd_without_its_regularisation(case: str) -> None:
    """TorchJD's projector with a negligible ridge in place of its default ``1e-4``: the same projections."""
    grads = HARD_CASES[case](25)
    rms, gram = rms_norm(grads), gramian(grads)
    exact = QuadprogProjector(norm_eps=0.0, reg_eps=1e-12)
    for name, weighting in (("upgrad", UPGradWeighting(projector=exact)), ("dualproj", DualProjWeighting(projector=exact))):
        expected = weighting(gram).numpy() @ grads
        assert np.linalg.norm(direction(name, grads) - expected) <= 1e-6 * rms, name


@needs_torchjd
def test_torchjds_default_regularisation_leaves_the_dual_cone() -> None:
    """TorchJD's default divides the Gramian by its trace and adds ``1e-4 I``: its directions move away
    from the exact projections (conflicting T = 50: by several percent of the RMS gradient norm)
    and conflict slightly with some tasks, where ours stay within the solver's accuracy."""
    grads = HARD_CASES["conflicting50"](26)
    rms, gram = rms_norm(grads), gramian(grads)
    exact = dual_cone_reference(grads, np.eye(50)).mean(axis=0) @ grads
    theirs = UPGradWeighting()(gram).numpy() @ grads
    ours = direction("upgrad", grads)
    assert np.linalg.norm(theirs - exact) > 1e-3 * rms and np.linalg.norm(ours - exact) <= 1e-9 * rms
    assert (grads @ theirs).min() < -1e-6 * rms**2 and (grads @ ours).min() >= -1e-12 * rms**2


# ---------------------------------------------------------------------------------------------
# IMTL-G: equal projections on the unit task gradients


@pytest.mark.parametrize("case", FULL_RANK)
def test_imtl_g_has_equal_positive_projections_and_is_the_papers_closed_form(case: str) -> None:
    grads = HARD_CASES[case](27)
    weights = IMTLG(grads.shape[0]).weights(gramian(grads)).numpy()
    d = weights @ grads
    assert abs(weights.sum()) == pytest.approx(1.0, abs=1e-12)
    # near-opposite pairs: the Gramian's condition number is 2e8, and the spread follows it
    assert equal_projection_spread(grads, d) <= (1e-5 if case == "near_opposite50" else 1e-8)
    assert (grads @ d).min() > 0
    if case != "near_opposite50":  # there the closed form's difference matrices lose all accuracy (spread 0.1)
        expected = imtl_g_reference(grads)
        expected *= np.sign(expected.sum())  # see test_imtl_g_normalises_to_positive_projections
        np.testing.assert_allclose(d, expected @ grads, rtol=0, atol=1e-8 * np.linalg.norm(expected @ grads))


def test_imtl_g_normalises_to_positive_projections() -> None:
    """Here ``1^T K^-1 n < 0``: the paper's ``sum(alpha) = 1`` gives equal *negative* projections
    (every loss goes up along ``-d``'s opposite); ours flips the sign."""
    units = np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.6, -0.8, 0.1]])
    grads = units / np.linalg.norm(units, axis=1, keepdims=True) * np.array([[0.1], [1.0], [1.0]])
    paper = imtl_g_reference(grads) @ grads
    assert (grads @ paper).max() < 0
    weights = IMTLG(3).weights(gramian(grads)).numpy()
    assert weights.sum() == pytest.approx(-1.0, abs=1e-12)
    np.testing.assert_allclose(weights @ grads, -paper, rtol=1e-9)
    assert equal_projection_spread(grads, weights @ grads) <= 1e-9 and (grads @ (weights @ grads)).min() > 0


def test_imtl_g_can_need_a_direction_far_longer_than_the_gradients() -> None:
    """Weights of large entries of both signs: 37 times the longest gradient here (a case found by
    hypothesis, with ``sum(K^-1 n) < 0``: the paper's direction up to its sign), which the
    trainer's gradient clipping bounds."""
    grads = np.array(
        [[-34.0, 7.0, -521.0, -34.0, -34.0], [-34.0, -34.0, -34.0, -34.0, -34.0], [-34.0, -34.0, -822.0, -34.0, -34.0], [-317.0, 18.0, -34.0, -34.0, -34.0]]
    )
    d = direction("imtl_g", grads)
    assert np.linalg.norm(d) > 30 * np.linalg.norm(grads, axis=1).max()
    assert equal_projection_spread(grads, d) <= 1e-12 and (grads @ d).min() > 0
    np.testing.assert_allclose(d, -imtl_g_reference(grads) @ grads, rtol=1e-9)


def test_imtl_g_on_singular_gramians() -> None:
    cases = {name: grads.double().numpy() for name, grads in degenerate_cases(num_tasks=5, dim=40).items()}
    # a repeated gradient: equal projections still exist, and are found
    d = direction("imtl_g", cases["identical"])
    assert equal_projection_spread(cases["identical"], d) <= 1e-9
    # a zero gradient gets weight 0; the others have equal projections
    weights = IMTLG(5).weights(gramian(cases["one_zero"])).numpy()
    assert weights[1] == 0.0 and weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert equal_projection_spread(np.delete(cases["one_zero"], 1, axis=0), weights @ cases["one_zero"]) <= 1e-9
    # g and -g, or more tasks than dimensions: only d = 0 has equal projections
    for grads in (cases["opposite"], HARD_CASES["low_rank10_d3"](28), HARD_CASES["low_rank50"](28)):
        d = direction("imtl_g", grads)
        assert np.isfinite(d).all() and np.linalg.norm(d) <= 1e-10 * rms_norm(grads)
    # all gradients zero: zero weights
    assert not IMTLG(5).weights(gramian(cases["all_zero"])).any()


def test_imtl_g_of_a_float32_gramian_has_equal_projections_to_float32_accuracy() -> None:
    """The ridge follows the Gramian's dtype (float32 here): it stays below float32's own rounding."""
    grads = torch.from_numpy(gaussian(10, 100, seed=29)).float()
    d = IMTLG(10).combine(grads).double().numpy()
    assert equal_projection_spread(grads.double().numpy(), d) <= 1e-5


@needs_torchjd
@pytest.mark.parametrize("case", FULL_RANK)
def test_imtl_g_matches_torchjd_on_full_rank_gramians(case: str) -> None:
    grads = HARD_CASES[case](30)
    expected = IMTLGWeighting()(gramian(grads)).numpy()
    expected *= np.sign(expected.sum())
    np.testing.assert_allclose(direction("imtl_g", grads), expected @ grads, rtol=0, atol=1e-6 * np.linalg.norm(expected @ grads))


# ---------------------------------------------------------------------------------------------
# Aligned-MTL: an aligned system of condition number 1


@pytest.mark.parametrize("case", list(HARD_CASES))
def test_aligned_system_has_condition_number_one_and_matches_an_svd_reference(case: str) -> None:
    grads = HARD_CASES[case](31)
    aligned = alignment_matrix(gramian(grads), FLOAT64_EPS).numpy() @ grads  # [T, D]
    singular = np.linalg.svd(grads, compute_uv=False)
    rank = int((singular**2 > singular.max() ** 2 * grads.shape[0] * FLOAT64_EPS).sum())
    aligned_singular = np.linalg.svd(aligned, compute_uv=False)
    # float64 rounding times the condition number: up to 2e-8 for the near-opposite pairs (2e8)
    np.testing.assert_allclose(aligned_singular[:rank], singular[rank - 1], rtol=1e-6)
    assert (aligned_singular[rank:] <= 1e-6 * singular[rank - 1]).all()
    expected = aligned_reference(grads)
    np.testing.assert_allclose(direction("aligned_mtl", grads), expected, rtol=0, atol=1e-6 * np.linalg.norm(expected))


def test_aligned_mtl_of_orthogonal_gradients_of_equal_norm_is_the_mean() -> None:
    grads = 3.0 * np.linalg.qr(gaussian(6, 20, seed=32).T)[0].T  # [6, 20], orthogonal rows of norm 3
    np.testing.assert_allclose(AlignedMTL(6).weights(gramian(grads)).numpy(), np.full(6, 1 / 6), rtol=1e-12)


def test_aligned_mtl_drops_the_rounding_errors_of_a_float32_gramian() -> None:
    """``g_3 = g_1 + g_2`` in float32: the Gramian's smallest eigenvalue is rounding noise, above the
    float64 tolerance but below float32's, so the rank is 2 and the direction stays on the scale of
    the gradients instead of collapsing to the noise's singular value."""
    base = torch.from_numpy(gaussian(2, 50, seed=33)).float()
    grads = torch.cat([base, base.sum(dim=0, keepdim=True)])  # [3, 50]
    d = AlignedMTL(3).combine(grads).double().numpy()
    expected = aligned_reference(grads.double().numpy(), float(np.finfo(np.float32).eps))
    np.testing.assert_allclose(d, expected, rtol=0, atol=1e-5 * np.linalg.norm(expected))
    assert np.linalg.norm(d) > 0.1 * rms_norm(grads.double().numpy()) / 3


@needs_torchjd
@pytest.mark.parametrize("case", list(HARD_CASES))
def test_aligned_mtl_matches_torchjd(case: str) -> None:
    grads = HARD_CASES[case](34)
    expected = AlignedMTLWeighting()(gramian(grads)).numpy() @ grads
    np.testing.assert_allclose(direction("aligned_mtl", grads), expected, rtol=0, atol=1e-6 * np.linalg.norm(expected))


# ---------------------------------------------------------------------------------------------
# the four: invariances, state, compiled solver


@pytest.mark.parametrize("name", NEW_BALANCERS)
def test_permuting_tasks_permutes_weights_and_scale_changes_nothing(name: str) -> None:
    grads = torch.from_numpy(HARD_CASES["conflicting50"](35)[:12])
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    balancer = make_balancer(name, 12)
    weights = balancer.weights(grads @ grads.T)
    torch.testing.assert_close(balancer.weights(grads[perm] @ grads[perm].T), weights[perm], rtol=1e-7, atol=1e-10)
    for scale in (1e-8, 1e4):
        scaled = grads * scale
        torch.testing.assert_close(balancer.weights(scaled @ scaled.T), weights, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("name", NEW_BALANCERS)
def test_stateless_balancers_checkpoint_only_their_diagnostics(name: str) -> None:
    grads = torch.from_numpy(HARD_CASES["gaussian10"](36)).float()
    balancer = make_balancer(name, 10)
    balancer.combine(grads)
    state = copy.deepcopy(balancer.state_dict())
    assert set(state) == {"last_weights", "last_conflicting_pairs", "last_mean_cosine"}
    restored = make_balancer(name, 10)
    restored.load_state_dict(state)
    assert torch.equal(restored.diagnostics()["weights"], balancer.diagnostics()["weights"])
    assert torch.equal(restored.combine(grads), balancer.combine(grads))


def test_the_four_are_registered_without_run_options() -> None:
    for name in NEW_BALANCERS:
        assert name in BALANCERS
    assert make_balancer("upgrad", 3, compile_solver=True).compile_solver
    assert make_balancer("dualproj", 3, max_iter=5).options.max_iter == 5
    with pytest.raises(ValueError, match=r"^balancer 'imtl_g' got unknown argument\(s\) c; it accepts: none$"):
        make_balancer("imtl_g", 3, c=0.5)
    with pytest.raises(ValueError, match=r"max_iter must be an integer >= 1, got 0"):
        UPGrad.Options(max_iter=0)


@pytest.mark.slow
def test_compiled_dual_cone_solver_matches_eager() -> None:
    grads = torch.from_numpy(HARD_CASES["conflicting50"](37)[:6])
    for name in ("upgrad", "dualproj"):
        eager, compiled = make_balancer(name, 6), make_balancer(name, 6, compile_solver=True)
        torch.testing.assert_close(compiled.combine(grads), eager.combine(grads), rtol=1e-9, atol=1e-12)

