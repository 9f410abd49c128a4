"""Every layer's four passes against central finite differences (float64).

A layer is a map ``y = F(x, p)`` of its input and its own parameters. With
``t`` a scalar, the passes must satisfy

    backward:    ⟨backward(δ), u⟩ + ⟨grad, w⟩ = d/dt ⟨δ, F(x + t u, p + t w)⟩
    r_forward:   R{y} = d/dt F(x + t R{x}, p + t v)
    r_backward:  (R{∂/∂x}, R{∂/∂p}) = d/dt backward(δ + t R{δ}) at (x + t R{x}, p + t v)

and, without second-order terms, r_backward is the plain backward pass of R{δ}.
"""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from checks import KINK_MARGIN, TOL, assert_close, central_difference, device_xp
from nn_eos import backend
from nn_eos.activations import ELU, ReLU, Tanh, activation
from nn_eos.layers import Dense, Flatten

xp = device_xp          # the suite's device, looked up at first use (checks.py)


def run_forward(layer, params, x):
    layer.bind(xp.asarray(params))
    return layer.forward(xp.asarray(x))


def run_backward(layer, params, x, delta):
    """(∂/∂x, ∂/∂p) of ⟨δ, F(x, p)⟩ as host arrays."""
    run_forward(layer, params, x)
    grad = xp.zeros(layer.num_params)
    dx = layer.backward(xp.asarray(delta), grad if layer.num_params else None)
    return backend.to_numpy(dx), backend.to_numpy(grad)


def check_layer(layer, x, rng, k=3):
    p = layer.num_params
    params = rng.standard_normal(p)
    y = backend.to_numpy(run_forward(layer, params, x))
    delta = rng.standard_normal(y.shape)

    # backward
    u, w = rng.standard_normal(x.shape), rng.standard_normal(p)
    dx, grad = run_backward(layer, params, x, delta)
    fd = central_difference(lambda t: np.sum(delta * backend.to_numpy(run_forward(layer, params + t * w, x + t * u))),
                            0.0, 1.0)
    assert_close(np.sum(dx * u) + grad @ w, fd, TOL["fd"], "backward")

    # r_forward, with R{x} given and with R{x} = 0
    r_x, V = rng.standard_normal((k,) + x.shape), rng.standard_normal((k, p))
    for given_r_x in (r_x, None):
        run_forward(layer, params, x)
        r_y = layer.r_forward(None if given_r_x is None else xp.asarray(given_r_x), xp.asarray(V))
        r_y = backend.to_numpy(r_y) if r_y is not None else np.zeros((k,) + y.shape)
        for j in range(k):
            rx_j = 0 if given_r_x is None else given_r_x[j]
            fd = central_difference(lambda t: run_forward(layer, params + t * V[j], x + t * rx_j), 0.0, 1.0)
            assert_close(r_y[j], fd, TOL["fd"], f"r_forward direction {j}")

    # r_backward, exact (second order) and Gauss-Newton (first order only)
    r_delta = rng.standard_normal((k,) + y.shape)
    for second_order in (True, False):
        run_forward(layer, params, x)
        layer.backward(xp.asarray(delta), None)
        layer.r_forward(xp.asarray(r_x), xp.asarray(V))
        r_grad = xp.zeros((k, p))
        r_dx = backend.to_numpy(layer.r_backward(xp.asarray(r_delta), xp.asarray(V), r_grad, second_order))
        r_grad = backend.to_numpy(r_grad)
        for j in range(k):
            if second_order:
                expect_dx = central_difference(
                    lambda t: run_backward(layer, params + t * V[j], x + t * r_x[j], delta + t * r_delta[j])[0], 0.0, 1.0)
                expect_grad = central_difference(
                    lambda t: run_backward(layer, params + t * V[j], x + t * r_x[j], delta + t * r_delta[j])[1], 0.0, 1.0)
                tol = TOL["fd"]
            else:
                expect_dx, expect_grad = run_backward(layer, params, x, r_delta[j])
                tol = TOL["exact"]
            assert_close(r_dx[j], expect_dx, tol, f"r_backward input, second_order={second_order}")
            assert_close(r_grad[j], expect_grad, tol, f"r_backward params, second_order={second_order}")


