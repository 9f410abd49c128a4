"""Every layer's four passes against central finite differences (float64), through nn_eos.testing.

``check_layer`` and ``check_activation`` (nn_eos/testing/__init__.py) state what they check: backward against
the derivative of ⟨δ, F(x, p)⟩, r_forward against d/dt F(x + t R{x}, p + t v), r_backward against d/dt
backward along the same line and, without second-order terms, against the backward pass of R{δ}.
"""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from checks import check_activation, check_layer
from nn_eos.activations import ACTIVATIONS, ELU, ReLU, activation
from nn_eos.layers import Dense, Flatten


@given(n_in=st.integers(1, 6), n_out=st.integers(1, 6), n=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_dense_passes(n_in, n_out, n, seed):
    check_layer(Dense(n_in, n_out), (n_in,), seed=seed, n=n)


@given(name=st.sampled_from(sorted(ACTIVATIONS)), n=st.integers(1, 5), d=st.integers(1, 6),
       seed=st.integers(0, 2**32 - 1))
def test_activation_passes(name, n, d, seed):
    check_activation(activation(name), seed=seed, n=n, width=d)


@given(shape=st.lists(st.integers(1, 3), min_size=1, max_size=3), n=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_flatten_passes(shape, n, seed):
    check_layer(Flatten(), tuple(shape), seed=seed, n=n)


# ----- σ, σ', σ'' of each activation -----------------------------------------

@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@given(seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([0.5, 2.0, 8.0]))
def test_activation_derivatives(name, seed, scale):
    """σ' against differences of σ, σ'' against those of σ', and what the forward pass keeps against both."""
    check_activation(activation(name), seed=seed, n=4, width=5, scale=scale)


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
