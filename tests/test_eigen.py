"""Top eigenpairs: every method against numpy.linalg.eigh on known spectra and on tiny nets."""

import warnings

import numpy as np
import pytest
from hypothesis import given, strategies as st
from scipy.sparse.linalg import aslinearoperator

import nn_eos as ne
from checks import build_problem, device_operator, device_xp
from nn_eos.backend import to_numpy
from nn_eos.eigen import NonConvergenceWarning, top_eigenpairs
from nn_eos.eigen import solvers

METHODS = ["power", "krylov", "lobpcg", "lanczos"]
BY_MAGNITUDE = ("power", "krylov")   # block iterations rank by |λ|; lobpcg and eigsh algebraically
RTOL = 1e-8        # eigenvalues and subspace angles against eigh
SOLVER_TOL = 1e-10  # relative residuals asked of the solvers


def matrix_with_spectrum(eigenvalues, seed):
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(eigenvalues),) * 2))
    return (Q * eigenvalues) @ Q.T


def expected_top(M, k, method):
    """eigh's top k: by magnitude for power iteration, algebraically for the others; decreasing."""
    w, U = np.linalg.eigh(M)
    order = np.argsort(-np.abs(w) if method in BY_MAGNITUDE else -w)[:k]
    order = order[np.argsort(-w[order])]
    return w[order], U[:, order]


def subspace_sine(X, U):
    """sin of the largest principal angle between span(X) and span(U), both orthonormal."""
    return np.linalg.norm(X - U @ (U.T @ X), ord=2)


