"""Whole-network value, gradient, ∇²L̃ v, G v and H v against finite differences, dense matrices and identities."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

import nn_eos as ne
from checks import (FD_STEP, TOL, assert_close, build_problem, central_difference, check_loss, dense_ggn,
                    dense_hessian, problems)
from nn_eos.backend import to_numpy

tiny_problems = problems(max_depth=3, max_width=3, max_examples=4)


@given(problem=problems())
def test_gradient_matches_finite_differences_of_the_loss(problem):
    theta, v = problem.theta, problem.direction()
    fd = central_difference(problem.loss.value, theta, v)
    assert_close(to_numpy(problem.loss.gradient()) @ to_numpy(v), fd, TOL["fd"], "⟨∇L̃, v⟩")


@given(problem=problems())
def test_hvp_matches_finite_differences_of_the_gradient(problem):
    theta, v = problem.theta, problem.direction()
    fd = central_difference(problem.loss.gradient, theta, v)
    assert_close(problem.loss.hvp(v), fd, TOL["fd"], "∇²L̃ v")


@given(problem=tiny_problems, seed=st.integers(0, 2**32 - 1))
def test_the_public_loss_check_passes(problem, seed):
    """nn_eos.testing.check_loss, which users run on their own losses, holds on every random problem."""
    check_loss(problem.loss, seed=seed)


@given(problem=tiny_problems)
def test_products_match_dense_matrices(problem):
    loss, theta = problem.loss, problem.theta
    P = len(theta)
    H_full, G = dense_hessian(loss, theta), dense_ggn(loss, theta)
    identity = np.eye(P)
    assert_close(loss.hvp(identity), H_full, TOL["fd"], "∇²L̃ against the dense Hessian")
    assert_close(loss.ggn(identity), G, TOL["fd"], "G against Jᵀ H_z J from finite-difference Jacobians")
    assert_close(loss.residual(identity), H_full - G, TOL["fd"], "H against ∇²L̃ − G")


@pytest.mark.parametrize("kind", ["hessian", "ggn", "residual"])
@given(problem=problems())
def test_products_are_symmetric(kind, problem):
    U, V = problem.direction(3), problem.direction(3)
    product = problem.loss.curvature_product
    assert_close(U.T @ to_numpy(product(V, kind)), (V.T @ to_numpy(product(U, kind))).T, TOL["exact"],
                 f"uᵀ M v = vᵀ M u for {kind}")


@given(problem=tiny_problems)
def test_gauss_newton_is_positive_semidefinite(problem):
    G = to_numpy(problem.loss.ggn(np.eye(problem.net.num_params)))
    eigenvalues = np.linalg.eigvalsh((G + G.T) / 2)
    assert eigenvalues.min() >= -TOL["exact"] * max(eigenvalues.max(), 1e-3)


@given(problem=problems())
def test_hessian_is_ggn_plus_residual(problem):
    V = problem.direction(4)
    loss = problem.loss
    assert_close(to_numpy(loss.ggn(V)) + to_numpy(loss.residual(V)), loss.hvp(V), TOL["exact"], "∇²L̃ v = G v + H v")


@pytest.mark.parametrize("kind", ["hessian", "ggn", "residual"])
@given(problem=problems(), k=st.integers(2, 6))
def test_a_block_equals_single_products(kind, problem, k):
    V = problem.direction(k)
    block = to_numpy(problem.loss.curvature_product(V, kind))
    singles = np.stack([to_numpy(problem.loss.curvature_product(V[:, j], kind)) for j in range(k)], axis=1)
    assert_close(block, singles, TOL["exact"], f"block of {k} against {k} single {kind} products")


@given(problem=problems(max_examples=9), chunk_size=st.integers(1, 4))
def test_chunked_equals_unchunked(problem, chunk_size):
    whole = problem.loss
    chunked = ne.TrainingLoss(problem.net, whole.criterion, problem.X, problem.y, chunk_size=chunk_size)
    V = problem.direction(2)
    assert chunked.value() == pytest.approx(whole.value(), rel=TOL["exact"])
    assert_close(chunked.gradient(), whole.gradient(), TOL["exact"], "gradient")
    for kind in ("hessian", "ggn", "residual"):
        assert_close(chunked.curvature_product(V, kind), whole.curvature_product(V, kind), TOL["exact"], kind)


@given(problem=problems(max_width=6, max_examples=8))
def test_float32_agrees_with_float64(problem):
    net64 = problem.net
    net32 = ne.Sequential(net64.layers, net64.input_shape, dtype="float32", theta=to_numpy(net64.theta))
    loss32 = ne.TrainingLoss(net32, problem.loss.criterion, problem.X, problem.y)
    V = problem.direction(2)
    assert loss32.value() == pytest.approx(problem.loss.value(), rel=TOL["float32"])
    assert to_numpy(loss32.gradient()).dtype == np.float32
    assert_close(loss32.gradient(), problem.loss.gradient(), TOL["float32"], "float32 gradient")
    for kind in ("hessian", "ggn", "residual"):
        out = loss32.curvature_product(V, kind)
        assert to_numpy(out).dtype == np.float32
        assert_close(out, problem.loss.curvature_product(V, kind), TOL["float32"], f"float32 {kind}")


@given(problem=problems())
def test_theta_argument_evaluates_elsewhere_and_leaves_the_network_alone(problem):
    loss, theta = problem.loss, problem.theta
    other = theta + 0.1 * problem.direction()
    v = problem.direction()
    at_other = (loss.value(theta=other), to_numpy(loss.gradient(theta=other)), to_numpy(loss.hvp(v, theta=other)))
    np.testing.assert_array_equal(to_numpy(problem.net.theta), theta)
    problem.net.set_theta(other)
    assert at_other[0] == loss.value()
    np.testing.assert_array_equal(at_other[1], to_numpy(loss.gradient()))
    np.testing.assert_array_equal(at_other[2], to_numpy(loss.hvp(v)))


def test_linear_model_has_no_residual():
    """With one dense layer f is linear in θ, so ∂²f/∂θ² = 0 and ∇²L̃ = G."""
    p = build_problem([4, 3], "tanh", "cross_entropy", n=5, seed=1)
    V = p.direction(3)
    assert np.abs(to_numpy(p.loss.residual(V))).max() == 0.0
    assert_close(p.loss.hvp(V), p.loss.ggn(V), TOL["exact"], "∇²L̃ = G")


def test_mse_ggn_of_a_linear_model_is_known_in_closed_form():
    """l = (1/O)‖z − e_y‖², z = x Aᵀ + b: G v = (2/O)(1/N) Σ_n (x̃_n x̃_nᵀ ⊗ I) v with x̃ = (x, 1)."""
    p = build_problem([3, 2], "tanh", "mse", n=4, seed=2)
    X1 = np.hstack([p.X, np.ones((4, 1))])
    M = X1.T @ X1 / 4 * (2 / 2)        # (i+1, i+1) second moment times 2/O
    v = p.direction()
    V_A, V_b = v[:6].reshape(2, 3), v[6:]
    W = np.hstack([V_A, V_b[:, None]]) @ M
    assert_close(p.loss.ggn(v), np.concatenate([W[:, :3].ravel(), W[:, 3]]), TOL["exact"], "closed-form G v")


@pytest.mark.parametrize("device", [None, "cpu"])          # the suite's device, and SciPy's LinearOperator
@pytest.mark.parametrize("kind", ["hessian", "ggn", "residual"])
def test_linear_operator_uses_the_block_products(kind, device):
    p = build_problem([4, 3, 3], "tanh", "cross_entropy", n=6, seed=3, device=device)
    op = p.loss.linear_operator(kind)
    V = p.direction(3)
    assert op.shape == (p.net.num_params,) * 2
    assert_close(op.matmat(V), p.loss.curvature_product(V, kind), TOL["exact"], "matmat")
    assert_close(op.matvec(V[:, 0]), p.loss.curvature_product(V[:, 0], kind), TOL["exact"], "matvec")
    assert_close(op @ V[:, 1], p.loss.curvature_product(V[:, 1], kind), TOL["exact"], "op @ v")
    assert_close(op.rmatmat(V), op.matmat(V), TOL["exact"], "symmetric: Mᵀ V = M V")
    assert_close(op.rmatvec(V[:, 0]), op.matvec(V[:, 0]), TOL["exact"], "symmetric: Mᵀ v = M v")
    assert op.dtype == p.net.dtype
    # the operator keeps the θ it was made at
    before = to_numpy(op.matvec(V[:, 0]))
    theta = p.theta
    p.net.set_theta(theta + 1.0)
    assert_close(op.matvec(V[:, 0]), before, TOL["exact"], "operator frozen at its θ")
    at_theta = p.loss.linear_operator(kind, theta=p.net.xp.asarray(theta))    # or made at a θ it is given
    assert_close(at_theta.matvec(V[:, 0]), before, TOL["exact"], "operator at the θ it is given")
    product = {"hessian": p.loss.hvp, "ggn": p.loss.ggn, "residual": p.loss.residual}[kind]
    assert_close(product(V[:, 0], theta=p.net.xp.asarray(theta)), before, TOL["exact"], "product at the θ given")


def test_linear_operator_runs_one_product_per_block_and_none_to_be_made(monkeypatch):
    p = build_problem([4, 3, 3], "tanh", "cross_entropy", n=6, seed=3)
    calls = []
    product = p.loss.curvature_product
    monkeypatch.setattr(p.loss, "curvature_product", lambda V, kind, theta=None: calls.append((V.shape, kind))
                        or product(V, kind, theta))
    op = p.loss.linear_operator()
    assert calls == []
    V = p.direction(3)
    op.matmat(V)
    op.rmatmat(V)
    assert calls == [(V.shape, "hessian")] * 2                    # the default kind, the block in one pass


def test_finite_difference_step_is_in_the_sweet_spot():
    """Guards the tolerance table: step² and rounding/step are both far below TOL['fd']."""
    assert FD_STEP ** 2 < 1e-3 * TOL["fd"] and np.finfo(np.float64).eps / FD_STEP < 1e-3 * TOL["fd"]


def test_products_at_one_theta_share_the_forward_and_backward_passes(monkeypatch):
    """An eigensolver's products at one θ run the forward and backward passes once (after a gradient at that
    θ, not at all); a G product leaves a forward pass that ∇²L̃ products complete with a backward pass."""
    p = build_problem([4, 5, 5, 3], "tanh", "cross_entropy", n=7, seed=3)
    fresh = build_problem([4, 5, 5, 3], "tanh", "cross_entropy", n=7, seed=3).loss
    counts = {"forward": 0, "backward": 0}
    for name in counts:
        original = getattr(ne.Sequential, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            counts[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(ne.Sequential, name, counted)
    V = p.direction(2)
    kinds = ("hessian", "ggn", "residual", "hessian")
    expected = [to_numpy(fresh.curvature_product(V, kind)) for kind in kinds]
    counts.update(forward=0, backward=0)
    p.loss.gradient()
    for kind, reference in zip(kinds, expected):
        np.testing.assert_array_equal(to_numpy(p.loss.curvature_product(V, kind)), reference)
    assert counts == {"forward": 1, "backward": 1}
    counts.update(forward=0, backward=0)
    q = build_problem([4, 5, 5, 3], "tanh", "cross_entropy", n=7, seed=3).loss
    q.ggn(V), q.ggn(V), q.hvp(V), q.residual(V)
    assert counts == {"forward": 1, "backward": 1}


def test_an_operator_recognises_its_own_theta_and_stays_at_it(monkeypatch):
    """TrainingLoss.operator keeps a private copy of θ: its products share one forward and backward pass, found
    by identity, and stay at that θ when the network's θ changes in place between them."""
    p = build_problem([4, 5, 5, 3], "tanh", "cross_entropy", n=7, seed=5)
    V = p.direction(2)
    theta0 = p.theta
    expected = to_numpy(p.loss.hvp(V))
    operator = p.loss.operator("hessian")
    compared, forwards = [], []
    original, forward = p.net.xp.array_equal, ne.Sequential.forward
    monkeypatch.setattr(p.net.xp, "array_equal", lambda *a: compared.append(1) or original(*a))
    monkeypatch.setattr(ne.Sequential, "forward", lambda *a, **k: forwards.append(1) or forward(*a, **k))
    for _ in range(3):
        np.testing.assert_array_equal(to_numpy(operator.matmat(V)), expected)
    assert not forwards and len(compared) == 1   # the hvp's passes, compared once only
    np.testing.assert_array_equal(to_numpy(operator.matmat(V[:, 0])), expected[:, 0])       # one direction, (P,)
    with pytest.raises(ValueError, match="V must have shape"):
        operator.matmat(V[:-1])
    p.net.set_theta(theta0 + 0.5 * p.direction())          # the network moves, in place
    assert np.abs(to_numpy(p.loss.hvp(V)) - expected).max() > 0
    np.testing.assert_array_equal(to_numpy(operator.matmat(V)), expected)


