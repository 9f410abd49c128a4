"""The contract a layer or activation meets (docs/layers.md): what is missing is said at once, by name, and
what is new joins the registry the tests iterate over."""

import numpy as np
import pytest

import nn_eos as ne
from checks import check_activation, device_xp
from nn_eos import backend
from nn_eos.activations import ACTIVATIONS, activation
from nn_eos.network import init_layer


def test_an_activation_without_its_derivatives_is_refused_when_defined():
    with pytest.raises(TypeError, match=r"Half must define slope, curvature"):
        class Half(ne.Activation):
            @staticmethod
            def sigma(x):
                return x / 2

    class Linear(ne.Activation):          # σ'' = 0 everywhere: curvature may be left out
        has_curvature = False

        @staticmethod
        def sigma(x):
            return 2 * x

        @staticmethod
        def slope(x):
            return 2 + 0 * x

    check_activation(Linear())


def test_a_layer_with_some_passes_or_parameters_without_bind_is_refused_by_the_network():
    class ForwardOnly(ne.Layer):
        def forward(self, x, cache):
            return 2 * x

    with pytest.raises(TypeError, match=r"ForwardOnly defines forward but not backward, r_forward, r_backward"):
        ne.Sequential([ForwardOnly(), ne.Dense(3, 2)], (3,))

    class Unbound(ne.Layer):
        num_params = 3

    with pytest.raises(TypeError, match=r"Unbound has num_params = 3 but no bind"):
        ne.Sequential([Unbound(), ne.Dense(3, 2)], (3,))
    with pytest.raises(ValueError, match="at least one layer"):
        ne.Sequential([], (3,))
    with pytest.raises(TypeError, match="Sequential takes Layer instances, got str"):
        ne.Sequential(["relu"], (3,))


def test_an_activation_instance_keeps_its_parameters():
    """activation(instance) used to rebuild the activation from its type, dropping what it was built with."""

    class Leaky(ne.Activation):
        name = "leaky_for_test"

        def __init__(self, slope_left=0.01):
            self.slope_left = slope_left

        def sigma(self, x):
            return device_xp.maximum(x, self.slope_left * x)

        def slope(self, x):
            return device_xp.where(x > 0, 1.0, self.slope_left)

        def curvature(self, x):
            return 0 * x

    leaky = Leaky(0.2)
    assert activation(leaky) is leaky
    net = ne.mlp([3, 4, 2], activation=leaky, seed=0)
    assert net.layers[1].slope_left == 0.2


def test_a_parameter_layer_gives_its_own_initialisation_or_a_clear_error():
    class Shift(ne.Layer):
        num_params = 3

        def bind(self, params):
            self.c = params

    with pytest.raises(TypeError, match=r"Shift has parameters but no initial_parameters"):
        init_layer(np.random.default_rng(0), Shift(), "xavier", 1.0)
    Shift.initial_parameters = lambda self, rng, init, gain: np.full(3, 0.5)
    np.testing.assert_array_equal(init_layer(np.random.default_rng(0), Shift(), "xavier", 1.0), [0.5] * 3)


def test_the_memory_plan_never_counts_an_unknown_layer_as_free():
    from nn_eos import memory

    class Double(ne.Layer):
        def forward(self, x, cache):
            return 2 * x

        def backward(self, delta, cache, grad=None, need_input=True):
            return 2 * delta

        def r_forward(self, r_x, v, cache):
            return None if r_x is None else 2 * r_x

        def r_backward(self, r_delta, v, cache, r_grad, second_order=True, need_input=True):
            return 2 * r_delta

    kept, step = memory.r_values_per_example(Double(), (5,))
    assert kept >= 5 and step >= 10


def test_a_registered_activation_is_built_by_name_and_met_by_the_tests():
    @ne.register_activation
    class Square(ne.Activation):
        name = "square_for_test"

        @staticmethod
        def sigma(x):
            return x * x

        @staticmethod
        def slope(x):
            return 2 * x

        @staticmethod
        def curvature(x):
            return 2 + 0 * x

    try:
        assert isinstance(activation("square_for_test"), Square)
        assert isinstance(ne.mlp([2, 3, 2], activation="square_for_test").layers[1], Square)
        check_activation(Square())
    finally:
        del ACTIVATIONS["square_for_test"]
    with pytest.raises(TypeError, match="register_activation takes an Activation subclass"):
        ne.register_activation(int)


