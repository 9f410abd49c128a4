"""The layer checker holds a layer to the whole contract of docs/layers.md: bugs planted in a correct layer are
caught and named by pass, and correct layers of several shapes pass."""

import re

import numpy as np
import pytest

import nn_eos as ne
from nn_eos import testing


class Scale(ne.Layer):
    """y = x ⊙ s + b over the last axis (the docs' example, written here so that each test can plant one bug)."""

    def __init__(self, width, bug=None):
        self.width, self.num_params, self.bug = width, 2 * width, bug

    def initial_parameters(self, rng, init, gain):
        return np.concatenate([np.ones(self.width), np.zeros(self.width)])

    def bind(self, params):
        self.s, self.b = params[:self.width], params[self.width:]

    def output_shape(self, input_shape):
        return input_shape

    def forward(self, x, cache):
        cache.x = x
        return x * self.s + self.b

    def backward(self, delta, cache, grad=None, need_input=True):
        cache.delta = delta
        if grad is not None:
            examples = tuple(range(delta.ndim - 1))
            grad[:self.width] = (delta * cache.x).sum(axis=examples) * (1 + 1e-5 * (self.bug == "grad_s"))
            if self.bug != "grad_b_unwritten":
                grad[self.width:] = delta.sum(axis=examples)
        if not need_input:
            return None
        if self.bug == "dx_transposed":                  # a shape bug: (d, n) where (n, d) is due
            return (delta * self.s).T
        return delta * self.s * (1 + 1e-5 * (self.bug == "dx"))

    def r_forward(self, r_x, v, cache):
        cache.r_x = r_x
        V_s, V_b = self.per_direction(v, cache.x.ndim)
        r_y = cache.x * V_s + V_b
        return r_y if r_x is None else r_x * self.s + r_y

    def r_backward(self, r_delta, v, cache, r_grad, second_order=True, need_input=True):
        examples = tuple(range(1, r_delta.ndim - 1))
        if self.bug == "accumulates":                    # adds to the buffer instead of assigning
            r_grad[:, :self.width] += (r_delta * cache.x).sum(axis=examples)
        else:
            r_grad[:, :self.width] = (r_delta * cache.x).sum(axis=examples)
        r_grad[:, self.width:] = r_delta.sum(axis=examples)
        if second_order and cache.r_x is not None:
            r_grad[:, :self.width] += (cache.delta * cache.r_x).sum(axis=examples)
        if not need_input:
            return None
        if self.bug == "reads_v":                        # the docs' old example: v read before the flag
            V_s, _ = self.per_direction(v, cache.x.ndim)
        if not second_order:
            return r_delta * self.s
        V_s, _ = self.per_direction(v, cache.x.ndim)
        return r_delta * self.s + cache.delta * V_s

    def per_direction(self, v, ndim):
        shape = (v.shape[0],) + (1,) * (ndim - 1) + (self.width,)
        return v[:, :self.width].reshape(shape), v[:, self.width:].reshape(shape)


@pytest.mark.parametrize("input_shape", [(3,), (4, 3), (2, 2, 3)])
def test_a_correct_layer_passes_on_inputs_of_one_to_three_axes(input_shape):
    testing.check_layer(Scale(3), input_shape)


@pytest.mark.parametrize("bug, message", [
    ("accumulates", r"Scale.r_backward parameters \(second_order=True, as a product runs it\): entry \(0, 0\) not "
                    r"assigned"),
    ("grad_b_unwritten", r"Scale.backward: ∂/∂p: entry \(3,\) not assigned"),
    ("reads_v", r"Scale.r_backward \(second_order=False, as a measurement runs it: after a forward pass alone, "
                r"v=None\) failed with AttributeError"),
    ("grad_s", r"Scale.backward: the parameter gradient"),
    ("dx", r"Scale.backward: the input gradient"),
    ("dx_transposed", r"Scale.backward: ∂/∂x: shape \(3, 4\), expected \(4, 3\)"),
])
def test_each_planted_bug_is_caught_and_named_by_its_pass(bug, message):
    """An accumulating r_grad (the buffers come in as NaN), a Gauss-Newton pass that reads v (run as alignment
    runs it), gradients off by a relative 1e-5 (the tolerance is 1e-6), each part named apart, and a transposed
    input gradient with n ≠ d named by its shape instead of a NumPy broadcast error."""
    with pytest.raises(AssertionError, match=message):
        testing.check_layer(Scale(3, bug=bug), (3,), n=4)


