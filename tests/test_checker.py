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
        if self.bug == "forward_none":
            return None
        y = x * self.s + self.b
        return y[..., :-1] if self.bug == "forward_shape" else y

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
        if self.bug == "r_forward_shape":
            return r_y[:-1]
        if r_x is None:                                  # off by a relative 1e-5 only without R{x}
            return r_y * (1 + 1e-5 * (self.bug == "r_forward_without_r_x"))
        return r_x * self.s + r_y

    def r_backward(self, r_delta, v, cache, r_grad, second_order=True, need_input=True):
        examples = tuple(range(1, r_delta.ndim - 1))
        if self.bug == "accumulates":                    # adds to the buffer instead of assigning
            r_grad[:, :self.width] += (r_delta * cache.x).sum(axis=examples)
        else:
            r_grad[:, :self.width] = (r_delta * cache.x).sum(axis=examples)
        r_grad[:, self.width:] = r_delta.sum(axis=examples)
        if self.bug == "raises":
            raise TypeError("a bug of the layer's own")
        second_order_term = second_order or self.bug == "gauss_newton_reads_r_x"   # the flag forgotten
        if second_order_term and cache.r_x is not None:
            r_grad[:, :self.width] += (cache.delta * cache.r_x).sum(axis=examples) * (
                1 + 1e-5 * (self.bug == "second_order_term"))
        if not need_input:
            return None
        if self.bug == "reads_v":                        # the docs' old example: v read before the flag
            V_s, _ = self.per_direction(v, cache.x.ndim)
        if not second_order:
            return r_delta * self.s
        V_s, _ = self.per_direction(v, cache.x.ndim)
        r_dx = r_delta * self.s + cache.delta * V_s
        return r_dx[:, :-1] if self.bug == "r_backward_input_shape" else r_dx

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
    ("forward_shape", r"^Scale.forward: shape \(4, 2\), expected \(4, 3\)"),
    ("forward_none", r"^Scale.forward: shape None, expected \(4, 3\)"),
    ("r_forward_shape", r"^Scale.r_forward \(R\{x\} given\): shape \(2, 4, 3\), expected \(3, 4, 3\)"),
    ("r_forward_without_r_x", r"^Scale.r_forward \(R\{x\} = 0\), direction 0"),
    ("r_backward_input_shape", r"^Scale.r_backward input \(second_order=True, as a product runs it\): shape "
                               r"\(3, 3, 3\), expected \(3, 4, 3\)"),
    ("second_order_term", r"^Scale.r_backward parameters \(second_order=True, as a product runs it, against d/dt "
                          r"backward\), direction 0"),
    ("gauss_newton_reads_r_x", r"^Scale.r_backward parameters \(second_order=False, as a product runs it, against "
                               r"the backward pass of R\{δ\}\), direction 0"),
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


class Recorded(Scale):
    """Scale recording what the checker hands it: parameters, inputs (with their array module) and directions."""

    def __init__(self, width):
        super().__init__(width)
        self.seen = []

    def bind(self, params):
        self.seen.append(("params", type(params).__module__, np.array(ne.backend.to_numpy(params))))
        super().bind(params)

    def forward(self, x, cache):
        self.seen.append(("x", type(x).__module__, np.array(ne.backend.to_numpy(x))))
        return super().forward(x, cache)

    def r_forward(self, r_x, v, cache):
        self.seen.append(("v", type(v).__module__, np.array(ne.backend.to_numpy(v))))
        return super().r_forward(r_x, v, cache)


def same_records(a, b):
    return len(a) == len(b) and all(x[:2] == y[:2] and np.array_equal(x[2], y[2]) for x, y in zip(a, b))


def test_the_checks_are_reproducible_by_seed_and_run_on_the_device_asked_for():
    """The draws (inputs, parameters, directions) depend on the seed alone — the default seed 0, n 3, k 3 —
    and every array a layer sees is on the device asked for, not the default one."""
    runs = {}
    for key, kwargs in (("default", {}), ("seed 0", dict(seed=0, n=3, k=3)), ("again", dict(seed=0)),
                        ("seed 1", dict(seed=1))):
        layer = Recorded(3)
        testing.check_layer(layer, (3,), **kwargs)
        runs[key] = layer.seen
    assert same_records(runs["default"], runs["seed 0"]) and same_records(runs["default"], runs["again"])
    assert not same_records(runs["default"], runs["seed 1"])
    assert runs["default"][0][2].shape == (6,) and runs["default"][1][2].shape == (3, 3)
    assert next(r for r in runs["default"] if r[0] == "v")[2].shape == (3, 6)
    other = "cpu" if ne.backend.default_device() != "cpu" else "strict"
    layer = Recorded(3)
    testing.check_layer(layer, (3,), device=other)
    expected = "numpy" if other == "cpu" else "nn_eos.strict"
    assert {module for _, module, _ in layer.seen} == {expected}


