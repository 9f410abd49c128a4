"""Trace, diagonal and spectral density (nn_eos/spectrum.py) against dense eigenvalues, exactly where an estimator
is exact and within its stated error where it is not."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from checks import build_problem, device_operator, device_xp
from nn_eos import spectrum
from nn_eos.backend import to_numpy


def symmetric(rng, P, scale=1.0, negative=True):
    Q, _ = np.linalg.qr(rng.standard_normal((P, P)))
    values = rng.uniform(-1 if negative else 0.1, 3, size=P) * scale
    return (Q * values) @ Q.T, values


def probes(seed, P, p):
    """The unit probes spectral_density draws for this seed."""
    return np.random.default_rng(seed).choice(np.array([-1.0, 1.0]), size=(P, p)) / np.sqrt(P)


@given(seed=st.integers(0, 2**32 - 1), P=st.integers(2, 30), steps=st.integers(1, 8),
       scale=st.sampled_from([1e-4, 1.0, 1e4]))
def test_lanczos_quadrature_is_exact_for_low_moments(seed, P, steps, scale):
    """Gauss quadrature with m nodes integrates polynomials of degree < 2m exactly: per probe v,
    Σ_j τ_j θ_jᵏ = vᵀ Aᵏ v for k < 2m (on spectra scaled by 1e-4 and 1e4 as well)."""
    A, _ = symmetric(np.random.default_rng(seed), P, scale)
    density = spectrum.spectral_density(device_operator(A), steps=steps, probes=3, seed=seed)
    V = probes(seed, P, 3)
    m = min(steps, P)
    for k in range(2 * m):
        expected = np.mean(np.einsum("pi,pi->i", V, np.linalg.matrix_power(A, k) @ V))
        assert density.moment(k) == pytest.approx(expected, rel=1e-8, abs=1e-10 * scale ** k)


def test_a_full_lanczos_run_finds_the_eigenvalues():
    rng = np.random.default_rng(0)
    A, values = symmetric(rng, 12)
    density = spectrum.spectral_density(device_operator(A), steps=12, probes=2, seed=1)
    for p in range(2):
        found = density.nodes[p][density.weights[p] > 1e-12]
        assert np.allclose(np.sort(found), np.sort(values), rtol=1e-8, atol=1e-10)
    grid = np.linspace(-3, 5, 4001)
    assert np.trapezoid(density.smoothed(grid, 0.05), grid) == pytest.approx(1.0, abs=1e-6)


def test_traces_and_diagonal_are_exact_where_they_must_be():
    rng = np.random.default_rng(3)
    P = 20
    A, values = symmetric(rng, P)
    exact = spectrum.hutchpp_trace(device_operator(A), products=3 * P, seed=2)
    assert exact.value == pytest.approx(values.sum(), rel=1e-10) and exact.std_error == 0
    D = np.diag(rng.uniform(-2, 5, P))                   # zᵀDz = tr D and z ⊙ Dz = diag D for every ±1 vector z
    assert spectrum.hutchinson_trace(device_operator(D), samples=7, seed=0).value == pytest.approx(np.trace(D))
    np.testing.assert_allclose(to_numpy(spectrum.diagonal(device_operator(D), samples=3).value), np.diag(D))


@pytest.mark.parametrize("scale", [1e-4, 1.0, 1e4])
def test_stochastic_estimates_fall_within_their_stated_error(scale):
    rng = np.random.default_rng(4)
    P = 40
    A, values = symmetric(rng, P, scale)
    operator = device_operator(A)
    for estimate in (spectrum.hutchinson_trace(operator, samples=400, seed=5),
                     spectrum.hutchpp_trace(operator, products=60, seed=5)):
        assert 0 < estimate.std_error < 0.2 * abs(values).sum()
        assert abs(estimate.value - values.sum()) <= 4 * estimate.std_error
    diag = spectrum.diagonal(operator, samples=400, seed=6)
    error = np.abs(to_numpy(diag.value) - np.diag(A)) / to_numpy(diag.std_error)
    assert np.mean(error <= 2) >= 0.85 and error.max() <= 5          # about 95 % within 2 standard errors


@pytest.mark.parametrize("kind", ["hessian", "ggn", "residual"])
def test_on_a_loss_against_the_dense_matrices(kind):
    problem = build_problem([3, 4, 3], "tanh", "cross_entropy", n=6, seed=2)
    loss, P = problem.loss, problem.net.num_params
    M = to_numpy(loss.curvature_product(np.eye(P), kind))
    values = np.linalg.eigvalsh((M + M.T) / 2)
    operator = loss.operator(kind)
    assert spectrum.hutchpp_trace(operator, products=3 * P).value == pytest.approx(values.sum(), rel=1e-9,
                                                                                  abs=1e-12)
    density = spectrum.spectral_density(operator, steps=P, probes=2)
    assert density.moment(1) == pytest.approx(np.mean(np.einsum("pi,pi->i", probes(0, P, 2), M @ probes(0, P, 2))),
                                              rel=1e-8)
    assert np.all(density.nodes[density.weights > 1e-10] <= values.max() + 1e-8 * abs(values).max())


def test_bad_input_is_named():
    with pytest.raises(TypeError, match=r"a spectrum takes a block operator"):
        spectrum.hutchinson_trace(np.eye(3))
    operator = device_operator(np.eye(3))
    with pytest.raises(ValueError, match=r"Hutch\+\+ needs at least 3 products"):
        spectrum.hutchpp_trace(operator, products=2)
    with pytest.raises(ValueError, match=r"samples"):
        spectrum.hutchinson_trace(operator, samples=0)
    with pytest.raises(ValueError, match=r"width must be positive"):
        spectrum.spectral_density(operator, steps=2, probes=1).smoothed([0.0], 0)


@pytest.mark.parametrize("P", [7, 40])
def test_each_estimate_counts_the_products_it_took(P):
    """Estimate.products (what estimators are compared by) against an operator that counts the directions it is
    applied to."""
    from nn_eos.eigen import BlockOperator

    rng = np.random.default_rng(0)
    M = rng.standard_normal((P, P))
    A = device_xp.asarray(M + M.T)
    counted = {"directions": 0}

    def matmat(V):
        counted["directions"] += V.shape[1]
        return A @ V
    operator = BlockOperator(matmat, like=A[:, 0])
    for name, run in [("hutchinson", lambda: spectrum.hutchinson_trace(operator, samples=23, block=5)),
                      ("hutch++", lambda: spectrum.hutchpp_trace(operator, products=30)),
                      ("diagonal", lambda: spectrum.diagonal(operator, samples=17, block=4)),
                      ("density", lambda: spectrum.spectral_density(operator, steps=6, probes=3))]:
        counted["directions"] = 0
        assert run().products == counted["directions"], name