def test_the_docs_example_that_read_v_crashed_the_alignment_measurement_the_checker_now_runs():
    """What the checker's measurement run stands for: alignment.analyze calls the Gauss-Newton pass with v=None."""
    X, y = np.random.default_rng(0).standard_normal((6, 3)), np.arange(6) % 2
    for bug, fails in ((None, False), ("reads_v", True)):
        net = ne.Sequential([ne.Dense(3, 3), Scale(3, bug=bug), ne.Tanh(), ne.Dense(3, 2)], (3,),
                            theta=np.linspace(-1, 1, 12 + 6 + 8) + 1)
        if fails:
            with pytest.raises(AttributeError):
                ne.alignment.output_jacobians(net, X)
        else:
            ne.alignment.output_jacobians(net, X)


def test_a_network_without_theta_warns_and_initialise_uses_each_layers_rule():
    with pytest.warns(UserWarning, match=re.escape("every parameter starts at 0 (Dense(3, 3), Scale(p=6))")):
        net = ne.Sequential([ne.Dense(3, 3), Scale(3)], (3,))
    assert not np.any(ne.backend.to_numpy(net.theta))
    net.initialise(seed=1)
    theta = ne.backend.to_numpy(net.theta)
    np.testing.assert_array_equal(theta[12:], [1, 1, 1, 0, 0, 0])          # Scale's own: s = 1, b = 0
    assert np.all(theta[:9] != 0) and np.all(theta[9:12] == 0)            # Dense: Xavier weights, zero biases

    class Shift(ne.Layer):
        num_params = 3

        def bind(self, params):
            self.c = params

    with pytest.warns(UserWarning):
        bare = ne.Sequential([ne.Dense(3, 3), Shift()], (3,))
    with pytest.raises(TypeError, match="Shift has parameters but no initial_parameters"):
        bare.initialise()


class MeasuredScale(Scale):
    def parameter_gram(self, J, cache):
        """Σ_p (J ∂y/∂p)(J ∂y/∂p)ᵀ: ∂y_j/∂s_j = x_j and ∂y_j/∂b_j = 1, so J diag(x² + 1) Jᵀ."""
        return (J * (1 + cache.x ** 2)[:, None, :]) @ J.transpose(0, 2, 1)


def test_alignment_names_a_layer_without_its_gram_and_uses_the_gram_a_layer_gives():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((5, 3)), np.arange(5) % 2
    layers = [ne.Dense(3, 3), None, ne.Tanh(), ne.Dense(3, 2)]
    theta = rng.standard_normal(12 + 6 + 8)
    criterion = ne.CrossEntropy()
    with pytest.raises(ValueError, match=r"Scale\(p=6\) has parameters and no parameter_gram\(J, cache\)"):
        ne.alignment.layer_grams(ne.Sequential(layers[:1] + [Scale(3)] + layers[2:], (3,), theta=theta), criterion,
                                 X, y)
    net = ne.Sequential(layers[:1] + [MeasuredScale(3)] + layers[2:], (3,), theta=theta)
    grams = ne.alignment.layer_grams(net, criterion, X, y)
    # K^i K^iᵀ = R (∂f/∂θ^i)(∂f/∂θ^i)ᵀ R per example, ∂f/∂θ^i of the Scale layer (θ 12..17) by differences
    def outputs(t):
        with net.using(t):
            return ne.backend.to_numpy(net(X))

    K = np.stack([testing.central_difference(outputs, theta, np.eye(len(theta))[j]) for j in range(12, 18)],
                 axis=2)                                                                    # (n, O, 6)
    R = ne.backend.to_numpy(criterion.sqrt_hessian(net.xp.asarray(outputs(theta)), net.xp.asarray(y)))
    testing.assert_close(grams[1], R @ K @ K.transpose(0, 2, 1) @ R, testing.TOL["fd"], "the Scale layer's K K^T")
