"""The 2024 paper's decomposition: identities that must hold to rounding, on random nets and data."""

import json
import warnings

import numpy as np
import pytest
from hypothesis import assume, given

import nn_eos as ne
from checks import TOL, assert_close, build_problem, problems
from nn_eos import alignment, backend
from nn_eos.experiments import analysis
from nn_eos.backend import to_numpy

IDENTITY = 1e-9


def preactivation_jacobians(net, X):
    """The MLP recursion, an independent reference for ``alignment.output_jacobians``:
    ∂f/∂x̂^L = I, ∂f/∂x̂^{i−1} = (∂f/∂x̂^i) A^i ⊙ σ'(x̂^{i−1}); also returns the inputs x^{i−1} of each layer."""
    dense, acts = alignment.dense_layers(net)
    xp = net.xp
    caches = net.new_caches()
    z = net.forward(X, caches)
    slopes = [c.slope for l, c in zip(net.layers, caches) if l in acts]
    n, O = z.shape
    jac = [None] * len(dense)
    jac[-1] = xp.broadcast_to(xp.eye(O, dtype=z.dtype), (n, O, O))
    for i in range(len(dense) - 1, 0, -1):
        jac[i - 1] = (jac[i] @ dense[i].A) * slopes[i - 1][:, None, :]
    return z, jac, [c.x for l, c in zip(net.layers, caches) if l in dense]


def parameter_jacobian(net, X):
    """∂f/∂θ per example, (n, O, P), exactly: R{z} = J v for the P unit vectors (r_forward, itself tested)."""
    caches = net.new_caches()
    net.forward(net.xp.asarray(X), caches)
    Rz = net.r_forward(net.xp.eye(net.num_params, dtype=net.dtype), caches)      # (P, n, O)
    return to_numpy(Rz).transpose(1, 2, 0)


def layer_slices(net):
    return [slice(a, b) for a, b, l in zip(net.offsets[:-1], net.offsets[1:], net.layers) if l.num_params]


def setup(problem):
    net, loss = problem.net, problem.loss
    X, y = loss.X_host, loss.y_host
    xp = net.xp
    z, jac, inputs = preactivation_jacobians(net, xp.asarray(X))
    R = to_numpy(loss.criterion.sqrt_hessian(z, xp.asarray(y)))
    return net, loss, X, y, [to_numpy(j) for j in jac], [to_numpy(x) for x in inputs], R


@given(problem=problems(max_depth=3, max_width=4, max_examples=5))
def test_layer_grams_match_explicit_jacobians_and_sum_to_K(problem):
    """K^i(K^i)ᵀ = (1 + ‖x^{i−1}‖²) R ∂f/∂x̂^i (∂f/∂x̂^i)ᵀ R equals R ∂f/∂θ^i (∂f/∂θ^i)ᵀ R;
    Σ_i K^i(K^i)ᵀ = K Kᵀ (eq. 4)."""
    net, loss, X, y, jac, inputs, R = setup(problem)
    J = parameter_jacobian(net, X)
    K = R @ J                                                                         # (n, O, P)
    total = np.zeros((len(X),) + R.shape[1:])
    for i, part in enumerate(layer_slices(net)):
        explicit = K[:, :, part] @ K[:, :, part].transpose(0, 2, 1)
        delta = np.sqrt(1 + (inputs[i] ** 2).sum(1))[:, None, None] * (R @ jac[i])
        assert_close(delta @ delta.transpose(0, 2, 1), explicit, IDENTITY, f"K^{i + 1} (K^{i + 1})ᵀ")
        total += explicit
    assert_close(total, K @ K.transpose(0, 2, 1), IDENTITY, "Σ_i K^i (K^i)ᵀ = K Kᵀ")
    # G = E[Kᵀ K]: its product with v is the Gauss-Newton product
    v = problem.direction()
    assert_close(np.einsum("nop,noq,q->p", K, K, v) / len(X), loss.ggn(v), IDENTITY, "E[Kᵀ K] v = G v")


