"""The batched Lanczos solver behind the layerwise Jacobian norms: its tridiagonal test and its active set."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nn_eos import backend
from nn_eos.eigen.batched_lanczos import batched_top_eigenvalue, top_ritz, tridiagonal


@settings(max_examples=30)
@given(n=st.integers(1, 6), m=st.integers(1, 40), seed=st.integers(0, 2**16), scale=st.sampled_from([1e-6, 1.0, 1e4]))
def test_top_ritz_matches_eigh(n, m, seed, scale):
    """λ_1, λ_2 and |s_m| of the top eigenvector, against a dense eigh, on random tridiagonals (some with a
    zero coupling, which splits T into blocks)."""
    rng = np.random.default_rng(seed)
    alpha = scale * rng.standard_normal((n, m))
    beta = scale * np.abs(rng.standard_normal((n, m - 1)))
    if m > 2:
        beta[0, m // 2] = 0.0
    lam1, lam2, s_last = top_ritz(alpha, beta, np)
    w, V = np.linalg.eigh(tridiagonal(alpha, beta, np))
    np.testing.assert_allclose(lam1, w[:, -1], rtol=0, atol=1e-12 * scale * m)
    if m > 1:
        np.testing.assert_allclose(lam2, w[:, -2], rtol=0, atol=1e-12 * scale * m)
        well_separated = w[:, -1] - w[:, -2] > 1e-3 * scale
        np.testing.assert_allclose(np.abs(s_last)[well_separated], np.abs(V[well_separated, -1, -1]), atol=1e-9)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_top_ritz_of_a_zero_matrix_is_finite(dtype):
    """A dead example (every σ' = 0) gives T = 0: λ_1 = λ_2 = 0, and no overflow in the inverse iteration."""
    lam1, lam2, s_last = top_ritz(np.zeros((2, 5), dtype), np.zeros((2, 4), dtype), np)
    assert (lam1 == 0).all() and (lam2 == 0).all() and np.isfinite(s_last).all()
    lam1, lam2, s_last = top_ritz(np.full((2, 1), 3.0, dtype), np.zeros((2, 0), dtype), np)   # a 1 × 1 T
    assert (lam1 == 3).all() and (lam2 == -np.inf).all() and lam2.dtype == dtype and (np.abs(s_last) == 1).all()


def test_converged_examples_leave_the_active_set():
    """Rank-one operators converge at the first test (m = 4) and stop being multiplied; the others go on,
    each until its own test passes, and every answer is exact to 1e-9."""
    rng = np.random.default_rng(0)
    n, d = 10, 120
    easy = rng.standard_normal((5, d))
    hard = rng.standard_normal((5, d, d)) / np.sqrt(d)
    mats = np.concatenate([easy[:, :, None] * easy[:, None, :], hard @ hard.transpose(0, 2, 1)])
    xp = backend.module_for(backend.default_device())          # the products run on the suite's device
    mats_on_device = xp.asarray(mats)
    seen = []

    def matvec(V, rows):
        seen.append(backend.to_numpy(rows).copy())
        return xp.einsum("nab,nb->na", mats_on_device[rows], V)

    top = batched_top_eigenvalue(matvec, n, d, xp, np.float64, tol=1e-9)
    assert backend.array_module(top) is xp
    np.testing.assert_allclose(backend.to_numpy(top), np.linalg.eigvalsh(mats)[:, -1], rtol=1e-9)
    assert [len(rows) for rows in seen[:4]] == [10] * 4 and len(seen) > 8
    assert all(set(rows.tolist()) <= set(range(5, 10)) for rows in seen[4:])
    assert len(seen[4]) == 5 and len(seen[-1]) < 5


def test_tight_tolerance_keeps_clustered_tops_exact():
    """The stopping test estimates λ_1's error as r²/(λ_1 − λ_2), which trusts the Ritz gap; while Lanczos has
    not yet found every eigenvalue of a tight top cluster, that gap is too wide and a loose tol stops on a lower
    member (tol 1e-6: one of these 30 stops 2.5e-4 low). The default tol 1e-9 asks for a residual small
    enough that the cluster is resolved: every answer to 1e-9."""
    rng = np.random.default_rng(0)
    n, d = 30, 200
    spectra = np.concatenate([1 + 1e-3 * rng.standard_normal((n, 4)), rng.uniform(0, 0.9, (n, d - 4))], axis=1)
    bases = np.linalg.qr(rng.standard_normal((n, d, d)))[0]
    mats = (bases * spectra[:, None, :]) @ bases.transpose(0, 2, 1)
    xp = backend.module_for(backend.default_device())
    mats_on_device = xp.asarray(mats)

    def matvec(V, rows):
        return xp.einsum("nab,nb->na", mats_on_device[rows], V)

    exact = spectra.max(axis=1)
    loose = backend.to_numpy(batched_top_eigenvalue(matvec, n, d, xp, np.float64, tol=1e-6))
    assert np.max(np.abs(loose - exact) / exact) > 1e-5                  # the failure the default avoids
    top = backend.to_numpy(batched_top_eigenvalue(matvec, n, d, xp, np.float64))
    np.testing.assert_allclose(top, exact, rtol=1e-9)


def test_a_wide_gap_stops_early_and_exactly():
    """Operators whose top eigenvalue stands 10× above the rest converge within the first checks: the stopping test
    (the residual |β_m s_m|, sharpened by the Ritz gap) ends every example by m = 16, far before d = 200, each
    answer to 1e-9: a stopping test that never fires, or fires before convergence, fails here."""
    rng = np.random.default_rng(1)
    n, d = 6, 200
    spectra = np.concatenate([np.full((n, 1), 10.0), rng.uniform(0, 1, (n, d - 1))], axis=1)
    bases = np.linalg.qr(rng.standard_normal((n, d, d)))[0]
    mats = (bases * spectra[:, None, :]) @ bases.transpose(0, 2, 1)
    xp = backend.module_for(backend.default_device())
    mats_on_device = xp.asarray(mats)
    calls = []

    def matvec(V, rows):
        calls.append(len(rows))
        return xp.einsum("nab,nb->na", mats_on_device[rows], V)

    top = backend.to_numpy(batched_top_eigenvalue(matvec, n, d, xp, np.float64))
    np.testing.assert_allclose(top, 10.0, rtol=1e-9)
    assert len(calls) <= 16, len(calls)


def _gap_operators(n, d, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    spectra = scale * np.concatenate([np.full((n, 1), 10.0), rng.uniform(0, 1, (n, d - 1))], axis=1)
    bases = np.linalg.qr(rng.standard_normal((n, d, d)))[0]
    return (bases * spectra[:, None, :]) @ bases.transpose(0, 2, 1)


def _solve(mats, dtype=np.float64, **kwargs):
    xp = backend.module_for(backend.default_device())
    on_device = xp.asarray(mats.astype(dtype))
    calls = []

    def matvec(V, rows):
        calls.append(len(rows))
        return xp.einsum("nab,nb->na", on_device[rows], V)

    return batched_top_eigenvalue(matvec, len(mats), mats.shape[1], xp, dtype, **kwargs), calls


@pytest.mark.parametrize("scale", [1e-4, 1e4])
def test_the_tolerance_is_relative(scale):
    """Spectra scaled by 1e-4 and 1e4 stop after the same products as unscaled ones, and are as accurate: the
    stopping test compares the error estimate with tol · |λ_1|, not with tol."""
    mats = _gap_operators(4, 60, seed=2)
    top, calls = _solve(mats)
    scaled_top, scaled_calls = _solve(scale * mats)
    assert scaled_calls == calls
    np.testing.assert_allclose(backend.to_numpy(scaled_top), scale * backend.to_numpy(top), rtol=1e-9)
    np.testing.assert_allclose(backend.to_numpy(scaled_top), 10 * scale, rtol=1e-9)


def test_same_seed_same_answer_and_float32_stays_float32():
    mats = _gap_operators(3, 40, seed=3)
    first, _ = _solve(mats, seed=5)
    again, _ = _solve(mats, seed=5)
    np.testing.assert_array_equal(backend.to_numpy(first), backend.to_numpy(again))     # bit for bit
    narrow, _ = _solve(mats, dtype=np.float32)
    assert backend.to_numpy(narrow).dtype == np.float32
    np.testing.assert_allclose(backend.to_numpy(narrow), 10.0, rtol=1e-5)
    alpha = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    T = tridiagonal(alpha, np.arange(1, 9, dtype=np.float32).reshape(2, 4), np)
    assert T.dtype == np.float32 and np.array_equal(T, T.transpose(0, 2, 1))        # the whole symmetric matrix


def test_top_ritz_rows_of_very_different_scales():
    """Each example's inverse iteration is shifted by its own scale: rows of 1e-6 and 1e4 in one batch both get
    s_m right (a shift scaled by the largest row would swamp the small one)."""
    rng = np.random.default_rng(4)
    m = 12
    alpha = np.stack([1e-6 * rng.standard_normal(m), 1e4 * rng.standard_normal(m)])
    beta = np.stack([1e-6 * np.abs(rng.standard_normal(m - 1)), 1e4 * np.abs(rng.standard_normal(m - 1))])
    _, _, s_last = top_ritz(alpha, beta, np)
    w, V = np.linalg.eigh(tridiagonal(alpha, beta, np))
    separated = (w[:, -1] - w[:, -2]) > 1e-3 * np.abs(w).max(axis=1)
    np.testing.assert_allclose(np.abs(s_last)[separated], np.abs(V[separated, -1, -1]), rtol=1e-6)


@pytest.mark.parametrize("warm", [False, True])
def test_float32_runs_in_float32_on_the_device(warm):
    """Every array of the recurrence (start, q pair, α, β) is float32 for a float32 operator: on the strict
    stand-in no step meets a float64 array (a float64 buffer would promote each product's work)."""
    from nn_eos.strict import counting, strict

    mats = strict.asarray(_gap_operators(3, 40, seed=3).astype(np.float32))
    start = np.ones(40) if warm else None                     # a host start vector (float64) is cast, not mixed

    def matvec(V, rows):
        return strict.einsum("nab,nb->na", mats[rows], V)

    with counting() as counts:
        top = batched_top_eigenvalue(matvec, 3, 40, strict, np.float32, tol=1e-5, start=start)
    assert top.dtype == np.float32 and counts["promotions"] == 0
    np.testing.assert_allclose(backend.to_numpy(top), 10.0, rtol=1e-5)


def test_a_start_vector_near_the_common_top_eigenvector_warm_starts_every_example():
    """Operators sharing their top eigenvector e (λ = 10, the rest in [0, 9]): started from e at any scale (5%
    random mixed in), every example needs at most half the products of a cold start, for the same answer."""
    n, d = 4, 60
    rng = np.random.default_rng(6)
    e = np.linalg.qr(rng.standard_normal((d, 1)))[0][:, 0]
    rest = np.eye(d) - np.outer(e, e)
    mats = []
    for _ in range(n):
        B = rest @ np.linalg.qr(rng.standard_normal((d, d)))[0]
        mats.append(10 * np.outer(e, e) + (B * rng.uniform(0, 9, d)) @ B.T)
    mats = np.array(mats)
    cold, cold_calls = _solve(mats)
    warm, warm_calls = _solve(mats, start=e)
    small, small_calls = _solve(mats, start=1e-3 * e)
    assert len(warm_calls) <= len(cold_calls) / 2 and small_calls == warm_calls
    for top in (cold, warm, small):
        np.testing.assert_allclose(backend.to_numpy(top), 10.0, rtol=1e-9)
