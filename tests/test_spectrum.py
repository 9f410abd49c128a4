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


def dtype_checking_operator(M, dtype):
    """M as a block operator in ``dtype`` that refuses directions of any other dtype: an estimator's probes and
    bases must be in the operator's dtype."""
    from nn_eos.eigen import BlockOperator

    A = device_xp.asarray(M, dtype=dtype)

    def matmat(V):
        assert V.dtype == A.dtype, f"directions in {V.dtype} for an operator in {A.dtype}"
        return A @ V
    return BlockOperator(matmat, like=A[:, 0])


def rademacher_blocks(seed, P, samples, block):
    """The probes the estimators draw for this seed, block by block, as the module docstring says."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(np.array([-1.0, 1.0]), size=(P, min(block, samples - start)))
                           for start in range(0, samples, block)], axis=1)


def test_the_defaults_are_the_documented_ones():
    """100 probes in blocks of 10 (trace, diagonal), 99 products (Hutch++), 80 steps of 10 probes (density),
    seed 0 for all."""
    M, _ = symmetric(np.random.default_rng(1), 90)
    operator = device_operator(M)
    same = [(spectrum.hutchinson_trace, dict(samples=100, seed=0, block=10)),
            (spectrum.hutchpp_trace, dict(products=99, seed=0, block=None))]
    for estimator, defaults in same:
        assert estimator(operator) == estimator(operator, **defaults), estimator.__name__
    by_default, given_ = spectrum.spectral_density(operator), spectrum.spectral_density(operator, 80, 10, 0)
    np.testing.assert_array_equal(by_default.nodes, given_.nodes)
    np.testing.assert_array_equal(by_default.weights, given_.weights)
    by_default, given_ = spectrum.diagonal(operator), spectrum.diagonal(operator, samples=100, seed=0, block=10)
    np.testing.assert_array_equal(to_numpy(by_default.value), to_numpy(given_.value))
    assert spectrum.spectral_density(operator).nodes.shape == (10, 80)


@pytest.mark.parametrize("estimator, settings, message", [
    (spectrum.hutchinson_trace, {"samples": 0}, r"^samples must be a positive integer"),
    (spectrum.hutchinson_trace, {"block": 0}, r"^block must be a positive integer"),
    (spectrum.diagonal, {"samples": 0}, r"^samples must be a positive integer"),
    (spectrum.diagonal, {"block": 0}, r"^block must be a positive integer"),
    (spectrum.hutchpp_trace, {"products": 0}, r"^products must be a positive integer"),
    (spectrum.spectral_density, {"steps": 0}, r"^steps must be a positive integer"),
    (spectrum.spectral_density, {"probes": 0}, r"^probes must be a positive integer")])
def test_a_bad_setting_is_named(estimator, settings, message):
    with pytest.raises(ValueError, match=message):
        estimator(device_operator(np.eye(3)), **settings)


def test_hutchinson_and_the_diagonal_against_their_definitions():
    """Hutchinson: the mean of zᵀAz and its sample standard deviation (ddof 1) over √m; the diagonal: the mean of
    z ⊙ Az and, per entry, the same standard error; one probe: no spread to measure (inf)."""
    P, samples, block = 9, 13, 4
    M, _ = symmetric(np.random.default_rng(2), P)
    Z = rademacher_blocks(5, P, samples, block)
    quadratic, terms = np.einsum("ps,ps->s", Z, M @ Z), Z * (M @ Z)
    trace = spectrum.hutchinson_trace(device_operator(M), samples=samples, seed=5, block=block)
    assert trace.value == pytest.approx(quadratic.mean(), rel=1e-12)
    assert trace.std_error == pytest.approx(quadratic.std(ddof=1) / np.sqrt(samples), rel=1e-12)
    diagonal = spectrum.diagonal(device_operator(M), samples=samples, seed=5, block=block)
    np.testing.assert_allclose(to_numpy(diagonal.value), terms.mean(axis=1), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(to_numpy(diagonal.std_error), terms.std(axis=1, ddof=1) / np.sqrt(samples),
                               rtol=1e-9, atol=1e-14)
    assert spectrum.hutchinson_trace(device_operator(M), samples=1).std_error == np.inf
    two = spectrum.diagonal(device_operator(M), samples=2, seed=5, block=4)
    Z = rademacher_blocks(5, P, 2, 4)
    terms = Z * (M @ Z)
    np.testing.assert_allclose(to_numpy(two.std_error), terms.std(axis=1, ddof=1) / np.sqrt(2), rtol=1e-9, atol=1e-14)
    assert spectrum.hutchinson_trace(device_operator(M), samples=2).std_error < np.inf


def test_hutchpp_against_its_definition():
    """tr(QᵀAQ) + the Hutchinson mean over (I − QQᵀ)g, its standard error the sample standard deviation (ddof
    1) over √k; with 3 products (k = 1) the error is inf; fewer than 3 are refused."""
    P, products = 20, 15
    M, _ = symmetric(np.random.default_rng(3), P)
    k = products // 3
    rng = np.random.default_rng(4)
    S = rng.choice(np.array([-1.0, 1.0]), size=(P, k))
    Q, _ = np.linalg.qr(M @ S)
    G = rng.choice(np.array([-1.0, 1.0]), size=(P, k))
    G = G - Q @ (Q.T @ G)
    rest = np.einsum("pk,pk->k", G, M @ G)
    got = spectrum.hutchpp_trace(device_operator(M), products=products, seed=4)
    assert got.value == pytest.approx(np.trace(Q.T @ M @ Q) + rest.mean(), rel=1e-10)
    assert got.std_error == pytest.approx(rest.std(ddof=1) / np.sqrt(k), rel=1e-10)
    assert spectrum.hutchpp_trace(device_operator(M), products=3).std_error == np.inf
    assert np.isfinite(spectrum.hutchpp_trace(device_operator(M), products=6).std_error)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_estimator_works_in_the_operators_dtype(dtype):
    M, _ = symmetric(np.random.default_rng(5), 8)
    operator = dtype_checking_operator(M, dtype)
    spectrum.hutchinson_trace(operator, samples=5)
    spectrum.hutchpp_trace(operator, products=6)
    spectrum.spectral_density(operator, steps=4, probes=2)
    assert to_numpy(spectrum.diagonal(operator, samples=5).value).dtype == dtype


def test_a_closed_krylov_space_stops_its_probe():
    """A has three distinct eigenvalues (100, 200, 300 on a 20-dimensional space): each probe's Krylov space
    closes after 3 steps, so its density has exactly 3 nodes with weight — at the eigenvalues, with weights the
    probe's squared components in their eigenspaces — and every later slot weight 0; the same at any scale of A
    (×1e-14), and the zero operator has one node at 0 with weight 1."""
    P = 20
    Q, _ = np.linalg.qr(np.random.default_rng(6).standard_normal((P, P)))
    values = np.repeat([100.0, 200.0, 300.0], [7, 7, 6])
    M = (Q * values) @ Q.T
    V = probes(7, P, 4)
    for scale in (1.0, 1e-14):                 # at 1e-14 every β is below 1e-12: the test is relative to |α|
        density = spectrum.spectral_density(device_operator(scale * M), steps=8, probes=4, seed=7)
        assert np.count_nonzero(density.weights, axis=1).tolist() == [3, 3, 3, 3], scale
        for p in range(4):
            shares = [np.sum((Q[:, values == value].T @ V[:, p]) ** 2) for value in (100.0, 200.0, 300.0)]
            with_weight = density.weights[p] > 0
            np.testing.assert_allclose(density.nodes[p, with_weight], scale * np.array([100.0, 200.0, 300.0]),
                                       rtol=1e-10)
            np.testing.assert_allclose(density.weights[p, with_weight], shares, rtol=1e-8)
    zero = spectrum.spectral_density(device_operator(np.zeros((5, 5))), steps=3, probes=2)
    assert np.isfinite(zero.nodes).all() and np.count_nonzero(zero.weights, axis=1).tolist() == [1, 1]
    np.testing.assert_allclose(zero.weights[:, 0], 1.0)


def test_the_smoothed_density_is_its_definition():
    """φ(x) = (1/p) Σ_probes Σ_j τ_j N(x; θ_j, w²) on a grid, for nodes that are not symmetric about 0."""
    density = spectrum.Density(np.array([[1.0, 3.0], [2.0, 5.0]]), np.array([[0.25, 0.75], [0.5, 0.5]]), 4)
    grid, width = np.array([0.0, 1.5, 4.0]), 0.7

    def normal(x, mean):
        return np.exp(-0.5 * ((x - mean) / width) ** 2) / (width * np.sqrt(2 * np.pi))
    expected = [(0.25 * normal(x, 1) + 0.75 * normal(x, 3) + 0.5 * normal(x, 2) + 0.5 * normal(x, 5)) / 2
                for x in grid]
    np.testing.assert_allclose(density.smoothed(grid, width), expected, rtol=1e-14)