def test_special_functions_run_on_the_suites_device():
    """erf through the backend: scipy.special on NumPy, cupyx on CuPy, and on the stand-in without touching NumPy
    arrays."""
    x = device_xp.asarray(np.linspace(-2, 2, 5))
    erf = backend.special_module(backend.array_module(x)).erf(x)
    assert backend.device_of(erf) == backend.device_of(x)
    from scipy.special import erf as host_erf
    np.testing.assert_allclose(backend.to_numpy(erf), host_erf(np.linspace(-2, 2, 5)), rtol=1e-14)


def test_the_passes_defaults_give_the_input_gradient_and_the_second_order_terms():
    """The contract's defaults (docs/layers.md): ``backward`` returns ∂L̃/∂x unless ``need_input=False``, which
    returns None; ``r_backward`` includes the second-order terms unless told otherwise."""
    from nn_eos.layers import Cache, Dense, Flatten
    rng = np.random.default_rng(0)
    for layer, x in ((Dense(3, 2), rng.standard_normal((4, 3))), (activation("tanh"), rng.standard_normal((4, 3))),
                     (Flatten(), rng.standard_normal((4, 2, 3)))):
        if layer.num_params:
            layer.bind(rng.standard_normal(layer.num_params))
        cache = Cache()
        y = layer.forward(x, cache)
        delta = rng.standard_normal(y.shape)
        grad = np.zeros(layer.num_params)
        by_default = layer.backward(delta, cache, grad)
        assert by_default is not None and by_default.shape == x.shape
        np.testing.assert_array_equal(by_default, layer.backward(delta, cache, np.zeros(layer.num_params),
                                                                 need_input=True))
        if not isinstance(layer, ne.Activation):          # asked of the layers that can come first
            assert layer.backward(delta, cache, np.zeros(layer.num_params), need_input=False) is None
        v = rng.standard_normal((1, layer.num_params))
        r_x = rng.standard_normal((1,) + x.shape)
        r_y = layer.r_forward(r_x, v, cache)
        r_delta = rng.standard_normal(r_y.shape)
        default = layer.r_backward(r_delta, v, cache, np.zeros((1, layer.num_params)))
        second = layer.r_backward(r_delta, v, cache, np.zeros((1, layer.num_params)), second_order=True,
                                  need_input=True)
        np.testing.assert_array_equal(default, second)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_derivatives_from_the_output_agree_with_the_definitions_at_the_kink_too(name):
    """``derivatives(x̂, σ(x̂))`` — what the forward pass keeps — equals ``slope(x̂)`` and ``curvature(x̂)``
    everywhere, the kink x̂ = 0 included, so that which side a kink belongs to is decided in one place."""
    act = activation(name)
    x = np.array([-2.0, -1e-8, -0.0, 0.0, 1e-8, 2.0])
    slope, curvature = act.derivatives(x, act.sigma(x))
    np.testing.assert_allclose(slope, act.slope(x), rtol=1e-15, atol=0)
    if act.has_curvature:
        np.testing.assert_allclose(curvature, act.curvature(x), rtol=1e-15, atol=1e-300)


@pytest.mark.parametrize("n_in, n_out", [(0, 3), (3, 0), (0, 0), (-1, 2)])
def test_a_dense_layer_needs_a_positive_size_on_both_sides(n_in, n_out):
    from nn_eos.layers import Dense
    with pytest.raises(ValueError):
        Dense(n_in, n_out)


def test_every_layer_and_activation_names_itself():
    from nn_eos.conv import AvgPool2d, Conv2d, MaxPool2d
    from nn_eos.layers import Dense, Flatten
    for layer in (Dense(3, 2), Flatten(), Conv2d(1, 2, 3), AvgPool2d(2), MaxPool2d(2)):
        assert repr(layer).startswith(type(layer).__name__ + "(")
    for name, cls in ACTIVATIONS.items():
        assert repr(cls()) == f"{cls.__name__}()"
