"""Shared tools of the test suite: one tolerance table, central differences, problem strategies."""

from dataclasses import dataclass

import numpy as np
from hypothesis import assume, strategies as st

import nn_eos as ne
from nn_eos.activations import Activation
from nn_eos.backend import to_numpy

# One table of tolerances, relative to the largest entry of the expected value.
class _DeviceModule:
    """The array module of the suite's device (NN_EOS_DEVICE), looked up when first used: importing a test
    module never needs CuPy, so without it a GPU run is skipped (conftest.py) instead of failing collection."""

    def __getattr__(self, name):
        return getattr(ne.backend.module_for(ne.backend.default_device()), name)


device_xp = _DeviceModule()


def device_operator(M):
    """The symmetric matrix M as a block operator ``V ↦ M V`` on the suite's device (NN_EOS_DEVICE), so that
    the eigensolvers' tests run where the suite runs."""
    from nn_eos.eigen import BlockOperator

    A = device_xp.asarray(M)
    return BlockOperator(lambda V: A @ V, like=A[:, 0])

TOL = {
    "fd": 1e-6,        # float64 central differences, step FD_STEP (error ~ step² + 1e-16/step)
    "exact": 1e-10,    # two float64 routes to the same number (rounding only)
    "float32": 1e-3,   # float32 against float64
}
FD_STEP = 1e-5
KINK_MARGIN = 1e-3    # pre-activations of ReLU/ELU nets stay this far from the kink at 0


def assert_close(actual, expected, tol, what=""):
    """max |actual − expected| ≤ tol · max(max |expected|, 1e-3)."""
    actual, expected = to_numpy(actual), to_numpy(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-3)
    err = float(np.abs(actual - expected).max(initial=0.0))
    assert err <= tol * scale, f"{what}: max error {err:.3e} > {tol:.0e} × scale {scale:.3e}"


def central_difference(f, x, v, step=FD_STEP):
    """(f(x + step·v) − f(x − step·v)) / (2 step), for array- or float-valued f."""
    return (to_numpy(f(x + step * v)) - to_numpy(f(x - step * v))) / (2 * step)


def min_abs_preactivation(net, X):
    """The smallest |x̂| entering any activation of the network on data X."""
    net(X)
    values = [float(np.abs(to_numpy(l.x_hat)).min()) for l in net.layers if isinstance(l, Activation)]
    return min(values, default=np.inf)


@dataclass
class Problem:
    net: object
    loss: object
    X: np.ndarray
    y: np.ndarray
    rng: np.random.Generator

    @property
    def theta(self):
        return to_numpy(self.net.theta).copy()

    def direction(self, k=None):
        """A random unit direction (P,), or k of them as (P, k)."""
        P = self.net.num_params
        V = self.rng.standard_normal((P,) if k is None else (P, k))
        return V / np.linalg.norm(V, axis=0)


def build_problem(widths, activation, criterion, n, seed, dtype="float64", chunk_size=None, device=None):
    """A small MLP at a random θ (biases non-zero) with random data, away from kinks, on ``device`` (default:
    the suite's, NN_EOS_DEVICE)."""
    rng = np.random.default_rng(seed)
    net = ne.mlp(widths, activation=activation, seed=seed, dtype=dtype, device=device)
    net.set_theta(to_numpy(net.theta) + 0.3 * rng.standard_normal(net.num_params))
    X = rng.standard_normal((n, widths[0]))
    y = rng.integers(0, widths[-1], size=n)
    if activation in ("relu", "elu"):
        assume(min_abs_preactivation(net, X) > KINK_MARGIN)
    loss = ne.TrainingLoss(net, criterion, X, y, chunk_size=chunk_size)
    return Problem(net, loss, X, y, rng)


@st.composite
def problems(draw, max_depth=4, max_width=5, max_examples=6, activations=("elu", "relu", "tanh"),
             criteria=("cross_entropy", "mse")):
    """Random MLP problems: depth 1–max_depth, widths 1–max_width, 2–4 outputs, both criteria."""
    depth = draw(st.integers(1, max_depth))
    widths = draw(st.lists(st.integers(1, max_width), min_size=depth, max_size=depth))
    widths.append(draw(st.integers(2, 4)))
    return build_problem(widths, draw(st.sampled_from(activations)), draw(st.sampled_from(criteria)),
                         n=draw(st.integers(1, max_examples)), seed=draw(st.integers(0, 2**32 - 1)))
