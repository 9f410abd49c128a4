"""Third derivatives ∇³L̃[u, v, ·] (docs/third.md) against finite differences, a dense tensor and ∇λ."""

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

import nn_eos as ne
from nn_eos import memory
from checks import FD_STEP, TOL, assert_close, build_problem, central_difference, problems
from nn_eos.backend import to_numpy
from nn_eos.conv import AvgPool2d, Conv2d, MaxPool2d
from nn_eos.layers import Dense, Flatten
from nn_eos.testing import check_third

tiny_problems = problems(max_depth=3, max_width=3, max_examples=4)


@given(problem=problems())
def test_third_matches_finite_differences_of_the_hvp(problem):
    theta, u, v = problem.theta, problem.direction(), problem.direction()
    fd = central_difference(lambda t: problem.loss.hvp(v, theta=t), theta, u)
    assert_close(problem.loss.third(u, v), fd, TOL["fd"], "∇³L̃[u, v, ·] against d/dε ∇²L̃(θ + εu) v")


@given(problem=tiny_problems, seed=st.integers(0, 2**32 - 1))
def test_the_public_third_check_passes(problem, seed):
    """nn_eos.testing.check_third (differences, symmetry, block against pairs, v = u) on random problems."""
    check_third(problem.loss, seed=seed)


def dense_third(loss, theta):
    """T[a, b, c] = ∂³L̃/∂θ_a∂θ_b∂θ_c from central differences of the dense Hessian (hvp of the identity) along
    each coordinate c."""
    P = len(theta)
    identity = np.eye(P)
    return np.stack([central_difference(lambda t: loss.hvp(identity, theta=t), theta, identity[c])
                     for c in range(P)], axis=2)


@given(problem=tiny_problems)
def test_third_against_the_dense_tensor(problem):
    loss, theta = problem.loss, problem.theta
    P = len(theta)
    T = dense_third(loss, theta)
    a, b = np.divmod(np.arange(P * P), P)                         # every pair of coordinates (a, b)
    ours = to_numpy(loss.third(np.eye(P)[:, a], np.eye(P)[:, b])).T.reshape(P, P, P)
    assert_close(ours, T, TOL["fd"], "∇³L̃[e_a, e_b, ·] against the tensor from differences of ∇²L̃")
    for axes in ((1, 0, 2), (2, 1, 0), (0, 2, 1)):
        assert_close(ours, ours.transpose(axes), TOL["exact"], f"∇³L̃ symmetric under the permutation {axes}")


@given(problem=tiny_problems, seed=st.integers(0, 2**32 - 1))
def test_eigenvalue_gradient_matches_differences_of_the_eigenvalue(problem, seed):
    """∇λ = ∇³L̃[u, u, ·] for the top eigenpair, against central differences of the dense Hessian's λ₁."""
    loss, theta = problem.loss, problem.theta
    P = len(theta)

    def top(t):
        H = to_numpy(loss.hvp(np.eye(P), theta=t))
        return np.linalg.eigh((H + H.T) / 2)

    values, vectors = top(theta)
    spread = max(abs(values[-1]), 1.0)
    assume(P == 1 or values[-1] - values[-2] > 1e-2 * spread)        # a simple top eigenvalue
    w = np.random.default_rng(seed).standard_normal(P)
    fd = central_difference(lambda t: top(t)[0][-1], theta, w)
    gradient = to_numpy(loss.eigenvalue_gradient(3.0 * vectors[:, -1]))   # any length: it is normalised
    assert_close(gradient @ w, fd, 1e-5, "⟨∇λ₁, w⟩ against differences of λ₁ along w")
    assert_close(gradient, to_numpy(loss.third(vectors[:, -1])), TOL["exact"], "∇λ₁ = ∇³L̃[u₁, u₁, ·]")
    problem.net.set_theta(theta + 1.0)                                # at the θ it is given, not the network's
    at_theta = loss.eigenvalue_gradient(vectors[:, -1], theta=problem.net.xp.asarray(theta))
    assert_close(at_theta, gradient, TOL["exact"], "∇λ₁ at the θ given")


def conv_net(seed):
    layers = [Conv2d(2, 3, 3, padding=1), ne.activations.ELU(), MaxPool2d(2), Conv2d(3, 2, 3, padding=1),
              ne.activations.Tanh(), AvgPool2d(2), Flatten(), Dense(2, 4), ne.activations.ELU(), Dense(4, 3)]
    net = ne.Sequential(layers, (2, 4, 4))
    net.set_theta(0.5 * np.random.default_rng(seed).standard_normal(net.num_params))
    return net


