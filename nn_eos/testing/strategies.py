"""Hypothesis strategies behind the project's tests, for running nn_eos.testing's checks under hypothesis.

    from hypothesis import given
    from nn_eos.testing import check_loss, strategies

    @given(problem=strategies.problems())
    def test_my_loss(problem):
        check_loss(problem.loss)

Needs hypothesis (``pip install nn_eos[test]``); the checks in :mod:`nn_eos.testing` do not.
"""

from dataclasses import dataclass

import numpy as np

try:
    from hypothesis import assume, strategies as st
except ImportError as error:            # pragma: no cover - the [test] extra brings it
    raise ImportError("nn_eos.testing.strategies needs hypothesis: pip install 'nn_eos[test]' (the checks in "
                      "nn_eos.testing itself work without it)") from error

from .. import backend
from ..activations import ACTIVATIONS, Activation
from ..criteria import CRITERIA
from ..curvature import TrainingLoss
from ..layers import Cache
from ..network import mlp
from .differences import KINK_MARGIN

seeds = st.integers(0, 2**32 - 1)


def min_abs_preactivation(net, X):
    """The smallest |x̂| entering any activation of the network on data X."""
    x, values = net.xp.asarray(X), []
    for layer in net.layers:
        if isinstance(layer, Activation):
            values.append(float(np.abs(backend.to_numpy(x)).min()))
        x = layer.forward(x, Cache())
    return min(values, default=np.inf)


@dataclass
class Problem:
    """A network, its loss on random data, and a generator for directions."""

    net: object
    loss: object
    X: np.ndarray
    y: np.ndarray
    rng: np.random.Generator

    @property
    def theta(self):
        return backend.to_numpy(self.net.theta).copy()

    def direction(self, k=None):
        """A random unit direction (P,), or k of them as (P, k)."""
        P = self.net.num_params
        V = self.rng.standard_normal((P,) if k is None else (P, k))
        return V / np.linalg.norm(V, axis=0)


def build_problem(widths, activation, criterion, n, seed, dtype="float64", chunk_size=None, device=None,
                  check_kinks=True):
    """A small MLP at a random θ (biases non-zero) with random data on ``device`` (default: NN_EOS_DEVICE);
    under hypothesis, draws whose pre-activations come near a kink of ReLU or ELU are rejected."""
    rng = np.random.default_rng(seed)
    net = mlp(widths, activation=activation, seed=seed, dtype=dtype, device=device)
    net.set_theta(backend.to_numpy(net.theta) + 0.3 * rng.standard_normal(net.num_params))
    X = rng.standard_normal((n, widths[0]))
    y = rng.integers(0, widths[-1], size=n)
    if check_kinks and getattr(activation, "name", activation) in ("relu", "elu"):
        assume(min_abs_preactivation(net, X) > KINK_MARGIN)
    loss = TrainingLoss(net, criterion, X, y, chunk_size=chunk_size)
    return Problem(net, loss, X, y, rng)


@st.composite
def problems(draw, max_depth=4, max_width=5, max_examples=6, activations=tuple(sorted(ACTIVATIONS)),
             criteria=tuple(sorted(CRITERIA))):
    """Random MLP problems: depth 1–max_depth, widths 1–max_width, 2–4 outputs, every registered activation
    and criterion."""
    depth = draw(st.integers(1, max_depth))
    widths = draw(st.lists(st.integers(1, max_width), min_size=depth, max_size=depth))
    widths.append(draw(st.integers(2, 4)))
    return build_problem(widths, draw(st.sampled_from(activations)), draw(st.sampled_from(criteria)),
                         n=draw(st.integers(1, max_examples)), seed=draw(seeds))