@given(problem=problems(max_depth=4, max_width=4, max_examples=5))
def test_delta_recursion(problem):
    """Δ^i = χ^i Δ^{i+1} ∂x̂^{i+1}/∂x̂^i with ∂x̂^{i+1}/∂x̂^i = A^{i+1} diag(σ'(x̂^i)) (eq. 5)."""
    net, loss, X, y, jac, inputs, R = setup(problem)
    dense, acts = alignment.dense_layers(net)
    caches = net.new_caches()
    net.forward(net.xp.asarray(X), caches)
    slopes = [to_numpy(c.slope) for l, c in zip(net.layers, caches) if l in acts]       # σ'(x̂^i)
    one_plus = [1 + (x ** 2).sum(1) for x in inputs]
    deltas = [np.sqrt(one_plus[i])[:, None, None] * (R @ jac[i]) for i in range(len(dense))]
    for i in range(len(dense) - 1):
        chi = np.sqrt(one_plus[i] / one_plus[i + 1])
        layerwise = to_numpy(dense[i + 1].A)[None] * slopes[i][:, None, :]   # (n, n_{i+1}, n_i)
        assert_close(deltas[i], chi[:, None, None] * (deltas[i + 1] @ layerwise), IDENTITY, f"eq. 5, i = {i + 1}")


@given(problem=problems(max_depth=4, max_width=5, max_examples=6))
def test_five_components_multiply_to_the_layer_norm(problem):
    """Π_χ^k P_{χ,Δ/χ}^k Π_J^k P_{Δ,J}^k E‖Δ^L‖² = E‖Δ^k‖² for every k (eq. 7); 0 ≤ ρ(K) ≤ 1; eq. 8.

    The ratios are 0/0 when a layer's Δ vanishes (all ReLUs dead): those draws are skipped. λ_1(G) comes
    from Lanczos with relative residual tol, so ρ(K) ≤ 1 holds to within tol (Weyl: |λ − θ| ≤ ‖r‖).
    """
    tol = 1e-10
    rep = alignment.analyze(problem.net, problem.loss.criterion, problem.loss.X_host, problem.loss.y_host, tol=tol)
    assume(np.all(rep.K_layer_norm2 > 0))
    for k in range(1, rep.num_layers + 1):
        c = rep.components(k)
        product = c["Pi_chi"] * c["P_chi"] * c["Pi_J"] * c["P_J"] * c["delta_L"]
        assert product == pytest.approx(rep.K_layer_norm2[k - 1], rel=IDENTITY)
    assert -tol <= rep.overlap_ratio <= 1 + tol                          # Lemma 7.2
    first, rest = rep.K_layer_norm2[0], rep.K_layer_norm2[1:].sum()
    assert first - rest - 1e-12 <= rep.K_norm2 <= first + rest + 1e-12   # eq. 8 (triangle inequality)


@given(problem=problems(max_depth=3, max_width=3, max_examples=4))
def test_overlap_ratio_uses_the_top_eigenvalue_of_G(problem):
    """λ_1(G) from the eigensolver equals λ_1(E[Kᵀ K]) from dense matrices (Lemma 7.1: that of E over K Kᵀ too)."""
    net, loss, X, y, jac, inputs, R = setup(problem)
    K = R @ parameter_jacobian(net, X)
    G = np.einsum("nop,noq->pq", K, K) / len(X)
    rep = alignment.analyze(net, loss.criterion, X, y, tol=1e-10, eigenvectors=True)
    w, U = np.linalg.eigh(G)
    assert rep.sharpness["ggn"] == pytest.approx(w[-1], rel=1e-8, abs=1e-12)
    if len(w) > 1 and w[-1] - w[-2] > 1e-3 * max(w[-1], 1e-12):   # a simple top eigenvalue: its vector is unique
        assert abs(float(to_numpy(rep.eigenvectors["ggn"]) @ U[:, -1])) == pytest.approx(1.0, abs=1e-6)
    # Lemma 7.1: the non-zero eigenvalues of Kᵀ K are those of K Kᵀ, per example
    for n in range(len(X)):
        small = np.linalg.eigvalsh(K[n] @ K[n].T)
        big = np.linalg.eigvalsh(K[n].T @ K[n])[-len(small):]
        assert_close(big, small, 1e-8, "Lemma 7.1")
    assert rep.K_norm2 == pytest.approx(np.mean([np.linalg.eigvalsh(K[n] @ K[n].T)[-1] for n in range(len(X))]),
                                        rel=IDENTITY)