@pytest.mark.parametrize("criterion", ["cross_entropy", "mse"])
def test_third_of_a_conv_net(criterion):
    """Convolutions, both poolings and Flatten in one network, against differences of the hvp."""
    net = conv_net(0)
    rng = np.random.default_rng(1)
    check_third(ne.TrainingLoss(net, criterion, rng.standard_normal((5, 2, 4, 4)), rng.integers(0, 3, 5)))


@given(seed=st.integers(0, 2**32 - 1), chunk=st.integers(1, 5))
def test_chunks_and_blocks_change_nothing_but_rounding(seed, chunk):
    whole = build_problem([3, 4, 3], "tanh", "cross_entropy", n=6, seed=seed)
    U, V = whole.direction(3), whole.direction(3)
    expected = whole.loss.third(U, V)
    chunked = ne.TrainingLoss(whole.net, "cross_entropy", whole.X, whole.y, chunk_size=chunk)
    assert_close(chunked.third(U, V), expected, TOL["exact"], f"in chunks of {chunk} examples")
    cost = memory.product_cost(whole.net)       # a third derivative of 3 pairs plans for 9 directions
    budgets = {"one pair a block": cost.bytes(6, 3, total=9), "chunks of examples": cost.bytes(2, 1, total=9)}
    for split, budget in budgets.items():
        small = ne.TrainingLoss(whole.net, "cross_entropy", whole.X, whole.y, max_memory=budget)
        plan = small.plan(9)
        assert plan.directions == 3 if split == "one pair a block" else plan.examples < 6
        assert_close(small.third(U, V), expected, TOL["exact"], split)


def test_float32_agrees_with_float64():
    wide = build_problem([4, 6, 6, 3], "elu", "cross_entropy", n=8, seed=3, check_kinks=False)
    narrow = build_problem([4, 6, 6, 3], "elu", "cross_entropy", n=8, seed=3, dtype="float32", check_kinks=False)
    u = wide.direction()
    assert_close(narrow.loss.third(u.astype(np.float32)), wide.loss.third(u), TOL["float32"], "float32")


def test_third_at_a_given_theta_leaves_the_network_alone():
    problem = build_problem([3, 4, 3], "tanh", "mse", n=4, seed=0)
    theta, u = problem.theta, problem.direction()
    moved = theta + 0.1 * problem.direction()
    at_moved = to_numpy(problem.loss.third(u, theta=moved))
    assert_close(problem.net.theta, theta, 0, "θ unchanged")
    problem.net.set_theta(moved)
    assert_close(problem.loss.third(u), at_moved, TOL["exact"], "third(theta=) against the network moved there")


def test_bad_input_is_named():
    problem = build_problem([3, 4, 3], "tanh", "mse", n=4, seed=0)
    loss, P = problem.loss, problem.net.num_params
    with pytest.raises(ValueError, match=r"u must have shape"):
        loss.third(np.ones(P + 1))
    with pytest.raises(ValueError, match=r"u and v must have the same shape"):
        loss.third(np.ones((P, 2)), np.ones((P, 3)))
    with pytest.raises(ValueError, match=r"u and v must have the same shape"):
        loss.third(np.ones(P), np.ones((P, 1)))
    with pytest.raises(ValueError, match=r"v contains NaN"):
        loss.third(np.ones(P), np.full(P, np.nan))
    with pytest.raises(ValueError, match=r"eigenvector must not be zero"):
        loss.eigenvalue_gradient(np.zeros(P))