def test_shared_passes_are_not_reused_after_anything_changed():
    """θ changed in place, another θ passed in, another pass through the network, another dtype: each time
    the products equal those of a fresh TrainingLoss, bit for bit."""
    p = build_problem([3, 4, 2], "tanh", "mse", n=5, seed=4)
    V = p.direction(3)

    def fresh(theta=None):
        loss = ne.TrainingLoss(p.net, p.loss.criterion, p.X, p.y)
        return to_numpy(loss.hvp(V, theta=theta))

    theta0 = p.theta
    first = to_numpy(p.loss.hvp(V))
    moved = theta0 + 0.1 * p.direction()
    p.net.set_theta(moved)                                    # in place: the same array, new values
    np.testing.assert_array_equal(to_numpy(p.loss.hvp(V)), fresh())
    assert np.abs(to_numpy(p.loss.hvp(V)) - first).max() > 0
    np.testing.assert_array_equal(to_numpy(p.loss.hvp(V, theta=theta0)), first)
    p.loss.hvp(V)
    p.net(np.ones((2, 3)))                                    # another forward pass, on other data
    np.testing.assert_array_equal(to_numpy(p.loss.hvp(V)), fresh())
    p.net.astype("float32")
    assert to_numpy(p.loss.hvp(V)).dtype == np.float32
    np.testing.assert_array_equal(to_numpy(p.loss.hvp(V)), fresh())  # not the float64 passes, rounded
    p.net.to("strict" if p.net.device == "cpu" else "cpu")    # another device: the data move too
    np.testing.assert_array_equal(to_numpy(p.loss.hvp(V)), fresh())