@pytest.mark.parametrize("dense_below", [0, 128])
@pytest.mark.parametrize("shape", [(6, 40), (40, 6), (50, 70), (70, 50)])
def test_layerwise_jacobian_norms_match_svd(shape, dense_below):
    """Batched Lanczos and dense Grams against numpy.linalg.svd, to 1e-8."""
    rng = np.random.default_rng(sum(shape))
    A = rng.standard_normal(shape)
    s = rng.uniform(0, 1, size=(9, shape[1]))
    xp = backend.module_for(backend.default_device())          # on the suite's device
    ours = to_numpy(alignment.layerwise_jacobian_norm2(xp.asarray(A), xp.asarray(s), xp, dense_below=dense_below))
    reference = np.array([np.linalg.svd(A * s[n][None, :], compute_uv=False)[0] ** 2 for n in range(9)])
    np.testing.assert_allclose(ours, reference, rtol=1e-8)


@pytest.mark.parametrize("shape", [(160, 240), (240, 160)])
def test_layerwise_jacobian_norms_stop_early_and_stay_exact(shape):
    """Wide random layers (a crowded spectral edge, as at initialisation): Lanczos stops long before
    m = d, with per-example scalings far from the warm start's average and one dead example, to 1e-8."""
    rng = np.random.default_rng(shape[0])
    A = rng.standard_normal(shape) / np.sqrt(shape[1])
    s = rng.uniform(0, 1, size=(12, shape[1])) ** rng.uniform(0.2, 3, size=(12, 1))
    s[3] = 0.0
    calls = []
    original = alignment.batched_top_eigenvalue

    def counting(matvec, *args, **kwargs):
        return original(lambda v, *rows_of: calls.append(1) or matvec(v, *rows_of), *args, **kwargs)

    alignment.batched_top_eigenvalue = counting
    xp = backend.module_for(backend.default_device())
    try:
        ours = to_numpy(alignment.layerwise_jacobian_norm2(xp.asarray(A), xp.asarray(s), xp, dense_below=0))
    finally:
        alignment.batched_top_eigenvalue = original
    reference = np.array([np.linalg.svd(A * s[n][None, :], compute_uv=False)[0] ** 2 for n in range(12)])
    np.testing.assert_allclose(ours, reference, rtol=1e-8, atol=1e-300)
    assert ours[3] == 0.0 and len(calls) < min(shape) / 2