def test_what_has_no_third_order_passes_is_named():
    class Doubling(ne.Layer):                       # four passes, no rr_forward / rr_backward
        def forward(self, x, cache):
            return 2 * x

        def backward(self, delta, cache, grad=None, need_input=True):
            return 2 * delta

        def r_forward(self, r_x, v, cache):
            return None if r_x is None else 2 * r_x

        def r_backward(self, r_delta, v, cache, r_grad, second_order=True, need_input=True):
            return 2 * r_delta

    class Softplus(ne.Activation):                  # σ, σ', σ'' but no σ'''
        @staticmethod
        def sigma(x):
            return np.logaddexp(x, 0)

        @staticmethod
        def slope(x):
            return 1 / (1 + np.exp(-x))

        @staticmethod
        def curvature(x):
            s = 1 / (1 + np.exp(-x))
            return s * (1 - s)

    class NoThird(ne.criteria.MSE):
        third_product = ne.criteria.Criterion.third_product

    X, y = np.ones((2, 3)), np.array([0, 1])
    cases = [(ne.Sequential([Dense(3, 2), Doubling()], (3,)), "mse", r"Doubling defines no third-order passes"),
             (ne.Sequential([Dense(3, 2), Softplus(), Dense(2, 2)], (3,)), "mse",
              r"Softplus states no third_derivative"),
             (ne.Sequential([Dense(3, 2)], (3,)), NoThird(), r"NoThird defines no third_product")]
    for net, criterion, message in cases:
        loss = ne.TrainingLoss(net, criterion, X, y)
        with pytest.raises(NotImplementedError, match=message):
            loss.third(np.ones(net.num_params))


def test_a_linear_model_has_only_the_criterion_term():
    """One dense layer: z is linear in θ, so ∇³L̃[u, v, ·] = (1/N) Σ_n J_nᵀ ∂³l[J_n u, J_n v, ·] alone, and zero
    for MSE."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((5, 3)), rng.integers(0, 2, 5)
    net = ne.Sequential([Dense(3, 2)], (3,), theta=rng.standard_normal(8))
    u = rng.standard_normal(8)
    assert_close(ne.TrainingLoss(net, "mse", X, y).third(u), np.zeros(8), 0, "MSE on a linear model")
    ce = ne.TrainingLoss(net, "cross_entropy", X, y)
    fd = central_difference(lambda t: ce.hvp(u, theta=t), to_numpy(net.theta), u, step=FD_STEP)
    assert_close(ce.third(u), fd, TOL["fd"], "cross-entropy on a linear model")


def test_eigenvalue_gradient_normalises_each_column_and_names_u():
    """∇λ = ∇³L̃[u, u, ·]/‖u‖² per column: a block of columns of norms 2 and 3 gives each column's own."""
    problem = build_problem([3, 4, 3], "tanh", "cross_entropy", n=5, seed=0)
    loss, P = problem.loss, problem.net.num_params
    a, b = np.random.default_rng(0).standard_normal((2, P))
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    block = to_numpy(loss.eigenvalue_gradient(np.stack([2 * a, 3 * b], axis=1)))
    assert_close(block[:, 0], loss.eigenvalue_gradient(a), TOL["exact"], "column of norm 2")
    assert_close(block[:, 1], loss.eigenvalue_gradient(b), TOL["exact"], "column of norm 3")
    with pytest.raises(ValueError, match=rf"^u must have shape \({P},\)"):
        loss.eigenvalue_gradient(np.ones(P + 1))


def test_third_is_cut_as_the_memory_plan_says(monkeypatch):
    """A block of k pairs asks the plan for 3k directions (the records hold about three products' worth), and
    runs ⌊directions / 3⌋ pairs (at least one) over chunks of the planned examples; with v = u each pass gets one
    block of directions for both (k R-directions, not 2k)."""
    from nn_eos import third_order

    problem = build_problem([3, 4, 3], "tanh", "cross_entropy", n=7, seed=1)
    loss, P = problem.loss, problem.net.num_params
    U = np.random.default_rng(1).standard_normal((P, 5))
    expected = to_numpy(loss.third(U, U))
    seen, asked, original = [], [], third_order._passes

    def recording(loss_, X, y, Ub, Vb):
        seen.append((len(Ub), len(X), Vb is Ub))
        return original(loss_, X, y, Ub, Vb)
    monkeypatch.setattr(third_order, "_passes", recording)
    for directions, pairs in ((3, 1), (6, 2), (2, 1)):
        seen.clear(), asked.clear()
        monkeypatch.setattr(loss, "plan", lambda k, d=directions: asked.append(k) or memory.Plan(3, d))
        assert_close(loss.third(U), expected, TOL["exact"], f"{directions} directions a block")
        assert asked == [15]
        assert [s[0] for s in seen] == [pairs] * (5 // pairs) * 3 + [5 % pairs] * 3 * (5 % pairs > 0)
        assert all(examples <= 3 for _, examples, _ in seen) and sum(s[1] for s in seen) == 7 * -(-5 // pairs)
        assert all(same for _, _, same in seen)