def test_no_call_outside_the_loss_makes_its_kept_passes_stale():
    """Regression: products at one θ reuse the forward and backward passes, which the layers used to keep as
    state. A layer's forward pass run by hand between two products (as a learner poking at layers does) made the
    second product silently wrong (off by 2.1 where the largest entry is 1.04), and with another batch size
    failed with a reshape error. The loss now owns the record of its passes: nothing else can write to it."""
    p = build_problem([4, 5, 5, 3], "tanh", "cross_entropy", n=8, seed=11)
    V = p.direction(2)
    first = to_numpy(p.loss.hvp(V))
    xp = p.net.xp
    for n in (8, 3):                                          # the same batch size, and another
        for layer in p.net.layers:
            cache = ne.layers.Cache()
            out = layer.forward(xp.asarray(p.rng.standard_normal((n, layer_width(p.net, layer)))), cache)
            layer.backward(out, cache)
        p.net(p.rng.standard_normal((n, 4)))                  # and the network on other data
        other = ne.TrainingLoss(p.net, "mse", p.rng.standard_normal((n, 4)), np.zeros(n, dtype=int))
        other.hvp(V)                                          # and another loss through the same layers
        np.testing.assert_array_equal(to_numpy(p.loss.hvp(V)), first)


def layer_width(net, layer):
    """The input width of a layer of an MLP."""
    shape = net.input_shape
    for other in net.layers:
        if other is layer:
            return shape[0]
        shape = other.output_shape(shape)