@pytest.mark.parametrize("shape", [(160, 240), (240, 160), (100, 300)])     # both sides of a ≤ 2b
def test_layerwise_jacobian_norms_warm_start_pay_and_tol_reaches_lanczos(shape):
    """The warm start (the top singular vector of A diag(rms s)) needs fewer products than a cold start of the
    same batched solve; a looser tol fewer still; in float32 on the device nothing meets a float64 array."""
    from nn_eos.strict import counting, strict

    rng = np.random.default_rng(shape[1])
    u, v = rng.standard_normal(shape[0]), rng.standard_normal(shape[1])           # a dominant direction, as a
    A = rng.standard_normal(shape) / np.sqrt(shape[1]) + 3 * np.outer(u, v) / np.sqrt(np.prod(shape))  # trained
    s = rng.uniform(0.8, 1, size=(6, shape[1])) * rng.uniform(0, 1, shape[1]) ** 2  # layer has; units of
                                                                                   # very different slopes
    original = alignment.batched_top_eigenvalue
    calls = {}

    def solve(label, cold=False, **kwargs):
        calls[label] = 0

        def counted(matvec, *args, **solver_kwargs):
            if cold:
                solver_kwargs["start"] = None
            return original(lambda v, *rows: calls.__setitem__(label, calls[label] + 1) or matvec(v, *rows), *args,
                            **solver_kwargs)
        alignment.batched_top_eigenvalue = counted
        try:
            return to_numpy(alignment.layerwise_jacobian_norm2(A, s, np, dense_below=0, **kwargs))
        finally:
            alignment.batched_top_eigenvalue = original

    warm, cold = solve("warm"), solve("cold", cold=True)
    loose = solve("loose", tol=1e-3)
    reference = np.array([np.linalg.svd(A * s[n][None, :], compute_uv=False)[0] ** 2 for n in range(6)])
    np.testing.assert_allclose(warm, reference, rtol=1e-8)
    np.testing.assert_allclose(cold, reference, rtol=1e-8)
    np.testing.assert_allclose(loose, reference, rtol=2e-2)    # a loose tol may stop low in a cluster (documented)
    assert calls["loose"] < calls["warm"] < calls["cold"]
    with counting() as counts:
        narrow = alignment.layerwise_jacobian_norm2(strict.asarray(A.astype(np.float32)),
                                                    strict.asarray(s.astype(np.float32)), strict, dense_below=0,
                                                    tol=1e-5)
    assert narrow.dtype == np.float32 and counts["promotions"] == 0
    np.testing.assert_allclose(to_numpy(narrow), reference, rtol=1e-4)


def test_chunked_analysis_equals_whole():
    net = ne.mlp([5, 6, 6, 3], activation="tanh", seed=1)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((11, 5)), rng.integers(0, 3, 11)
    whole = alignment.analyze(net, "cross_entropy", X, y, sharpness=False)
    chunked = alignment.analyze(net, "cross_entropy", X, y, sharpness=False, chunk_size=4)
    for field in ("K_layer_norm2", "chi2", "jacobian_norm2", "r_delta_jacobian", "r_chi"):
        assert_close(getattr(chunked, field), getattr(whole, field), TOL["exact"], field)


def test_layerwise_terms_need_an_mlp():
    net = ne.Sequential([ne.Dense(3, 3), ne.Dense(3, 2)], (3,))
    with pytest.raises(ValueError, match="needs an MLP"):
        alignment.dense_layers(net)
    rep = alignment.analyze(net, "mse", np.ones((2, 3)), np.array([0, 1]))
    assert np.all(np.isnan(rep.chi2)) and np.isfinite(rep.K_norm2) and len(rep.K_layer_norm2) == 2
    assert rep.chi2.shape == rep.jacobian_norm2.shape == rep.r_chi.shape == (1,)        # i = 1..L−1
    from nn_eos.conv import Conv2d
    single = ne.Sequential([Conv2d(1, 2, 3), ne.Flatten()], (1, 3, 3))                  # not an MLP, L = 1
    rep = alignment.analyze(single, "mse", np.ones((2, 1, 3, 3)), np.array([0, 1]))
    assert rep.chi2.shape == (0,) and len(rep.K_layer_norm2) == 1


def test_analyze_at_the_theta_it_is_given_in_chunks_with_its_options():
    p = build_problem([4, 6, 5, 3], "elu", "cross_entropy", n=11, seed=2, check_kinks=False)
    theta = p.theta
    reference = alignment.analyze(p.net, "cross_entropy", p.X, p.y, tol=1e-10)
    p.net.set_theta(theta + 0.5)
    sizes = []
    original = alignment.per_example_quantities
    alignment.per_example_quantities = lambda net, crit, X, y: sizes.append(len(X)) or original(net, crit, X, y)
    try:
        at_theta = alignment.analyze(p.net, "cross_entropy", p.X, p.y, theta=p.net.xp.asarray(theta), tol=1e-10,
                                     chunk_size=4)
    finally:
        alignment.per_example_quantities = original
    assert sizes == [4, 4, 3]                                  # the data in chunks of chunk_size
    assert at_theta.K_norm2 == pytest.approx(reference.K_norm2, rel=1e-12)
    np.testing.assert_allclose(at_theta.r_delta_jacobian, reference.r_delta_jacobian, rtol=1e-10)
    for kind in ("hessian", "ggn", "residual"):
        assert at_theta.sharpness[kind] == pytest.approx(reference.sharpness[kind], rel=1e-8)
    assert reference.eigenvectors is None                      # kept only when asked for
    kept = alignment.analyze(p.net, "cross_entropy", p.X, p.y, eigenvectors=True)
    assert set(kept.eigenvectors) == {"hessian", "ggn", "residual"}
    with pytest.raises(ValueError, match="tol must be positive, got 0"):
        alignment.analyze(p.net, "cross_entropy", p.X, p.y, tol=0)