@given(n_in=st.integers(1, 6), n_out=st.integers(1, 6), n=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_dense_passes(n_in, n_out, n, seed):
    rng = np.random.default_rng(seed)
    check_layer(Dense(n_in, n_out), rng.standard_normal((n, n_in)), rng)


@given(name=st.sampled_from(["elu", "relu", "tanh"]), n=st.integers(1, 5), d=st.integers(1, 6),
       seed=st.integers(0, 2**32 - 1))
def test_activation_passes(name, n, d, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * 2
    x[np.abs(x) < 10 * KINK_MARGIN] = 0.5  # move inputs away from the kink at 0 (Chainer's trick)
    check_layer(activation(name), x, rng)


@given(shape=st.lists(st.integers(1, 3), min_size=1, max_size=3), n=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_flatten_passes(shape, n, seed):
    rng = np.random.default_rng(seed)
    check_layer(Flatten(), rng.standard_normal((n, *shape)), rng)


# ----- σ, σ', σ'' of each activation -----------------------------------------

away_from_kink = st.floats(-8, 8).filter(lambda t: abs(t) > 10 * KINK_MARGIN)


@pytest.mark.parametrize("cls", [ELU, ReLU, Tanh])
@given(x=st.lists(away_from_kink, min_size=1, max_size=20))
def test_activation_derivatives(cls, x):
    x = np.array(x)
    step = np.ones_like(x)
    assert_close(cls.slope(x), central_difference(cls.sigma, x, step), TOL["fd"], "σ' vs σ")
    assert_close(cls.curvature(x), central_difference(cls.slope, x, step), TOL["fd"], "σ'' vs σ'")
    assert_close(cls().slope_from_output(cls.sigma(x)), cls.slope(x), TOL["exact"], "σ' from σ(x) vs σ'(x)")


def test_kink_convention_is_the_left_branch_everywhere():
    zero = np.zeros(1)
    assert ReLU.slope(zero)[0] == 0 and ReLU.curvature(zero)[0] == 0
    assert ELU.slope(zero)[0] == 1 and ELU.curvature(zero)[0] == 1  # eˣ at x = 0


def test_elu_does_not_overflow():
    x = np.array([-1000.0, -30.0, 0.0, 30.0, 1000.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        s, d, c = ELU.sigma(x), ELU.slope(x), ELU.curvature(x)
    assert np.allclose(s, [-1.0, np.expm1(-30.0), 0.0, 30.0, 1000.0])
    assert np.allclose(d, [0.0, np.exp(-30.0), 1.0, 1.0, 1.0]) and np.allclose(c, [0.0, np.exp(-30.0), 1.0, 0.0, 0.0])


def test_elu_is_accurate_for_small_negative_inputs():
    x = np.array([-1e-12])
    assert ELU.sigma(x)[0] == pytest.approx(-1e-12, rel=1e-12)


@pytest.mark.parametrize("name", ["elu", "tanh"])
def test_the_sigma_second_term_follows_each_backward_pass(name):
    """g ⊙ σ''(x̂) is kept between products at one θ: a new backward pass (another δ, same input) must replace
    it, so the R-backward pass after it equals a fresh layer's."""
    rng = np.random.default_rng(0)
    xp = device_xp
    x, r_x, r_g = (xp.asarray(rng.standard_normal(shape)) for shape in ((5, 4), (2, 5, 4), (2, 5, 4)))
    g1, g2 = (xp.asarray(rng.standard_normal((5, 4))) for _ in range(2))
    reused, fresh = activation(name), activation(name)
    for layer, deltas in ((reused, (g1, g2)), (fresh, (g2,))):
        layer.forward(x)
        for g in deltas:
            layer.backward(g)
            layer.r_forward(r_x, None)
            out = backend.to_numpy(layer.r_backward(r_g, None, None)).copy()
        if layer is reused:
            reused_out = out
    np.testing.assert_array_equal(reused_out, out)