def test_given_inputs_and_parameters_are_the_ones_checked():
    x, params = np.arange(12.0).reshape(4, 3) / 7, np.linspace(-1, 1, 6)
    layer = Recorded(3)
    testing.check_layer(layer, inputs=x, params=params)
    np.testing.assert_array_equal(layer.seen[0][2], params)
    np.testing.assert_array_equal(layer.seen[1][2], x)
    testing.check_layer(ne.Tanh(), inputs=(x - 0.8).astype(np.float32))    # checked in float64 all the same


def test_a_layer_error_after_a_product_is_its_own():
    """Only the measurement-mode run (v=None after a forward pass alone) turns an error into the contract's
    AssertionError; after a product the layer's own error is raised as it is."""
    with pytest.raises(TypeError, match="a bug of the layer's own"):
        testing.check_layer(Scale(3, bug="raises"), (3,))


class RecordedTanh(ne.Tanh):
    def __init__(self):
        self.inputs = []

    def slope(self, x):
        self.inputs.append(np.array(ne.backend.to_numpy(x)))
        return ne.Tanh.slope(x)


def test_check_activation_draws_by_its_defaults_and_hands_its_seed_and_device_on(monkeypatch):
    """Inputs: seed 0, 4 × 5, scale 2 (× a standard normal: none beyond 4 scales here), moved off the kinks;
    check_layer gets the same seed and device."""
    by_default, given_ = RecordedTanh(), RecordedTanh()
    testing.check_activation(by_default)
    testing.check_activation(given_, seed=0, n=4, width=5, scale=2.0, device=None)
    first = by_default.inputs[0]
    assert first.shape == (4, 5) and np.abs(first).max() < 8
    assert all(np.array_equal(a, b) for a, b in zip(by_default.inputs, given_.inputs))
    assert len(by_default.inputs) == len(given_.inputs)
    other = "cpu" if ne.backend.default_device() != "cpu" else "strict"
    layer_runs = []
    original = testing.layers.check_layer

    def recording(layer, **kwargs):
        layer_runs.append(kwargs)
        return original(layer, **kwargs)
    monkeypatch.setattr(testing.layers, "check_layer", recording)
    testing.check_activation(ne.Tanh(), seed=5, device=other)
    assert layer_runs[0]["seed"] == 5 and layer_runs[0]["device"] == other


class Quadratic(ne.Activation):
    """σ = x + x²/200: σ' = 1 + x/100 changes, but it says has_curvature = False."""

    has_curvature = False

    @staticmethod
    def sigma(x):
        return x + x * x / 200

    @staticmethod
    def slope(x):
        return 1 + x / 100


class WrongCurvatureGivenSigma(ne.GELU):
    def derivatives(self, x_hat, x_plus):
        slope, curvature = ne.GELU.derivatives(self, x_hat, x_plus)
        return slope, curvature * (1 + 1e-8)


def test_check_activation_names_a_false_has_curvature_and_a_wrong_curvature_given_sigma():
    with pytest.raises(AssertionError, match=r"^Quadratic: has_curvature = False, but σ' changes away from the kink"):
        testing.check_activation(Quadratic())
    with pytest.raises(AssertionError, match=r"^WrongCurvatureGivenSigma.derivatives: σ'' given σ\(x\) against "
                                             r"σ''\(x\)"):
        testing.check_activation(WrongCurvatureGivenSigma())


class RecordedDense(ne.Dense):
    """Dense recording the directions its third-order pass is handed."""

    def rr_forward(self, ruv_x, t, u, v, cache):
        self.seen.append((type(u).__module__, np.array(ne.backend.to_numpy(u)), np.array(ne.backend.to_numpy(v))))
        return super().rr_forward(ruv_x, t, u, v, cache)


def test_the_third_order_check_draws_by_the_seed_on_the_device_asked_for():
    runs = []
    other = "cpu" if ne.backend.default_device() != "cpu" else "strict"
    for seed, device in ((0, None), (0, None), (1, None), (0, other)):
        layer = RecordedDense(3, 2)
        layer.seen = []
        testing.check_layer(layer, (3,), seed=seed, device=device)
        runs.append(layer.seen)
    assert runs[0] and all(np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2]) for a, b in zip(*runs[:2]))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(runs[0], runs[2]))
    assert {module for module, _, _ in runs[3]} == {"numpy" if other == "cpu" else "nn_eos.strict"}


def test_the_third_order_passes_check_draws_by_its_defaults():
    """Called alone: seed 0 and k = 2 pairs of directions."""
    from nn_eos.testing.third_order import check_third_order_passes

    x, params = np.random.default_rng(0).standard_normal((3, 3)), np.random.default_rng(1).standard_normal(8)
    runs = []
    for kwargs in ({}, dict(seed=0, k=2)):
        layer = RecordedDense(3, 2)
        layer.seen = []
        check_third_order_passes(layer, x, params, **kwargs)
        runs.append(layer.seen)
    assert len(runs[0]) == len(runs[1]) and all(np.array_equal(a[1], b[1]) for a, b in zip(*runs))
    assert runs[0][0][1].shape == (2, 8)