def test_a_layer_shared_by_two_networks_computes_at_each_ones_theta():
    """Layers hold views of θ; a network binds its own θ before every evaluation, so a layer that two networks
    share gives each network its own products."""
    p = build_problem([3, 4, 2], "tanh", "cross_entropy", n=5, seed=12)
    shared = p.net.layers[0]
    other = ne.Sequential([shared, ne.Tanh(), ne.Dense(4, 2)], (3,))
    other.set_theta(np.ones(other.num_params))             # binds the shared layer to the other θ
    V = p.direction(2)
    fresh = build_problem([3, 4, 2], "tanh", "cross_entropy", n=5, seed=12).loss
    np.testing.assert_array_equal(to_numpy(p.loss.hvp(V)), to_numpy(fresh.hvp(V)))


def test_products_at_one_z_share_the_output_hessian_and_not_after_it_changed(monkeypatch):
    """The softmax behind H_z l is computed once for all the products at one θ (an eigensolve's), and again —
    giving a fresh TrainingLoss's products bit for bit — once θ has moved."""
    p = build_problem([4, 5, 3], "tanh", "cross_entropy", n=6, seed=7)
    V = p.direction(2)
    softmaxes = []
    original = ne.CrossEntropy.softmax
    monkeypatch.setattr(ne.CrossEntropy, "softmax", staticmethod(lambda z: softmaxes.append(1) or original(z)))
    first = to_numpy(p.loss.hvp(V))                       # ∂l/∂z for the backward pass, then H_z l: two
    assert len(softmaxes) == 2
    for kind in ("ggn", "hessian", "ggn"):
        p.loss.curvature_product(V, kind)
    assert len(softmaxes) == 2
    p.net.set_theta(p.theta + 0.1 * p.direction())
    moved = to_numpy(p.loss.hvp(V))
    assert len(softmaxes) == 4 and np.abs(moved - first).max() > 0
    np.testing.assert_array_equal(moved, to_numpy(ne.TrainingLoss(p.net, p.loss.criterion, p.X, p.y).hvp(V)))