@pytest.mark.parametrize("activation", ["relu", "elu"])
def test_a_dead_layer_gives_nan_ratios_without_warnings(activation):
    """Biases that switch off every unit of a hidden layer make Δ^i = 0 below it: ratios 0/0 are NaN, and the
    analysis says nothing else (no RuntimeWarning)."""
    net = ne.mlp([3, 4, 4, 2], activation=activation, seed=0)
    A, b = net.layers[0].split(net.theta)
    b[...] = -1e3                                              # every pre-activation of the first layer ≪ 0
    X, y = np.random.default_rng(0).standard_normal((5, 3)), np.array([0, 1, 0, 1, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rep = alignment.analyze(net, "cross_entropy", X, y, sharpness=False)
    assert np.isnan(rep.r_delta_jacobian).any() or np.isnan(rep.r_chi).any()


@pytest.mark.parametrize("activation", ["relu", "elu", "tanh"])
def test_a_float32_analysis_computes_in_float32(activation):
    """On the strict stand-in: no step of the decomposition of a float32 net meets a float64 array."""
    from nn_eos.strict import counting

    net = ne.mlp([5, 7, 6, 3], activation=activation, seed=1, dtype="float32", device="strict")
    X, y = np.random.default_rng(1).standard_normal((6, 5)), np.array([0, 1, 2, 0, 1, 2])
    with counting() as counts:
        rep = alignment.analyze(net, "cross_entropy", X, y, tol=1e-4)
    assert counts["promotions"] == 0 and np.isfinite(rep.K_norm2)


def test_power_law_recovers_known_coefficients():
    sizes = np.array([468, 937, 1875, 3750, 7500])
    c1, c2, r2 = alignment.power_law(sizes, 0.0017 * sizes ** 0.23)
    assert c1 == pytest.approx(0.0017, rel=1e-10) and c2 == pytest.approx(0.23, rel=1e-10) and r2 == 1.0
    noisy = 0.0017 * sizes ** 0.23 * np.exp(np.array([0.1, -0.1, 0.05, 0.0, -0.05]))
    assert alignment.power_law(sizes, noisy)[2] < 1.0
    log_sizes, log_noisy = np.log(sizes), np.log(noisy)          # a line's R² is the squared correlation
    assert alignment.power_law(sizes, noisy)[2] == pytest.approx(np.corrcoef(log_sizes, log_noisy)[0, 1] ** 2,
                                                                 rel=1e-12)
    assert alignment.power_law([100, 400], [3, 6]) == pytest.approx((0.3, 0.5, 1.0), rel=1e-12)    # two sizes do
    assert alignment.power_law([10, 20, 40], [5, 5, 5]) == pytest.approx((5.0, 0.0, 1.0), abs=1e-12)  # flat: R² 1
    with pytest.raises(ValueError, match="two distinct sizes"):
        alignment.power_law([5, 5], [1, 2])
    with pytest.raises(ValueError, match="two distinct sizes"):
        alignment.power_law([5], [1])


def test_counterfactual_bound_removes_the_growth_of_alignment():
    """With P^i(t) = P^i(0) the bound is ρ(K) Σ_i E‖Δ^i‖²; doubling every r doubles P^1 and halves its term."""
    series = {"K_layer_norm2": [[4.0, 2.0, 1.0], [8.0, 2.0, 1.0]], "r_delta_jacobian": [[1.0, 1.0], [2.0, 1.0]],
              "overlap_ratio": [0.5, 0.5]}
    bound, lr = alignment.counterfactual_sharpness(series)
    np.testing.assert_allclose(bound, [0.5 * 7.0, 0.5 * (8.0 / 2 + 2.0 + 1.0)])
    assert lr == pytest.approx(2 / 3.5)
    series["overlap_ratio"] = [None, 0.5]          # a snapshot analysed without the sharpness of G
    bound, lr = alignment.counterfactual_sharpness(series)
    assert np.isnan(bound[0]) and lr == pytest.approx(2 / 3.5)


def test_analyze_run_caches_beside_the_run(tmp_path):
    X, y = ne.datasets.dice("train", n=24)
    net = ne.mlp([1024, 6, 6, 6], activation="elu", seed=0)
    loss = ne.TrainingLoss(net, "cross_entropy", X, y)
    ne.train(loss, ne.GradientDescent(0.5), until_loss=0.0, max_steps=6, snapshot_every=2, run_dir=tmp_path / "r",
             progress=False, data={"dataset": "dice", "n": 24, "seed": 0})
    series = analysis.analyze_run(tmp_path / "r", skip=2, progress=False)
    assert list(series["step"]) == [2, 4, 6] and np.all(series["overlap_ratio"] <= 1 + 1e-8)
    first = (tmp_path / "r" / "alignment.jsonl").read_text()
    again = analysis.analyze_run(tmp_path / "r", skip=2, progress=False)
    assert (tmp_path / "r" / "alignment.jsonl").read_text() == first
    np.testing.assert_array_equal(again["K_norm2"], series["K_norm2"])
    assert list(analysis.analyze_run(tmp_path / "r", skip=2, every=4, progress=False)["step"]) == [4]


def test_analyze_run_solves_again_only_what_was_cached_at_a_looser_tol(tmp_path):
    """Rows record the tol of their λ_1 solves: asking for a tighter one computes them again (appended, so the
    last row of a step is the tightest), a looser one reuses them; rows from before tol was recorded count as
    1e-6, and rows without sharpness are computed again when it is asked for."""
    X, y = ne.datasets.dice("train", n=24)
    net = ne.mlp([1024, 6, 6, 6], activation="elu", seed=0)
    loss = ne.TrainingLoss(net, "cross_entropy", X, y)
    run = tmp_path / "r"
    ne.train(loss, ne.GradientDescent(0.5), until_loss=0.0, max_steps=4, snapshot_every=2, run_dir=run,
             progress=False, data={"dataset": "dice", "n": 24, "seed": 0})
    cache = run / "alignment.jsonl"
    analysis.analyze_run(run, skip=2, progress=False, sharpness=False)
    assert [r["sharpness"] for r in analysis.read_rows(cache)] == [None, None]
    loose = analysis.analyze_run(run, skip=2, progress=False, tol=1e-2)
    assert [r["tol"] for r in analysis.read_rows(cache)] == [None, None, 1e-2, 1e-2]
    tight = analysis.analyze_run(run, skip=2, progress=False, tol=1e-10)
    assert [r["tol"] for r in analysis.read_rows(cache)][-2:] == [1e-10, 1e-10]
    again = analysis.analyze_run(run, skip=2, progress=False, tol=1e-3)
    assert len(analysis.read_rows(cache)) == 6
    analysis.analyze_run(run, skip=2, progress=False, tol=1e-12, sharpness=False)   # any row will do
    assert len(analysis.read_rows(cache)) == 6
    for kind in ("hessian", "ggn", "residual"):
        assert [s[kind] for s in again["sharpness"]] == [s[kind] for s in tight["sharpness"]]
        np.testing.assert_allclose([s[kind] for s in loose["sharpness"]], [s[kind] for s in tight["sharpness"]],
                                   rtol=1e-2)
    legacy = [dict(row) for row in analysis.read_rows(cache)[-2:]]
    for row in legacy:
        del row["tol"]
    cache.write_text("".join(json.dumps(row) + "\n" for row in legacy))
    analysis.analyze_run(run, skip=2, progress=False, tol=1e-6)        # solved to 1e-6 then: reused
    assert len(analysis.read_rows(cache)) == 2
    analysis.analyze_run(run, skip=2, progress=False, tol=1e-7)
    assert len(analysis.read_rows(cache)) == 4
    with pytest.raises(ValueError, match="tol must be positive, got 0"):
        alignment.analyze(net, "cross_entropy", X, y, tol=0)


def test_default_tolerance_gives_the_eigenvalues_far_more_accurately_than_itself():
    """λ_1 of ∇²L̃, G and H at the default tol (a relative residual of 1e-4) against dense eigenvalues: the error
    is at most the residual (Weyl) and goes like its square, so it comes out far below 1e-4."""
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((40, 10)), rng.integers(0, 3, 40)
    net = ne.mlp([10, 24, 24, 3], activation="elu", seed=3)
    loss = ne.TrainingLoss(net, "cross_entropy", X, y)
    eye = np.eye(net.num_params)
    dense = {kind: np.linalg.eigvalsh(to_numpy(getattr(loss, name)(net.xp.asarray(eye))))[-1]
             for kind, name in (("hessian", "hvp"), ("ggn", "ggn"), ("residual", "residual"))}
    report = alignment.analyze(net, loss.criterion, X, y)
    for kind, value in dense.items():
        assert report.sharpness[kind] == pytest.approx(value, rel=alignment.SHARPNESS_TOL ** 1.5)


@given(problem=problems(max_depth=4, max_width=4, max_examples=4))
def test_output_jacobians_are_the_preactivation_jacobians_of_an_mlp(problem):
    net = problem.net
    _, general = alignment.output_jacobians(net, net.xp.asarray(problem.X))
    _, mlp_only, _ = preactivation_jacobians(net, net.xp.asarray(problem.X))
    for i, (a, b) in enumerate(zip(general, mlp_only)):
        assert_close(a, b, IDENTITY, f"∂f/∂x̂^{i + 1}")


def test_conv_layer_grams_match_explicit_jacobians():
    """K^i (K^i)ᵀ of conv and dense layers (Gram over positions for conv) against R ∂f/∂θ^i (∂f/∂θ^i)ᵀ R."""
    from nn_eos.conv import AvgPool2d, Conv2d, MaxPool2d

    rng = np.random.default_rng(5)
    net = ne.Sequential([Conv2d(2, 3, 3, stride=1, padding=1), ne.Tanh(), MaxPool2d(2), Conv2d(3, 2, 2),
                         ne.ELU(), AvgPool2d(1), ne.Flatten(), ne.Dense(2 * 2 * 2, 3)], (2, 6, 6))
    net.set_theta(rng.standard_normal(net.num_params) * 0.5)
    X, y = rng.permutation(5 * 72).reshape(5, 2, 6, 6) * 0.01, rng.integers(0, 3, 5)
    crit = ne.CrossEntropy()
    grams = [to_numpy(g) for g in alignment.layer_grams(net, crit, X, y)]
    z = net(X)
    R = to_numpy(crit.sqrt_hessian(z, net.xp.asarray(y)))
    K = R @ parameter_jacobian(net, X)
    for i, part in enumerate(layer_slices(net)):
        assert_close(grams[i], K[:, :, part] @ K[:, :, part].transpose(0, 2, 1), IDENTITY, f"layer {i + 1}")
    rep = alignment.analyze(net, crit, X, y, tol=1e-10)
    assert rep.K_norm2 == pytest.approx(np.mean(np.linalg.eigvalsh(K @ K.transpose(0, 2, 1))[:, -1]), rel=IDENTITY)
    assert 0 <= rep.overlap_ratio <= 1 + 1e-10 and np.all(np.isnan(rep.chi2))


def test_warm_started_sharpness_matches_cold_and_saves_products():
    """analyze_run warm-starts each snapshot's three solves from the previous snapshot's eigenvectors."""
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((60, 8)), rng.integers(0, 3, 60)
    net = ne.mlp([8, 16, 16, 3], activation="elu", seed=2)
    loss = ne.TrainingLoss(net, "cross_entropy", X, y)
    before = alignment.analyze(net, loss.criterion, X, y, tol=1e-10, eigenvectors=True)
    theta = to_numpy(net.theta) - 0.05 * to_numpy(loss.gradient())
    counts = {}
    solve = alignment.top_eigenpairs

    def counting(*args, **kwargs):
        result = solve(*args, **kwargs)
        counts.setdefault("warm" if kwargs.get("V0") is not None else "cold", []).append(result.matvecs)
        return result

    alignment.top_eigenpairs = counting
    try:
        cold = alignment.analyze(net, loss.criterion, X, y, theta=theta, tol=1e-10)
        warm = alignment.analyze(net, loss.criterion, X, y, theta=theta, tol=1e-10, start=before.eigenvectors)
    finally:
        alignment.top_eigenpairs = solve
    for kind in ("hessian", "ggn", "residual"):
        assert warm.sharpness[kind] == pytest.approx(cold.sharpness[kind], rel=1e-9)
    assert sum(counts["warm"]) < sum(counts["cold"])


@given(problem=problems(max_depth=4, max_width=4, max_examples=5))
def test_every_report_field_matches_an_independent_computation(problem):
    """Each field of the report on its own, from explicit per-example matrices (not through a product in which a
    wrong field could cancel): E‖K‖², E‖Δ^i‖², E(χ^i)² = E[(1 + ‖x^{i−1}‖²)/(1 + ‖x^i‖²)],
    E‖A^{i+1} diag σ'(x̂^i)‖² by SVD, and the two ratios r from their definition (2024 paper, section 2.2)."""
    net, loss, X, y, jac, inputs, R = setup(problem)
    rep = alignment.analyze(net, loss.criterion, X, y, sharpness=False)
    dense, acts = alignment.dense_layers(net)
    caches = net.new_caches()
    net.forward(net.xp.asarray(X), caches)
    slopes = [to_numpy(c.slope) for l, c in zip(net.layers, caches) if l in acts]
    one_plus = [1 + (x ** 2).sum(1) for x in inputs]
    norm2 = lambda M: np.linalg.norm(M, ord=2, axis=(-2, -1)) ** 2                     # per example
    K = R @ parameter_jacobian(net, X)
    delta2 = [one_plus[i] * norm2(R @ jac[i]) for i in range(len(dense))]
    chi2 = [one_plus[i] / one_plus[i + 1] for i in range(len(dense) - 1)]
    J2 = [norm2(to_numpy(dense[i + 1].A)[None] * slopes[i][:, None, :]) for i in range(len(dense) - 1)]
    r = lambda product, first, second: product.mean() / (first.mean() * second.mean())
    assume(all(d.mean() > 0 for d in delta2))
    assert rep.K_norm2 == pytest.approx(norm2(K).mean(), rel=IDENTITY)
    np.testing.assert_allclose(rep.K_layer_norm2, [d.mean() for d in delta2], rtol=IDENTITY)
    np.testing.assert_allclose(rep.chi2, [c.mean() for c in chi2], rtol=IDENTITY)
    np.testing.assert_allclose(rep.jacobian_norm2, [j.mean() for j in J2], rtol=1e-8)
    np.testing.assert_allclose(rep.r_delta_jacobian, [r(delta2[i] / chi2[i], delta2[i + 1], J2[i])
                                                      for i in range(len(chi2))], rtol=1e-8)
    np.testing.assert_allclose(rep.r_chi, [r(delta2[i], chi2[i], delta2[i] / chi2[i]) for i in range(len(chi2))],
                               rtol=1e-8)