@st.composite
def spectra(draw):
    """Spectra with a gap after the k-th eigenvalue, of several shapes: (eigenvalues, k, kind)."""
    P = draw(st.integers(6, 40))
    k = draw(st.integers(1, min(P - 1, 8)))
    kind = draw(st.sampled_from(["spread", "clustered", "negative", "near_degenerate", "k_close_to_P"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "k_close_to_P":
        k = P - 1
    top = np.sort(rng.uniform(2.0, 10.0, size=k))[::-1]
    if kind == "clustered":
        top = 5.0 + 1e-3 * np.arange(k)[::-1]                 # all k within 1e-3·k of each other
    if kind == "near_degenerate" and k >= 2:
        top[1] = top[0] * (1 - 1e-9)                          # the two top eigenvalues 1e-9 apart
    rest = rng.uniform(-1.0, 1.0, size=P - k)
    if kind == "negative" and k >= 2:
        top[-1] = -top[-1]                                    # a large negative eigenvalue among the top |λ|
    return np.concatenate([top, rest]), k, kind


@pytest.mark.parametrize("method", METHODS)
@given(case=spectra(), seed=st.integers(0, 100))
def test_matches_eigh_on_known_spectra(method, case, seed):
    eigenvalues, k, kind = case
    if method not in BY_MAGNITUDE and kind == "negative" and k >= 2:
        k -= 1  # algebraically the negative eigenvalue is not among the top; the gap sits after k − 1
    M = matrix_with_spectrum(eigenvalues, seed)
    w, U = expected_top(M, k, method)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonConvergenceWarning)
        res = top_eigenpairs(device_operator(M), k, method=method, tol=SOLVER_TOL, seed=seed)
    assert res.converged and res.residual_norms.max() < SOLVER_TOL
    np.testing.assert_allclose(to_numpy(res.values), w, rtol=RTOL, atol=RTOL * np.abs(w).max())
    X = to_numpy(res.vectors)
    np.testing.assert_allclose(X.T @ X, np.eye(k), atol=1e-12)
    assert subspace_sine(X, U) < RTOL, "the top-k subspace"
    assert np.array_equal(res.negative, to_numpy(res.values) < 0)
    assert res.matvecs > 0 and res.method == method


@pytest.mark.parametrize("kind", ["hessian", "ggn", "residual"])
@pytest.mark.parametrize("method", METHODS)
def test_matches_eigh_on_dense_curvature_of_a_tiny_net(kind, method):
    p = build_problem([4, 4, 3], "tanh", "cross_entropy", n=6, seed=11)
    operator = {"hessian": p.loss.hvp, "ggn": p.loss.ggn, "residual": p.loss.residual}[kind]
    M = to_numpy(operator(np.eye(p.net.num_params)))
    k = 2
    w, _ = expected_top((M + M.T) / 2, k, method)
    res = top_eigenpairs(operator, k, method=method, tol=SOLVER_TOL, maxiter=5000)
    assert res.converged
    np.testing.assert_allclose(to_numpy(res.values), w, rtol=RTOL)


def test_methods_agree_on_a_small_mlp():
    """On G (PSD) the largest |λ| and the largest λ are the same, so all three methods must agree."""
    p = build_problem([8, 6, 6, 3], "tanh", "cross_entropy", n=20, seed=5)
    results = {m: top_eigenpairs(p.loss.ggn, 3, method=m, tol=1e-9, maxiter=5000) for m in METHODS}
    reference = to_numpy(results["lanczos"].values)
    for m, res in results.items():
        assert res.converged, m
        np.testing.assert_allclose(to_numpy(res.values), reference, rtol=1e-8, err_msg=m)


@pytest.mark.parametrize("method", ["power", "krylov"])
def test_warm_start_converges_in_at_most_three_iterations_for_a_well_separated_top_k(method):
    """The operator one step later: eigenvectors rotated by ~1e-4, eigenvalues moved by ~1e-3.

    With λ_{k+1}/λ_k = 0.02 each power step divides the error by 50, so the old
    eigenvectors reach a relative residual of 1e-6 within 3 block products.
    """
    P, k = 60, 4
    rng = np.random.default_rng(0)
    eigenvalues = np.concatenate([[50.0, 40.0, 30.0, 20.0], rng.uniform(-0.4, 0.4, P - k)])
    Q, _ = np.linalg.qr(rng.standard_normal((P, P)))
    before = (Q * eigenvalues) @ Q.T
    S = rng.standard_normal((P, P))
    rotation, _ = np.linalg.qr(np.eye(P) + 1e-4 * (S - S.T))
    Q2 = Q @ rotation
    after = (Q2 * (eigenvalues * (1 + 1e-3 * rng.standard_normal(P)))) @ Q2.T
    blocks = {"block": k} if method == "krylov" else {}          # krylov's block mode: k directions a product
    previous = top_eigenpairs(device_operator(before), k, tol=1e-6, method=method, **blocks)
    warm = top_eigenpairs(device_operator(after), k, V0=previous.vectors, tol=1e-6, method=method, **blocks)
    cold = top_eigenpairs(device_operator(after), k, tol=1e-6, method=method, **blocks)
    assert warm.converged and warm.iterations <= 3 < cold.iterations
    np.testing.assert_allclose(to_numpy(warm.values), to_numpy(cold.values), rtol=1e-10)


@pytest.mark.parametrize("method", ["power", "krylov"])
def test_warm_start_saves_iterations_on_a_network(method):
    """On a small ELU net with a top pair separated by λ_3/λ_2 ≈ 0.23, one small GD step later."""
    rng = np.random.default_rng(0)
    means = 2 * rng.standard_normal((4, 10))
    y = np.arange(300) % 4
    X = means[y] + rng.standard_normal((300, 10)) + 3.0
    net = ne.mlp([10, 32, 32, 4], activation="elu", seed=0)
    loss = ne.TrainingLoss(net, "cross_entropy", X, y)
    previous = top_eigenpairs(loss.hvp, 2, tol=1e-6, method=method)
    net.set_theta(to_numpy(net.theta) - 0.01 / float(previous.values[0]) * to_numpy(loss.gradient()))
    warm = top_eigenpairs(loss.hvp, 2, V0=previous.vectors, tol=1e-6, method=method)
    cold = top_eigenpairs(loss.hvp, 2, tol=1e-6, method=method)
    assert warm.converged and cold.converged and warm.iterations < cold.iterations
    np.testing.assert_allclose(to_numpy(warm.values), to_numpy(cold.values), rtol=1e-9)


def residuals(M, result):
    """The relative residuals ‖M v − λ v‖ / |λ| of a result's pairs, on the host."""
    values, vectors = to_numpy(result.values), to_numpy(result.vectors)
    return np.linalg.norm(M @ vectors - vectors * values, axis=0) / np.abs(values)


@pytest.mark.parametrize("method", METHODS)
def test_non_convergence_warns_and_returns_the_residuals(method):
    """Regression (lanczos): ARPACK raised ArpackNoConvergence out of top_eigenpairs when maxiter ran out."""
    M = matrix_with_spectrum(np.linspace(1.0, 0.9, 30), seed=0)   # no gap: every method crawls
    with pytest.warns(NonConvergenceWarning, match=f"{method} did not reach tol"):
        res = top_eigenpairs(device_operator(M), 3, tol=1e-12, maxiter=2, method=method)
    assert not res.converged and res.residual_norms.max() >= 1e-12
    assert res.values.shape == ((2,) if method == "krylov" else (3,))  # krylov: 2 products span 2 directions
    np.testing.assert_allclose(to_numpy(res.residual_norms), residuals(M, res), rtol=1e-6, atol=1e-14)
    if method == "lanczos":                 # ARPACK's pairs that had converged are kept, the rest drawn afresh
        assert np.sort(to_numpy(res.residual_norms))[:2].max() < 1e-12
    if method in ("power", "krylov"):                              # maxiter counts their block products
        assert res.iterations == 2 and res.matvecs == 2 * (3 if method == "power" else 1)
    assert isinstance(res.iterations, int) and res.iterations >= 1


def test_krylov_needs_far_fewer_products_than_power_iteration_on_a_slowly_decaying_spectrum():
    """Power iteration keeps only its last block; the Krylov basis keeps them all."""
    eigenvalues = np.concatenate([np.linspace(10, 8, 6), np.linspace(7.5, 0.1, 60)])
    op = device_operator(matrix_with_spectrum(eigenvalues, seed=3))
    power = top_eigenpairs(op, 4, tol=1e-8, maxiter=5000)
    krylov = top_eigenpairs(op, 4, method="krylov", tol=1e-8)
    assert power.converged and krylov.converged and krylov.matvecs < power.matvecs / 5
    np.testing.assert_allclose(to_numpy(krylov.values), to_numpy(power.values), rtol=1e-12)


def test_guard_vectors_speed_up_convergence():
    eigenvalues = np.concatenate([[10, 9, 8, 7.9, 7.8, 7.7], np.linspace(1, 0.1, 40)])
    op = device_operator(matrix_with_spectrum(eigenvalues, seed=1))
    plain = top_eigenpairs(op, 3, tol=1e-8, maxiter=5000)
    guarded = top_eigenpairs(op, 3, tol=1e-8, guard=3, maxiter=5000)
    assert guarded.converged and plain.converged and guarded.iterations < plain.iterations / 3


@pytest.mark.filterwarnings("ignore::nn_eos.eigen.NonConvergenceWarning")
def test_seeding_is_deterministic():
    op = device_operator(matrix_with_spectrum(np.linspace(5, 0, 20), seed=2))
    a, b = top_eigenpairs(op, 2, seed=7, tol=1e-3, maxiter=3), top_eigenpairs(op, 2, seed=7, tol=1e-3, maxiter=3)
    np.testing.assert_array_equal(to_numpy(a.vectors), to_numpy(b.vectors))


def test_bad_arguments():
    M = np.diag(np.arange(1.0, 6.0))
    op = aslinearoperator(M)
    with pytest.raises(ValueError, match=r"k must lie in 1..P = 1..5, got 0"):
        top_eigenpairs(op, 0)
    with pytest.raises(ValueError, match=r"k must lie in 1..P = 1..5, got 6"):
        top_eigenpairs(op, 6)
    with pytest.raises(TypeError, match="k must be an integer"):
        top_eigenpairs(op, 2.0)
    with pytest.raises(ValueError, match=r"V0 must have shape \(5,\) or \(5, m\).*got \(4, 2\)"):
        top_eigenpairs(op, 2, V0=np.ones((4, 2)))
    with pytest.raises(ValueError, match="unknown method 'arnoldi'"):
        top_eigenpairs(op, 2, method="arnoldi")
    with pytest.raises(ValueError, match="cannot tell the operator's size"):
        top_eigenpairs(lambda V: V, 2)
    with pytest.raises(ValueError, match=r"returned shape \(5, 1\) for a block of shape \(5, 2\)"):
        top_eigenpairs(lambda V: V[:, :1], 2, V0=np.eye(5)[:, :2])
    for method in METHODS:
        with pytest.raises(ValueError, match="NaN or infinite"):
            top_eigenpairs(lambda V: V * np.nan, 2, V0=np.eye(5)[:, :2], method=method)
    with pytest.raises(ValueError, match="guard must be"):
        top_eigenpairs(op, 2, guard=-1)
    with pytest.raises(ValueError, match="tol must be positive, got 0"):
        top_eigenpairs(op, 2, tol=0.0)
    with pytest.raises(ValueError, match=r"V0 must have shape \(5,\) or \(5, m\).*got None"):
        top_eigenpairs(op, 2, V0=[[1.0, 0.0]] * 5)                    # not an array


def test_eigenvalue_stopping_is_looser_but_keeps_eigenvalues_accurate():
    """The paper's test (Ritz values stop changing) ends sooner; Ritz values are still accurate to ~tol."""
    eigenvalues = np.concatenate([[10.0, 8.0, 6.0], np.linspace(3.0, 0.1, 40)])
    op = device_operator(matrix_with_spectrum(eigenvalues, seed=4))
    residual = top_eigenpairs(op, 3, tol=1e-6)
    by_values = top_eigenpairs(op, 3, tol=1e-6, stop="eigenvalues")
    assert by_values.converged and by_values.iterations < residual.iterations
    np.testing.assert_allclose(to_numpy(by_values.values), [10.0, 8.0, 6.0], rtol=1e-5)
    with pytest.raises(ValueError, match="stop must be one of"):
        top_eigenpairs(op, 3, method="lanczos", stop="eigenvalues")


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [7, 20])
def test_cold_krylov_needs_no_more_products_than_eigsh(seed, k):
    """The bar of bench/eigen.py, on a Hessian-like spectrum: a few outliers, a slowly decaying bulk (top-k
    gaps of ~2%) and negative eigenvalues. Started from a small block, the Krylov basis grows its degree as
    fast as Lanczos does (a block of one direction, the default on NumPy; on a device the default block of
    4 spends more products in fewer calls)."""
    rng = np.random.default_rng(seed)
    P = 1500
    eigenvalues = np.concatenate([[100, 70, 50, 35, 25], 8 * np.exp(-np.arange(P - 205) / 60), -2 * rng.random(200)])
    op = device_operator(matrix_with_spectrum(eigenvalues, seed=seed))
    krylov = top_eigenpairs(op, k, method="krylov", tol=1e-6, block=1)
    eigsh = top_eigenpairs(op, k, method="lanczos", tol=1e-6)
    assert krylov.converged and eigsh.converged and krylov.matvecs <= eigsh.matvecs
    np.testing.assert_allclose(to_numpy(krylov.values), np.sort(eigenvalues)[::-1][:k], rtol=1e-10)


def test_krylov_goes_on_past_an_invariant_subspace_smaller_than_k():
    """A single start vector's Krylov space of an operator with 3 distinct eigenvalues is 3-dimensional;
    the top 4 pairs (the last one from a 28-fold eigenvalue) still come out, from fresh directions."""
    eigenvalues = np.concatenate([[5.0, 3.0], np.ones(28)])
    res = top_eigenpairs(device_operator(matrix_with_spectrum(eigenvalues, seed=0)), 4, method="krylov", tol=1e-10)
    assert res.converged
    np.testing.assert_allclose(to_numpy(res.values), [5, 3, 1, 1], rtol=1e-12)


@pytest.mark.parametrize("block", [1, 3, 8])
def test_krylov_block_sizes_agree(block):
    M = matrix_with_spectrum(np.concatenate([[9, 7, 6, 5.5], np.linspace(3, -3, 80)]), seed=2)
    res = top_eigenpairs(device_operator(M), 4, method="krylov", tol=1e-9, block=block)
    assert res.converged
    np.testing.assert_allclose(to_numpy(res.values), [9, 7, 6, 5.5], rtol=1e-12)


@pytest.mark.parametrize("bad, message", [(dict(block=0), "block must be a positive integer or None, got 0"),
                                          (dict(block=2.5), "block must be a positive integer or None, got 2.5"),
                                          (dict(block=2, method="power"), "block is for method='krylov' only")])
def test_bad_block_is_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        top_eigenpairs(aslinearoperator(np.eye(5)), 2, **{"method": "krylov", **bad})


@pytest.mark.parametrize("which, expected", [("LM", [-10, 5]), ("LA", [5, 4])])
def test_krylov_ranks_by_magnitude_or_by_value(which, expected):
    M = matrix_with_spectrum(np.concatenate([[-10, 5, 4], np.linspace(-2, 2, 50)]), seed=5)
    res = top_eigenpairs(device_operator(M), 2, method="krylov", which=which, tol=1e-10)
    assert res.converged
    np.testing.assert_allclose(np.sort(to_numpy(res.values)), np.sort(expected), rtol=1e-12)


@pytest.mark.parametrize("method, which", [("power", "LA"), ("lanczos", "LM"), ("krylov", "SA")])
def test_unavailable_ranking_is_refused(method, which):
    with pytest.raises(ValueError, match="which must be"):
        top_eigenpairs(aslinearoperator(np.eye(5)), 2, method=method, which=which)


def test_krylov_takes_one_direction_per_product_unless_asked_for_a_block():
    """Blocks of 1 by default on NumPy and on a device (measured on an H200: krylov.default_block); a wider
    block makes fewer products of more directions and finds the same eigenpairs."""
    from nn_eos import backend
    from nn_eos.eigen import krylov

    assert krylov.default_block(np) == 1 and krylov.default_block(backend.module_for("strict")) == krylov.DEVICE_BLOCK
    M = matrix_with_spectrum(np.linspace(10, 1, 40), seed=5)
    default = top_eigenpairs(device_operator(M), 6, method="krylov", tol=1e-9)
    wide = top_eigenpairs(device_operator(M), 6, method="krylov", tol=1e-9, block=4)
    for res in (default, wide):
        np.testing.assert_allclose(to_numpy(res.values), np.linspace(10, 1, 40)[:6], rtol=1e-9)
    assert default.matvecs == default.iterations * krylov.DEVICE_BLOCK
    assert wide.matvecs > wide.iterations and wide.iterations < default.iterations


def _counting_grams(monkeypatch):
    """A list that grows by one at every host read (one per pass of _new_directions: its Gram matrix)."""
    from nn_eos import backend
    reads, to_numpy_ = [], backend.to_numpy
    monkeypatch.setattr(backend, "to_numpy", lambda a: reads.append(1) or to_numpy_(a))
    return reads


@pytest.mark.parametrize("seed", range(40))
def test_new_directions_drop_what_only_rounding_puts_outside_the_basis(monkeypatch, seed):
    """8 directions against a basis of 32 in R^39 leave at most 7: the 8th is rounding, whose λ in the SVQB
    Gram may come out a positive ~1e-16 — kept, it would be blown up into a non-orthogonal column, and cost
    passes to take out again (two passes: the projection removed much)."""
    from nn_eos.eigen.krylov import _new_directions
    rng = np.random.default_rng(seed)
    Q = device_xp.asarray(np.linalg.qr(rng.standard_normal((39, 32)))[0])
    grams = _counting_grams(monkeypatch)
    R = to_numpy(_new_directions(device_xp.asarray(rng.standard_normal((39, 8))), Q, device_xp))
    assert R.shape[1] == 7 and len(grams) == 2                         # two passes
    np.testing.assert_allclose(R.T @ R, np.eye(7), atol=1e-12)
    np.testing.assert_allclose(to_numpy(Q).T @ R, 0, atol=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_block_krylov_notices_a_non_finite_product_in_its_small_matrices(bad):
    """Block Krylov skips the scan of every product (a sync on a GPU): a NaN or inf in A W reaches the borders
    of T and G, which it reads anyway — also when only a later product goes wrong."""
    M = matrix_with_spectrum(np.linspace(1, 10, 30), 0)
    calls = []

    def operator(V):
        calls.append(1)
        out = M @ to_numpy(V)
        if len(calls) == 3:
            out[7, 0] = bad
        return device_xp.asarray(out)
    with pytest.raises(ValueError, match="NaN or infinite"):
        top_eigenpairs(ne.eigen.BlockOperator(operator, like=device_xp.zeros(30)), 3, method="krylov",
                       tol=1e-12)
    assert len(calls) == 3


@pytest.mark.parametrize("method", ["power", "krylov", "lobpcg", "lanczos"])
@pytest.mark.parametrize("missing", [0, 1])
def test_every_eigenpair_of_a_small_operator_converges_even_a_zero_one(method, missing):
    """k = P and k = P − 1 with an exact zero eigenvalue: the answer is exact, and converged is judged against the
    operator's scale (the residual of a zero eigenvalue divided by the eigenvalue is rounding over rounding)."""
    rng = np.random.default_rng(0)
    M = rng.standard_normal((6, 6))
    M = M + M.T
    M[0, :] = M[:, 0] = 0                                          # a zero eigenvalue
    k = 6 - missing
    with warnings.catch_warnings():
        warnings.simplefilter("error", ne.NonConvergenceWarning)
        result = ne.top_eigenpairs(device_operator(M), k, method=method)
    assert result.converged
    if method == "lanczos":                                         # dense: one block product of the identity
        assert (result.iterations, result.matvecs) == (1, 6)
    exact = np.linalg.eigvalsh(M)
    order = np.argsort(-np.abs(exact)) if method == "power" or method == "krylov" else np.argsort(-exact)
    expected = np.sort(exact[order[:k]])[::-1]
    np.testing.assert_allclose(np.sort(to_numpy(result.values))[::-1], expected, atol=1e-12)


def ranked(eigenvalues, k, method):
    """The documented result: the top k by |λ| (power, krylov) or by λ (lobpcg, lanczos), in decreasing λ."""
    w = np.asarray(eigenvalues, dtype=float)
    chosen = w[np.argsort(-np.abs(w) if method in BY_MAGNITUDE else -w, kind="stable")[:k]]
    return np.sort(chosen)[::-1]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("P, k", [(40, 3), (6, 5), (6, 6)])       # k ≥ P − 1 takes the dense route
def test_eigenpairs_come_in_the_documented_order_beside_a_large_negative_eigenvalue(method, P, k):
    """A negative eigenvalue larger in magnitude than every positive one changes both which eigenpairs a
    ranking by |λ| picks and how a sort by |λ| would order them: the values must be the documented top k in
    decreasing order, and each vector must belong to its value."""
    rest = np.linspace(-0.5, 0.4, P - 4)                  # no two |λ| equal
    eigenvalues = np.concatenate([[-50.0, 10.0, 8.0, -30.0], rest])
    M = matrix_with_spectrum(eigenvalues, seed=P + k)
    res = top_eigenpairs(device_operator(M), k, method=method, tol=1e-10, maxiter=5000)
    values, vectors = to_numpy(res.values), to_numpy(res.vectors)
    np.testing.assert_allclose(values, ranked(eigenvalues, k, method), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(M @ vectors, vectors * values, atol=1e-7 * 50)
    assert np.array_equal(res.negative, values < 0)


@pytest.mark.parametrize("method", METHODS + ["power-eigenvalues"])
@pytest.mark.parametrize("scale", [2.0 ** -13, 2.0 ** 13])                # about 1e-4 and 1e4
def test_tolerances_are_relative_to_the_spectrum(method, scale):
    """The same spectrum scaled by a power of two (so every floating-point step scales exactly): a relative
    tolerance takes the same products to the same relative accuracy; an absolute one would stop at once on
    the small spectrum and never on the large one."""
    eigenvalues = np.concatenate([[9.0, 7.0, 6.0], np.linspace(-1.0, 1.0, 60)])
    M = matrix_with_spectrum(eigenvalues, seed=4)
    kwargs = dict(method=method, tol=1e-8, seed=0, maxiter=2000)
    if method == "power-eigenvalues":                          # the 2024 paper's test, on Ritz values
        kwargs.update(method="power", stop="eigenvalues", tol=1e-12)
    base = top_eigenpairs(device_operator(M), 3, **kwargs)
    scaled = top_eigenpairs(device_operator(M * scale), 3, **kwargs)
    assert base.converged and scaled.converged
    assert scaled.matvecs == base.matvecs
    np.testing.assert_allclose(to_numpy(scaled.values), scale * np.array([9.0, 7.0, 6.0]), rtol=1e-7)
    np.testing.assert_allclose(to_numpy(scaled.residual_norms), to_numpy(base.residual_norms), rtol=1e-6,
                               atol=1e-12)


@pytest.mark.parametrize("method", BY_MAGNITUDE)
@pytest.mark.parametrize("guard", [0, 3])
def test_guard_vectors_do_not_change_which_eigenpairs_are_returned(method, guard):
    """With guard vectors the block holds more Ritz pairs than k: the k returned are still the documented top k
    (by |λ|), beside a large negative eigenvalue."""
    eigenvalues = np.concatenate([[-50.0, 10.0, 8.0, -30.0], np.linspace(-0.5, 0.4, 36)])
    M = matrix_with_spectrum(eigenvalues, seed=9)
    res = top_eigenpairs(device_operator(M), 3, method=method, tol=1e-10, maxiter=5000, guard=guard)
    np.testing.assert_allclose(to_numpy(res.values), ranked(eigenvalues, 3, method), rtol=1e-8)


def test_no_eigenpairs_are_not_converged_ones():
    from nn_eos.eigen.ritz import within_tol
    assert not within_tol(np.zeros(0), np.zeros(0), 1e-6, np.float64, 10)
    assert within_tol(np.array([1e-9]), np.array([2.0]), 1e-6, np.float64, 10)
    assert not within_tol(np.array([1e-5]), np.array([2.0]), 1e-6, np.float64, 10)


@pytest.mark.parametrize("method", METHODS)
def test_float32_operators_get_float32_answers_converged_at_float32_rounding(method):
    """A float32 operator is solved in float32 (start block, restarts, results), and a tol below float32's
    rounding is met at rounding (ROUNDING √P eps max|λ|, ritz.within_tol) instead of never."""
    M = matrix_with_spectrum(np.concatenate([[9.0, 7.0, 6.0], np.linspace(-2.0, 2.0, 37)]), seed=2)
    A = device_xp.asarray(M.astype(np.float32))
    operator = ne.eigen.BlockOperator(lambda V: A @ V, like=A[:, 0])
    res = top_eigenpairs(operator, 3, method=method, tol=1e-12, maxiter=3000, warn=False)
    assert res.values.dtype == np.float32 and res.vectors.dtype == np.float32
    assert res.converged
    # regression (lobpcg): a tol below rounding cost 9018 products (maxiter, three times) where 38 reach rounding
    assert res.matvecs <= 2 * top_eigenpairs(operator, 3, method=method, tol=1e-4, maxiter=3000).matvecs
    # on the stand-in nothing meets a float64 array, on the Krylov route or the dense one (k ≥ P − 1)
    from nn_eos.strict import counting, strict
    for size, k in [(40, 3), (4, 3)]:
        B = strict.asarray(M[:size, :size].astype(np.float32))
        with counting() as counts:
            small = top_eigenpairs(ne.eigen.BlockOperator(lambda V: B @ V, like=B[:, 0]), k, method=method,
                                   tol=1e-12, maxiter=3000, warn=False)
        assert small.values.dtype == np.float32 and counts["promotions"] == 0, (size, counts)
    np.testing.assert_allclose(to_numpy(res.values), [9.0, 7.0, 6.0], rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("k", [1, 3])
def test_the_zero_operator_has_converged_zero_eigenpairs(method, k):
    """H of a linear model is zero: ARPACK's Krylov space closes at once (lanczos answers by power iteration
    then, under its own name); every method returns k orthonormal eigenvectors of eigenvalue 0, converged."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonConvergenceWarning)
        res = top_eigenpairs(device_operator(np.zeros((30, 30))), k, method=method, tol=1e-8)
    assert res.converged and res.method == method and isinstance(res.iterations, int) and res.iterations >= 1
    np.testing.assert_array_equal(to_numpy(res.values), np.zeros(k))
    vectors = to_numpy(res.vectors)
    assert vectors.shape == (30, k) and vectors.dtype == np.float64
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(k), atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_warm_started_from_the_last_answer_needs_fewer_products(method):
    """One step later on a crowded spectrum (50, 45, 42, 40, then up to 39): the previous eigenvectors (for
    lanczos, their sum as ARPACK's one start vector) save products against a cold start, same answer."""
    P, k = 60, 2
    rng = np.random.default_rng(0)
    eigenvalues = np.concatenate([[50.0, 45.0, 42.0, 40.0], rng.uniform(0, 39, P - 4)])
    Q, _ = np.linalg.qr(rng.standard_normal((P, P)))
    S = rng.standard_normal((P, P))
    Q2 = Q @ np.linalg.qr(np.eye(P) + 1e-4 * (S - S.T))[0]
    before = device_operator((Q * eigenvalues) @ Q.T)
    after = device_operator((Q2 * (eigenvalues * (1 + 1e-3 * rng.standard_normal(P)))) @ Q2.T)
    previous = top_eigenpairs(before, k, tol=1e-8, method=method, maxiter=3000)
    warm = top_eigenpairs(after, k, V0=previous.vectors, tol=1e-8, method=method, maxiter=3000)
    cold = top_eigenpairs(after, k, tol=1e-8, method=method, maxiter=3000)
    assert warm.converged and cold.converged and warm.matvecs <= 0.8 * cold.matvecs, (warm.matvecs, cold.matvecs)
    np.testing.assert_allclose(to_numpy(warm.values), to_numpy(cold.values), rtol=1e-7)
    if method != "krylov":                         # (which draws random directions to grow its space)
        again = top_eigenpairs(after, k, V0=previous.vectors, tol=1e-8, method=method, maxiter=3000, seed=99)
        assert again.matvecs == warm.matvecs       # k start vectors given: no random one is drawn, the seed is moot


@pytest.mark.parametrize("method", METHODS)
def test_the_seed_decides_the_random_start_of_every_method(method):
    """On the host, so that equal means bit for bit: the same seed, the same vectors; another seed, others."""
    M = matrix_with_spectrum(np.linspace(5, 0, 40), seed=2)
    op = ne.eigen.BlockOperator(lambda V: M @ V, like=np.zeros(40))
    a, b, c = (top_eigenpairs(op, 2, seed=s, tol=1e-3, maxiter=3, method=method, warn=False) for s in (7, 7, 8))
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert not np.array_equal(a.vectors, c.vectors)


def test_eigsh_limits_mean_the_same_on_both_backends():
    """SciPy's eigsh takes a relative tol and counts restarts; cupyx's takes an absolute tol and counts Lanczos
    steps: the conversion (tol · ‖A v0‖/‖v0‖ ≤ |λ_1|, maxiter · ncv with cupyx's ncv) checked with a module that
    says it is cupyx's, on an operator whose ‖A v0‖/‖v0‖ is known."""
    from types import SimpleNamespace

    from nn_eos.eigen.solvers import CountingOperator, _eigsh_limits

    P = 100
    A = CountingOperator(ne.eigen.BlockOperator(lambda V: 3.0 * V, like=np.zeros(P)), P, np, np.float64,
                          check_finite=True)
    v0 = np.random.default_rng(0).standard_normal(P)
    scipy_like = SimpleNamespace(__name__="scipy.sparse.linalg")
    cupyx_like = SimpleNamespace(__name__="cupyx.scipy.sparse.linalg")
    assert _eigsh_limits(scipy_like, A, v0, 2, 1e-6, 50) == {"tol": 1e-7, "maxiter": 50}
    limits = _eigsh_limits(cupyx_like, A, v0, 2, 1e-6, 50)
    assert limits["tol"] == pytest.approx(3e-7, rel=1e-12) and limits["maxiter"] == 50 * 34     # ncv = k + 32
    assert _eigsh_limits(cupyx_like, A, v0, 20, 1e-6, 3)["maxiter"] == 3 * 52                 # k + 32 > 2k
    assert _eigsh_limits(cupyx_like, A, v0, 40, 1e-6, 3)["maxiter"] == 3 * 80                 # 2k > k + 32
    assert _eigsh_limits(cupyx_like, A, v0, 40, 1e-6, None) == {"tol": pytest.approx(3e-7), "maxiter": None}
    assert _eigsh_limits(cupyx_like, A, v0, 60, 1e-6, 2)["maxiter"] == 2 * 99                  # ncv ≤ P − 1
    assert _eigsh_limits(SimpleNamespace(__name__="cupyx", RELATIVE_TOL=True), A, v0, 2, 1e-6, 5)["maxiter"] == 5
    zero = CountingOperator(ne.eigen.BlockOperator(lambda V: 0.0 * V, like=np.zeros(P)), P, np, np.float64,
                          check_finite=True)
    assert _eigsh_limits(cupyx_like, zero, v0, 2, 1e-6, 5)["tol"] > 0                         # never 0


KRYLOV_FLOAT32_PATHS = {
    # name: (spectrum, k, top_eigenpairs arguments); V0 is a float64 host array of the top eigenvectors, roughed up
    "warm start, block < k": (np.concatenate([[9.0, 7.0, 6.0], np.linspace(-2.0, 2.0, 37)]), 3, dict(block=1)),
    "warm start, block ≥ k": (np.concatenate([[9.0, 7.0, 6.0], np.linspace(-2.0, 2.0, 37)]), 3, dict(block=3)),
    "thick restarts": (np.concatenate([1.0 - 0.01 * np.arange(12), 0.5 * np.linspace(-1.0, 1.0, 68)]), 2, {}),
    # A = 2 I: one vector spans an invariant space (tol above what float32 estimates of its residual can see)
    "past an invariant subspace": (np.full(40, 2.0), 2, dict(tol=1e-2)),
}


@pytest.mark.parametrize("path", KRYLOV_FLOAT32_PATHS)
def test_krylov_computes_in_float32_on_every_path(path):
    """A float32 operator keeps block Krylov in float32 on every path: a float64 warm start is converted rather
    than mixed in (both start routes), and the thick restarts' re-orthonormalisation and the random directions
    taken past an invariant subspace are float32 too. On the stand-in no operation meets a float64 array."""
    from nn_eos.strict import counting, strict
    eigenvalues, k, arguments = KRYLOV_FLOAT32_PATHS[path]
    M = matrix_with_spectrum(eigenvalues, seed=3)
    B = strict.asarray(M.astype(np.float32))
    V0 = None
    if path.startswith("warm"):
        V0 = expected_top(M, k, "krylov")[1] + 1e-3 * np.random.default_rng(0).standard_normal((len(M), k))
    with counting() as counts:
        res = top_eigenpairs(ne.eigen.BlockOperator(lambda V: B @ V, like=B[:, 0]), k, method="krylov", V0=V0,
                             **{"tol": 1e-4, "maxiter": 2000, **arguments})
    assert res.converged and res.values.dtype == np.float32 and res.vectors.dtype == np.float32
    assert counts["promotions"] == 0, counts
    if path == "thick restarts":
        assert res.matvecs > 22             # more products than the basis holds (max(5 (k + guard), k + guard + 20))
    np.testing.assert_allclose(to_numpy(res.values), expected_top(M, k, "krylov")[0], rtol=1e-3)


def test_krylov_basis_grows_in_place_as_one_column_major_block():
    """The basis and its products are kept column-major and grown in place, so ``Q`` and ``A Q`` are always
    one contiguous block — each product with them reads the basis where it lies, without a copy."""
    from nn_eos.eigen.krylov import _KrylovBasis
    rng = np.random.default_rng(0)
    M = matrix_with_spectrum(np.linspace(1.0, 2.0, 30), seed=0)
    basis = _KrylovBasis(30, 12, np, np.float64)
    for c in (3, 2, 4):
        R = rng.standard_normal((30, c))
        W = np.linalg.qr(R - basis.Q @ (basis.Q.T @ R))[0]              # orthonormal, orthogonal to Q
        basis.add(W, M @ W)
        assert basis.Q.flags.f_contiguous and basis.AQ.flags.f_contiguous
        assert np.shares_memory(basis.Q, basis._Q) and np.shares_memory(basis.AQ, basis._AQ)
    np.testing.assert_allclose(basis.T, basis.Q.T @ M @ basis.Q, atol=1e-12)


def test_krylov_directions_taken_past_an_invariant_subspace_are_seeded():
    """Past an invariant subspace krylov draws fresh directions: from the seed too, so a run is repeatable bit
    for bit (A = 2 I: one vector spans an invariant space, and which eigenvectors come out is the draw's)."""
    operator = device_operator(2.0 * np.eye(30))
    runs = [top_eigenpairs(operator, 3, method="krylov", tol=1e-6, seed=seed) for seed in (5, 5, 6)]
    assert all(run.converged for run in runs)
    np.testing.assert_array_equal(to_numpy(runs[0].vectors), to_numpy(runs[1].vectors))
    assert not np.allclose(to_numpy(runs[0].vectors), to_numpy(runs[2].vectors))


def _orthonormal_basis(P, m, seed):
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((P, m)))[0]


def test_new_directions_keep_a_small_real_component_and_put_the_strongest_first():
    """A direction whose part outside span(Q) is small (1e-6 of it) but far above rounding is new: it is kept,
    normalised; and the directions come out strongest first (the basis may take only the first few)."""
    from nn_eos.eigen.krylov import _new_directions
    P, Q = 39, _orthonormal_basis(39, 20, seed=0)
    outside = _orthonormal_basis(P, 40, seed=1)[:, 20:]
    outside = outside - Q @ (Q.T @ outside)
    outside = np.linalg.qr(outside)[0][:, :2]                                # two unit directions orthogonal to Q
    inside = Q @ np.random.default_rng(2).standard_normal((20, 2))
    W = np.stack([inside[:, 0] + 1e-6 * outside[:, 0], inside[:, 1] + 0.5 * outside[:, 1]], axis=1)
    R = to_numpy(_new_directions(device_xp.asarray(W), device_xp.asarray(Q), device_xp))
    assert R.shape[1] == 2
    np.testing.assert_allclose(R.T @ R, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(Q.T @ R, 0, atol=1e-12)
    assert abs(R[:, 0] @ outside[:, 1]) > 1 - 1e-9 and abs(R[:, 1] @ outside[:, 0]) > 1 - 1e-9


def test_new_directions_of_directions_inside_the_basis_are_none():
    from nn_eos.eigen.krylov import _new_directions
    Q = _orthonormal_basis(30, 10, seed=0)
    W = Q @ np.random.default_rng(1).standard_normal((10, 3))
    assert _new_directions(device_xp.asarray(W), device_xp.asarray(Q), device_xp).shape == (30, 0)


def test_new_directions_of_nearly_parallel_columns_are_orthonormal_to_rounding():
    """Two columns 1e-5 apart, orthogonal to Q: SVQB divides by a λ of 1e-10, which magnifies its own rounding
    to ~1e-6, so a second pass is needed for ``WᵀW = I`` to 1e-12 though the projection removed nothing."""
    from nn_eos.eigen.krylov import _new_directions
    rng = np.random.default_rng(0)
    Q = _orthonormal_basis(50, 5, seed=0)
    w, dw = rng.standard_normal(50), rng.standard_normal(50)
    W = np.stack([w, w + 1e-5 * dw], axis=1)
    W = W - Q @ (Q.T @ W)                          # orthogonal to Q already: one projection removes nothing
    R = to_numpy(_new_directions(device_xp.asarray(W), device_xp.asarray(Q), device_xp))
    assert R.shape[1] == 2
    np.testing.assert_allclose(R.T @ R, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(Q.T @ R, 0, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_new_directions_drop_what_only_rounding_puts_outside_the_basis_in_float32(monkeypatch, seed):
    """As in float64 (above), with float32's rounding: the resolution of eigh's λ is float32's, not float64's."""
    from nn_eos.eigen.krylov import _new_directions
    rng = np.random.default_rng(seed)
    Q = device_xp.asarray(np.linalg.qr(rng.standard_normal((39, 32)))[0].astype(np.float32))
    grams = _counting_grams(monkeypatch)
    R = to_numpy(_new_directions(device_xp.asarray(rng.standard_normal((39, 8)).astype(np.float32)), Q,
                                 device_xp))
    assert R.shape[1] == 7 and R.dtype == np.float32 and len(grams) <= 3      # float32: a third pass at times
    np.testing.assert_allclose(R.T @ R, np.eye(7), atol=1e-5)
    np.testing.assert_allclose(to_numpy(Q).T @ R, 0, atol=1e-5)


@pytest.mark.parametrize("method", ["lobpcg", "lanczos"])
@pytest.mark.parametrize("P", [60, 12])
def test_iterations_count_the_solvers_own_products(method, P):
    """Iterations of lobpcg are scipy's (each one product): every call to the operator but our own two — the
    start block's Rayleigh–Ritz and the last one — when it converges in one run (P = 12 < 5k: scipy solves
    densely, from one product, and counts as one iteration); those of lanczos are ARPACK's calls to the
    operator, all of them (it reports no restarts)."""
    M = matrix_with_spectrum(np.concatenate([[9.0, 7.0, 6.0], np.linspace(-2.0, 2.0, P - 3)]), seed=1)
    A = device_xp.asarray(M)
    calls = []
    operator = ne.eigen.BlockOperator(lambda V: calls.append(1) or A @ V, like=A[:, 0])
    res = top_eigenpairs(operator, 3, method=method, tol=1e-10)
    assert res.converged and res.iterations >= (1 if P < 15 else 4)
    assert res.iterations == len(calls) - (2 if method == "lobpcg" else 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_plain_function_runs_where_and_in_the_dtype_its_start_lies(dtype):
    """An operator that is a plain function has no device or dtype of its own: the solve runs on V0's device in
    V0's dtype; a bound method of a TrainingLoss (``loss.hvp``) runs in its loss's dtype."""
    M = matrix_with_spectrum(np.concatenate([[9.0, 7.0], np.linspace(-2.0, 2.0, 28)]), seed=0)
    A = device_xp.asarray(M.astype(dtype))
    V0 = device_xp.asarray(np.random.default_rng(0).standard_normal((30, 2)).astype(dtype))
    for method in METHODS:
        res = top_eigenpairs(lambda V: A @ V, 2, method=method, V0=V0, tol=1e-4)
        assert type(res.vectors) is type(V0) and res.values.dtype == dtype, method
    p = build_problem([3, 4, 2], "tanh", "cross_entropy", n=5, seed=0)
    p.net.astype(dtype)
    res = top_eigenpairs(p.loss.hvp, 1, method="krylov", tol=1e-4)
    assert res.values.dtype == dtype and type(res.vectors) is type(p.net.theta)



def _spying_on_eigsh(monkeypatch, **overrides):
    """Every call to eigsh recorded (its keyword arguments) and passed on with ARPACK's own maxiter (the recorded
    one may be in cupyx's meaning); ``overrides`` replace attributes of the linalg module the solve sees (its
    name, RELATIVE_TOL: how eigen._eigsh_limits reads it)."""
    from types import SimpleNamespace
    from nn_eos import backend
    real, seen = backend.scipy_linalg_module, []

    def spying(xp):
        module = real(xp)
        names = {name: getattr(module, name) for name in ("LinearOperator", "RELATIVE_TOL") if hasattr(module, name)}
        return SimpleNamespace(**{"__name__": module.__name__, **names, **overrides},
                               eigsh=lambda A, **kw: seen.append(kw) or module.eigsh(A, **{**kw, "maxiter": None}))

    monkeypatch.setattr(backend, "scipy_linalg_module", spying)
    return seen


@pytest.mark.parametrize("warm", [False, True])
def test_lanczos_starts_eigsh_from_a_vector_in_the_operators_dtype(monkeypatch, warm):
    """eigsh's start vector v0 (random, or the sum of V0's columns) is in the operator's dtype: a float64 v0 for a
    float32 operator would be a float64 temporary (and on cupyx, float64 Lanczos vectors)."""
    seen = _spying_on_eigsh(monkeypatch)
    M = matrix_with_spectrum(np.concatenate([[9.0, 7.0], np.linspace(-2.0, 2.0, 28)]), seed=0)
    A = device_xp.asarray(M.astype(np.float32))
    V0 = np.random.default_rng(0).standard_normal((30, 2)) if warm else None
    res = top_eigenpairs(ne.eigen.BlockOperator(lambda V: A @ V, like=A[:, 0]), 2, method="lanczos", V0=V0, tol=1e-4)
    assert res.converged and [call["v0"].dtype for call in seen] == [np.float32]


def test_the_documented_defaults_are_the_ones_used():
    """seed=0, and maxiter = 1000 block products for power iteration (here on a spectrum it cannot converge on:
    λ = ±1 rank alike by |λ|, and the block of one swings between their eigenvectors)."""
    M = matrix_with_spectrum(np.concatenate([[1.0, -1.0], np.linspace(-0.1, 0.1, 8)]), seed=0)
    operator = device_operator(M)
    default, seeded = top_eigenpairs(operator, 2, tol=1e-3), top_eigenpairs(operator, 2, tol=1e-3, seed=0)
    np.testing.assert_array_equal(to_numpy(default.vectors), to_numpy(seeded.vectors))
    stuck = top_eigenpairs(operator, 1, method="power", tol=1e-10, warn=False)
    assert not stuck.converged and stuck.iterations == 1000 and stuck.matvecs == 1000
    for method, solver, default in [("power", "power_iteration", 1000), ("krylov", "block_krylov", 1000),
                                    ("lobpcg", "lobpcg", 200)]:
        given = []
        original = getattr(solvers, solver)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(solvers, solver, lambda A, k, V0, tol, maxiter, *rest, **kw: given.append(maxiter)
                          or original(A, k, V0, tol, maxiter, *rest, **kw))
            top_eigenpairs(operator, 2, method=method, tol=1e-3, warn=False)
        assert given == [default], method


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lanczos_out_of_restarts_completes_its_pairs_from_the_seed(dtype):
    """ARPACK out of restarts (maxiter = 1): its converged pairs are completed to k from the seed, in the
    operator's dtype, so the answer (converged=False) is the same run after run."""
    from nn_eos.strict import counting
    M = matrix_with_spectrum(np.concatenate([1.0 - 1e-4 * np.arange(6), np.linspace(0.0, 0.999, 194)]), seed=2)
    A = device_xp.asarray(M.astype(dtype))
    with counting() as counts:
        runs = [top_eigenpairs(ne.eigen.BlockOperator(lambda V: A @ V, like=A[:, 0]), 6, method="lanczos",
                               tol=1e-12, maxiter=1, seed=5, warn=False) for _ in range(2)]
    assert not runs[0].converged and runs[0].vectors.dtype == dtype and counts["promotions"] == 0
    np.testing.assert_array_equal(to_numpy(runs[0].vectors), to_numpy(runs[1].vectors))


@pytest.mark.parametrize("method", METHODS)
def test_an_operator_answering_in_another_dtype_is_read_in_the_solves(method):
    """A float32 solve whose operator answers in float64 gets float32 eigenpairs; an answer that is not an array
    is refused by name."""
    M = matrix_with_spectrum(np.concatenate([[9.0, 7.0], np.linspace(-2.0, 2.0, 28)]), seed=0)
    A = device_xp.asarray(M)
    like = device_xp.asarray(np.zeros(30, dtype=np.float32))
    res = top_eigenpairs(ne.eigen.BlockOperator(lambda V: A @ V.astype(np.float64), like=like), 2, method=method,
                         tol=1e-4)
    assert res.values.dtype == np.float32 and res.vectors.dtype == np.float32
    with pytest.raises((TypeError, ValueError), match="the operator returned"):   # (on a device: not its array)
        top_eigenpairs(ne.eigen.BlockOperator(lambda V: to_numpy(V).tolist(), like=like), 2, method=method)


def test_lobpcg_iterations_add_up_over_its_three_runs():
    """maxiter = 2 is too few: lobpcg runs scipy three times (warm each time), and its iterations are all of
    them — every operator call but its own four (the start's Rayleigh–Ritz and one after each run)."""
    M = matrix_with_spectrum(np.concatenate([[9.0, 7.0, 6.0], np.linspace(-2.0, 2.0, 57)]), seed=1)
    A = device_xp.asarray(M)
    calls = []
    operator = ne.eigen.BlockOperator(lambda V: calls.append(1) or A @ V, like=A[:, 0])
    res = top_eigenpairs(operator, 3, method="lobpcg", tol=1e-10, maxiter=2, warn=False)
    assert not res.converged and res.iterations == len(calls) - 4 > 9


def test_krylov_with_a_full_block_starts_from_v0s_own_first_columns():
    """With block = k + guard the start is V0's own block — its first k + guard columns, not mixtures of all of
    them: exact eigenvectors first (then anything) converge on the first product."""
    M = matrix_with_spectrum(np.concatenate([[9.0, 7.0, 6.0], np.linspace(-2.0, 2.0, 37)]), seed=0)
    U = expected_top(M, 3, "krylov")[1]
    V0 = np.concatenate([U, np.random.default_rng(1).standard_normal((40, 2))], axis=1)
    res = top_eigenpairs(device_operator(M), 3, method="krylov", block=3, V0=device_xp.asarray(V0), tol=1e-8)
    assert res.converged and res.matvecs == 3


@pytest.mark.parametrize("case, passes, eighs", [("orthonormal", 1, 0), ("well conditioned", 1, 1),
                                                 ("partly inside the basis", 2, 1)])
def test_new_directions_make_one_pass_unless_the_projection_removed_much(monkeypatch, case, passes, eighs):
    """Each pass reads the whole basis twice (the main cost of an iteration besides the product), so residuals
    orthogonal to Q take one: none of SVQB when already orthonormal, one SVQB when well conditioned; a second
    pass ("twice is enough") only after the projection removed much of a column."""
    from nn_eos.eigen import krylov
    rng = np.random.default_rng(0)
    Q = _orthonormal_basis(60, 10, seed=0)
    W = rng.standard_normal((60, 3))
    W = W - Q @ (Q.T @ W)                                            # orthogonal to Q
    if case == "orthonormal":
        W = np.linalg.qr(W)[0]
    if case == "partly inside the basis":
        W = W + Q @ rng.standard_normal((10, 3))
    grams, eighs_made, eigh = _counting_grams(monkeypatch), [], np.linalg.eigh
    monkeypatch.setattr(np.linalg, "eigh", lambda a: eighs_made.append(1) or eigh(a))
    R = to_numpy(krylov._new_directions(device_xp.asarray(W), device_xp.asarray(Q), device_xp))
    assert (len(grams), len(eighs_made)) == (passes, eighs)
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(Q.T @ R, 0, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_the_zero_operator_in_float32_is_solved_in_float32_from_the_seed(method):
    """The zero operator (lanczos: by its power-iteration fallback) in float32: float32 throughout, and its
    eigenvectors — any orthonormal k of them — decided by the seed."""
    from nn_eos.strict import counting, strict
    zero = strict.asarray(np.zeros((30, 30), dtype=np.float32))
    operator = ne.eigen.BlockOperator(lambda V: zero @ V, like=zero[:, 0])
    with counting() as counts:
        runs = [top_eigenpairs(operator, 2, method=method, tol=1e-4, seed=seed) for seed in (3, 3, 4)]
    assert counts["promotions"] == 0 and all(run.converged for run in runs)
    assert all(run.vectors.dtype == np.float32 and run.values.dtype == np.float32 for run in runs)
    np.testing.assert_array_equal(to_numpy(runs[0].vectors), to_numpy(runs[1].vectors))
    assert not np.allclose(np.abs(to_numpy(runs[0].vectors)), np.abs(to_numpy(runs[2].vectors)))
    if method in ("power", "lanczos"):
        assert runs[0].iterations == 1           # every residual is zero after the first product: stop there


@pytest.mark.parametrize("k, block", [(8, 8), (8, 5), (6, 3)])
def test_krylov_fits_its_last_block_into_a_basis_as_large_as_the_space(k, block):
    """With P = 12 the basis can hold P columns only: a block wider than what is left of it is cut to fit after
    a restart, and the answer is still exact."""
    M = matrix_with_spectrum(np.concatenate([10.0 - np.arange(8), np.linspace(-1.0, 1.0, 4)]), seed=5)
    res = top_eigenpairs(device_operator(M), k, method="krylov", block=block, tol=1e-10)
    assert res.converged
    np.testing.assert_allclose(to_numpy(res.values), expected_top(M, k, "krylov")[0], rtol=1e-10)


def test_krylov_below_what_its_residual_estimates_see_costs_the_same_at_every_scale():
    """Block Krylov estimates residuals from G = (AQ)ᵀ(AQ) without products of length P, down to a rounding floor
    relative to |θ|; below it (tol = 1e-14) it checks the Ritz vectors themselves. That costs a few products
    more than tol = 1e-9, the same on the spectrum scaled by 1e-4, 1 or 1e4."""
    products = {}
    for scale in (1e-4, 1.0, 1e4):
        M = matrix_with_spectrum(scale * np.concatenate([[9.0, 7.0, 6.0], np.linspace(-2.0, 2.0, 197)]), seed=0)
        for tol in (1e-9, 1e-14):
            res = top_eigenpairs(device_operator(M), 3, method="krylov", tol=tol)
            assert res.converged, (scale, tol)
            products[scale, tol] = res.matvecs
    assert len({products[scale, 1e-14] for scale in (1e-4, 1.0, 1e4)}) == 1
    assert products[1.0, 1e-14] <= products[1.0, 1e-9] + 8


def test_an_integer_start_does_not_make_an_integer_solve():
    """Only a float dtype is taken from the operator, its owner or V0: an integer V0 (say np.ones) leaves the
    solve in float64."""
    M = matrix_with_spectrum(np.concatenate([[9.0, 7.0], np.linspace(-2.0, 2.0, 28)]), seed=0)
    A = device_xp.asarray(M)
    V0 = device_xp.asarray(np.ones((30, 2), dtype=np.int64))
    res = top_eigenpairs(lambda V: A @ V, 2, method="krylov", V0=V0, tol=1e-8)
    assert res.converged and res.values.dtype == np.float64
    np.testing.assert_allclose(to_numpy(res.values), [9.0, 7.0], rtol=1e-8)


def test_lanczos_hands_a_cupyx_like_eigsh_its_limits_in_cupyxs_meaning(monkeypatch):
    """Where eigsh takes an absolute tol and counts Lanczos steps (cupyx), lanczos hands it tol · ‖A v0‖/‖v0‖ / 10
    and maxiter · ncv, from the same v0 it starts from."""
    seen = _spying_on_eigsh(monkeypatch, __name__="cupyx.scipy.sparse.linalg", RELATIVE_TOL=False)
    M = matrix_with_spectrum(np.concatenate([[9.0, 7.0], np.linspace(-2.0, 2.0, 58)]), seed=0)
    res = top_eigenpairs(device_operator(M), 2, method="lanczos", tol=1e-6, maxiter=3, seed=4)
    v0 = to_numpy(seen[0]["v0"])
    assert res.converged and seen[0]["maxiter"] == 3 * 34                          # ncv = k + 32
    assert seen[0]["tol"] == pytest.approx(1e-7 * np.linalg.norm(M @ v0) / np.linalg.norm(v0), rel=1e-12)


def test_krylov_scans_no_product_for_nan():
    """Block Krylov finds a NaN or inf in its small matrices T and G (tested above), so its products are not
    scanned (on a GPU each scan is a sync); the other methods scan theirs."""
    from nn_eos.strict import strict
    B = strict.asarray(matrix_with_spectrum(np.concatenate([[9.0, 7.0], np.linspace(-2.0, 2.0, 28)]), seed=0))
    scans = []
    isfinite = strict.isfinite
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(strict, "isfinite", lambda a: scans.append(a.shape) or isfinite(a))
        for method in METHODS:
            scans.clear()
            top_eigenpairs(ne.eigen.BlockOperator(lambda V: B @ V, like=B[:, 0]), 2, method=method, tol=1e-6)
            assert (method == "krylov") == (not any(shape[0] == 30 for shape in scans)), method
