"""Initial weights have the documented distribution (nn_eos/network.py, ``init_dense`` and ``init_layer``).

The curvature identities hold at any θ, so the derivative tests cannot notice a wrong gain, fan-in or
distribution: these tests read the weights themselves. Xavier: ``U(−a, a)``, ``a = gain·sqrt(6/(fan_in +
fan_out))``; Kaiming: ``N(0, (gain/sqrt(fan_in))²)``; a convolution's fan-in is C·kh·kw, its fan-out F·kh·kw;
biases start at zero; the gain defaults to the activation's (√2 for ReLU and ELU, 5/3 for tanh).
"""

import math

import numpy as np
import pytest

import nn_eos as ne
from nn_eos.activations import ACTIVATIONS
from nn_eos.conv import Conv2d
from nn_eos.layers import Dense

GAINS = {"relu": math.sqrt(2.0), "elu": math.sqrt(2.0), "tanh": 5.0 / 3.0}


def weights_and_biases(net):
    """[(W as (out, fan_in), b, fan_in, fan_out)] of every layer with parameters, host arrays."""
    out = []
    for layer, part in zip(net.layers, net.layer_parts(ne.backend.to_numpy(net.theta))):
        if isinstance(layer, Dense):
            W, b = layer.split(part)
            out.append((np.asarray(W), np.asarray(b), layer.n_in, layer.n_out))
        elif isinstance(layer, Conv2d):
            W, b = layer.split(part)
            kk = layer.win.kh * layer.win.kw
            out.append((np.asarray(W).reshape(layer.F, -1), np.asarray(b), layer.K, layer.F * kk))
    return out


def assert_distribution(W, init, gain, fan_in, fan_out):
    """The entries of W follow the init's law: support and variance, and the shape of the law (excess
    kurtosis −1.2 for a uniform, 0 for a normal), within what the number of entries allows."""
    w = W.ravel()
    m = w.size
    if init == "xavier":
        a = gain * math.sqrt(6.0 / (fan_in + fan_out))
        assert np.abs(w).max() <= a
        assert np.abs(w).max() >= a * (1 - 20 / m)              # the largest of m uniform draws is near a
        variance = a * a / 3
        kurtosis = -1.2
    else:
        variance = (gain / math.sqrt(fan_in)) ** 2
        kurtosis = 0.0
    # the sample variance's relative standard error is sqrt((2 + excess kurtosis)/m); allow six of them
    assert abs(w.var() / variance - 1) < 6 * math.sqrt((2 + kurtosis) / m)
    assert abs(w.mean()) < 6 * math.sqrt(variance / m)
    excess = (w ** 4).mean() / w.var() ** 2 - 3
    assert abs(excess - kurtosis) < 6 * math.sqrt(24 / m)


@pytest.mark.parametrize("init", ["xavier", "kaiming"])
@pytest.mark.parametrize("activation", sorted(GAINS))
def test_mlp_weights_follow_the_init_with_the_activations_gain(init, activation):
    assert ACTIVATIONS[activation].gain == pytest.approx(GAINS[activation])
    net = ne.mlp([300, 200, 100, 7], activation=activation, init=init, seed=3)
    layers = weights_and_biases(net)
    assert len(layers) == 3
    for W, b, fan_in, fan_out in layers:
        assert W.shape == (fan_out, fan_in)
        assert np.all(b == 0)
        assert_distribution(W, init, GAINS[activation], fan_in, fan_out)


@pytest.mark.parametrize("init", ["xavier", "kaiming"])
def test_an_explicit_gain_replaces_the_activations(init):
    net = ne.mlp([300, 200, 7], activation="elu", init=init, gain=0.5, seed=1)
    for W, b, fan_in, fan_out in weights_and_biases(net):
        assert_distribution(W, init, 0.5, fan_in, fan_out)
    assert net.spec["gain"] == 0.5


@pytest.mark.parametrize("init", ["xavier", "kaiming"])
def test_conv_weights_use_channels_times_window_as_fan_in(init):
    """fan-in C·kh·kw, fan-out F·kh·kw, for every conv layer of a builder (the 2022 paper's nets)."""
    net = ne.vgg_like((3, 32, 32), 10, depth=11, width=0.25, activation="relu", init=init, seed=2)
    convs = [layer for layer in net.layers if isinstance(layer, Conv2d)]
    assert convs
    for (W, b, fan_in, fan_out), layer in zip(weights_and_biases(net), convs):
        assert fan_in == layer.C * layer.win.kh * layer.win.kw
        assert np.all(b == 0)
        assert_distribution(W, init, math.sqrt(2.0), fan_in, fan_out)


def test_the_seed_decides_theta():
    a, b, c = (ne.backend.to_numpy(ne.mlp([20, 10, 3], seed=s).theta) for s in (0, 0, 1))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_distribution_check_can_fail():
    """The check above tells the laws apart: a Kaiming draw is not a Xavier one, a gain of 1 is not √2, and
    fan-in alone is not fan-in + fan-out."""
    rng = np.random.default_rng(0)
    fan_in, fan_out = 400, 300
    kaiming = rng.normal(0, math.sqrt(2) / math.sqrt(fan_in), size=(fan_out, fan_in))
    with pytest.raises(AssertionError):
        assert_distribution(kaiming, "xavier", math.sqrt(2), fan_in, fan_out)
    with pytest.raises(AssertionError):
        assert_distribution(kaiming, "kaiming", 1.0, fan_in, fan_out)
    a = math.sqrt(2) * math.sqrt(6 / fan_in)
    with pytest.raises(AssertionError):
        assert_distribution(rng.uniform(-a, a, size=(fan_out, fan_in)), "xavier", math.sqrt(2), fan_in, fan_out)