def _recording(monkeypatch, names):
    """Record the examples (forward) or directions (r_forward) of every pass of ``names`` through a network."""
    seen = {name: [] for name in names}
    for name in names:
        original = getattr(ne.Sequential, name)

        def recorded(self, first, *args, _name=name, _original=original, **kwargs):
            seen[_name].append(first.shape[0])
            return _original(self, first, *args, **kwargs)

        monkeypatch.setattr(ne.Sequential, name, recorded)
    return seen


def test_products_run_in_the_blocks_of_directions_and_chunks_of_examples_their_plan_allows(monkeypatch):
    """Within max_memory a product runs ⌈k / directions⌉ blocks of at most ``plan.directions`` directions, each
    over ⌈N / examples⌉ chunks of at most ``plan.examples`` examples — no block or chunk larger, none repeated —
    and gets the unchunked result."""
    p = build_problem([4, 5, 5, 3], "tanh", "cross_entropy", n=40, seed=3)
    V = p.direction(6)
    expected = to_numpy(p.loss.hvp(V))
    for budget in (16384, 98304):                      # (3 examples, 3 directions) and (40 examples, 3 directions)
        loss = ne.TrainingLoss(p.net, p.loss.criterion, p.X, p.y, max_memory=budget)
        plan = loss.plan(6)
        assert plan.directions < 6
        seen = _recording(monkeypatch, ["forward", "r_forward"])
        result = to_numpy(loss.hvp(V))
        monkeypatch.undo()
        blocks, chunks = -(-6 // plan.directions), -(-40 // plan.examples)
        assert len(seen["r_forward"]) == blocks * chunks and sum(seen["r_forward"]) == 6 * chunks
        assert max(seen["r_forward"]) <= plan.directions and max(seen["forward"]) <= plan.examples
        np.testing.assert_allclose(result, expected, rtol=1e-12, atol=1e-14)


def test_a_product_in_one_chunk_never_reuses_passes_over_a_chunk_of_the_examples():
    """With max_memory that holds all examples for one direction but not for 11, a block of 11 runs in chunks;
    a single product at the same θ afterwards must run its own passes over all the examples."""
    p = build_problem([4, 5, 5, 3], "tanh", "cross_entropy", n=40, seed=3)
    loss = ne.TrainingLoss(p.net, p.loss.criterion, p.X, p.y, max_memory=49152)
    assert loss.plan(11).examples < 40 and loss.plan(1).examples == 40
    V = p.direction(11)
    expected = to_numpy(p.loss.hvp(V[:, 0]))
    loss.hvp(V)
    np.testing.assert_allclose(to_numpy(loss.hvp(V[:, 0])), expected, rtol=1e-12, atol=1e-14)
    loss.gradient()
    np.testing.assert_allclose(to_numpy(loss.ggn(V[:, 0])), to_numpy(p.loss.ggn(V[:, 0])), rtol=1e-12, atol=1e-14)


def test_gauss_newton_products_run_no_backward_pass(monkeypatch):
    """G v = Jᵀ H_z l J v needs the forward pass and J v only: no backward pass (docs/curvature.md)."""
    p = build_problem([4, 5, 5, 3], "tanh", "cross_entropy", n=7, seed=3)
    seen = _recording(monkeypatch, ["forward", "backward"])
    V = p.direction(2)
    p.loss.ggn(V), p.loss.ggn(V, theta=p.net.xp.asarray(p.theta + 0.1))
    assert seen == {"forward": [7, 7], "backward": []}


def test_data_already_on_the_device_in_the_dtype_are_not_copied():
    import numpy
    p = build_problem([4, 5, 3], "tanh", "cross_entropy", n=7, seed=3, device="cpu")
    X = numpy.random.default_rng(0).random((7, 4))
    loss = ne.TrainingLoss(p.net, p.loss.criterion, X, p.y)
    assert numpy.shares_memory(loss._data()[0], X)


def test_max_memory_errors_name_it():
    p = build_problem([4, 5, 3], "tanh", "cross_entropy", n=7, seed=3)
    with pytest.raises(ValueError, match=r"max_memory \(bytes\) must be a positive integer"):
        ne.TrainingLoss(p.net, p.loss.criterion, p.X, p.y, max_memory=-1)


def test_a_product_at_a_theta_given_checks_theta_and_the_directions_once_each():
    """On a device every finite-check of θ or V is a host read (a sync): a product at a θ given makes two, the
    network's check of θ and the check of V — the kept passes are matched against θ without another."""
    from nn_eos.strict import counting
    p = build_problem([4, 5, 3], "tanh", "cross_entropy", n=7, seed=3, device="strict")
    theta, v = p.net.xp.asarray(p.theta + 0.1), p.net.xp.asarray(p.direction())
    p.loss.hvp(v, theta=theta)
    for product in (p.loss.hvp, p.loss.ggn, p.loss.residual):
        with counting() as counts:
            product(v, theta=theta)
        assert counts["host_reads"] == 2, (product.__name__, counts)


def test_a_direction_on_the_device_in_the_dtype_is_read_where_it_lies(monkeypatch):
    """A (P,) direction already on the network's device in its dtype goes into the passes without a copy."""
    import numpy
    p = build_problem([4, 5, 3], "tanh", "cross_entropy", n=7, seed=3, device="cpu")
    v = numpy.random.default_rng(0).standard_normal(p.net.num_params)
    received = []
    r_forward = ne.Sequential.r_forward
    monkeypatch.setattr(ne.Sequential, "r_forward", lambda self, V, caches: received.append(V) or r_forward(
        self, V, caches))
    p.loss.hvp(v)
    assert received and numpy.shares_memory(received[0], v)


def test_a_linear_operator_has_its_networks_dtype():
    """SciPy's and cupyx's LinearOperator take the dtype they are given (SciPy would otherwise make a product to
    find it): float32 for a float32 network."""
    p = build_problem([4, 3, 3], "tanh", "cross_entropy", n=6, seed=3)
    p.net.astype("float32")
    assert p.loss.linear_operator().dtype == np.float32


@given(problem=tiny_problems)
def test_the_one_product_function_alone_gives_the_dense_matrices(problem):
    """nn_eos.product.curvature_product, called on its own (no TrainingLoss: no chunks, no reuse), gives ∇²L̃,
    G and H = ∇²L̃ − G against dense matrices from differences (docs/curvature.md, "One product")."""
    from nn_eos.product import curvature_product
    net, criterion = problem.net, problem.loss.criterion
    xp, P = net.xp, net.num_params
    X, y = xp.asarray(problem.X), xp.asarray(problem.y)
    identity = xp.eye(P)                                              # the rows of V: every unit direction
    hessian, ggn = dense_hessian(problem.loss, problem.theta), dense_ggn(problem.loss, problem.theta)
    assert_close(curvature_product(net, criterion, X, y, identity, "hessian"), hessian, TOL["fd"], "∇²L̃")
    assert_close(curvature_product(net, criterion, X, y, identity, "ggn"), ggn, TOL["fd"], "G")
    assert_close(curvature_product(net, criterion, X, y, identity, "residual"), hessian - ggn, TOL["fd"], "H")
    with pytest.raises(ValueError, match="unknown curvature kind 'gnn'"):
        curvature_product(net, criterion, X, y, identity, "gnn")


def test_every_public_product_runs_the_one_product_function(monkeypatch):
    """hvp, ggn, residual, curvature_product, operator and linear_operator all go through
    nn_eos.product.curvature_product, once per chunk and block (what a reader follows is what runs)."""
    from nn_eos import product
    kinds = []
    original = product.curvature_product
    monkeypatch.setattr(product, "curvature_product",
                        lambda *args, **kw: kinds.append(args[5]) or original(*args, **kw))
    p = build_problem([4, 5, 3], "tanh", "cross_entropy", n=6, seed=3)
    V = p.direction(2)
    p.loss.hvp(V), p.loss.ggn(V), p.loss.residual(V), p.loss.curvature_product(V, "ggn")
    p.loss.operator("residual").matmat(ne.backend.to_device(V, p.net.device))
    p.loss.linear_operator("hessian").matmat(V)
    assert kinds == ["hessian", "ggn", "residual", "ggn", "residual", "hessian"]
    chunked = build_problem([4, 5, 3], "tanh", "cross_entropy", n=6, seed=3, chunk_size=4)
    kinds.clear()
    chunked.loss.hvp(V)
    assert kinds == ["hessian", "hessian"]                            # two chunks of examples: 4 + 2


def test_losses_over_parts_with_the_whole_mean_add_up_to_the_whole():
    """mean_over = N: each part's value, gradient, products and third derivative are its share of the mean over
    all N examples, so the parts add up to the whole loss's (to rounding)."""
    problem = build_problem([3, 5, 3], "tanh", "cross_entropy", n=10, seed=4)
    net, X, y = problem.net, problem.X, problem.y
    whole = ne.TrainingLoss(net, "cross_entropy", X, y)
    parts = [ne.TrainingLoss(net, "cross_entropy", X[a:b], y[a:b], mean_over=10) for a, b in ((0, 4), (4, 10))]
    V = np.random.default_rng(0).standard_normal((net.num_params, 2))
    assert sum(part.value() for part in parts) == pytest.approx(whole.value(), rel=1e-14)
    for name, run in [("gradient", lambda loss: loss.gradient()), ("hvp", lambda loss: loss.hvp(V)),
                      ("ggn", lambda loss: loss.ggn(V)), ("third", lambda loss: loss.third(V))]:
        assert_close(sum(to_numpy(run(part)) for part in parts), run(whole), TOL["exact"], name)
