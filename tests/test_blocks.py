"""Residual blocks, LayerNorm (Normalize then Affine), GELU and Dense on the last axis: every pass and third-order
pass against central differences at random shapes, whole networks against dense matrices, planted bugs caught."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import nn_eos as ne
from checks import check_activation, check_layer, check_loss, device_xp
from nn_eos import testing
from nn_eos.blocks import Affine, Chain, LayerNorm, Normalize, Residual

shapes = st.tuples(st.integers(1, 3), st.integers(2, 5)).map(lambda s: s[1:] if s[0] == 1 else s)


def spread_rows(shape, seed, n=3):
    """Inputs whose every row has a spread of order one: a normalisation's curvature grows like 1/σ, and on a row of
    nearly equal features central differences of step 1e-5 no longer see its derivatives (as at a kink)."""
    rng = np.random.default_rng(seed)
    return 0.3 * rng.standard_normal((n, *shape)) + np.linspace(-1, 1, shape[-1])


@given(shape=shapes, seed=st.integers(0, 2**32 - 1))
def test_normalize_affine_and_layernorm_passes(shape, seed):
    d = shape[-1]
    check_layer(Affine(d), shape, seed=seed)
    for layer in (Normalize(), LayerNorm(d)):
        check_layer(layer, inputs=spread_rows(shape, seed), seed=seed)


@given(shape=shapes, seed=st.integers(0, 2**32 - 1))
def test_dense_on_the_last_axis(shape, seed):
    check_layer(ne.Dense(shape[-1], 3), shape, seed=seed)


@given(seed=st.integers(0, 2**32 - 1), tokens=st.integers(1, 3))
def test_residual_blocks_of_dense_layernorm_and_activations(seed, tokens):
    shape = (tokens, 4) if tokens > 1 else (4,)
    check_layer(Residual(LayerNorm(4), ne.Dense(4, 6), ne.GELU(), ne.Dense(6, 4)), inputs=spread_rows(shape, seed),
                seed=seed)
    check_layer(Residual(ne.Dense(4, 4)), shape, seed=seed)


def test_a_residual_block_of_convolutions():
    check_layer(Residual(ne.Conv2d(2, 3, 3, padding=1), ne.Tanh(), ne.Conv2d(3, 2, 3, padding=1)), (2, 4, 4), n=2)


def test_gelu_is_exact_and_registered():
    check_activation(ne.GELU())
    assert ne.activations.activation("gelu").__class__ is ne.GELU
    from scipy.special import erfc
    x = np.linspace(-4, 4, 9)
    # Φ = erfc(−x/√2)/2 has no cancellation in the left tail; it and ndtr each round to about one ulp
    np.testing.assert_allclose(ne.GELU.sigma(x), x * erfc(-x / np.sqrt(2)) / 2, rtol=1e-14)


def residual_net(first_layernorm, seed=0):
    rng = np.random.default_rng(seed)
    layers = ([LayerNorm(3)] if first_layernorm else []) + [
        ne.Dense(3, 4), Residual(LayerNorm(4), ne.Dense(4, 5), ne.GELU(), ne.Dense(5, 4)), LayerNorm(4),
        ne.Dense(4, 3)]
    net = ne.Sequential(layers, (3,), theta=np.zeros(sum(layer.num_params for layer in layers))).initialise(seed=1)
    net.set_theta(ne.backend.to_numpy(net.theta) + 0.3 * rng.standard_normal(net.num_params))
    return net, rng.standard_normal((5, 3)), np.arange(5) % 3


@pytest.mark.parametrize("first_layernorm", [False, True])
@pytest.mark.parametrize("criterion", ["cross_entropy", "mse"])
def test_a_residual_layernorm_net_against_dense_matrices_and_third_derivatives(first_layernorm, criterion):
    """∇²L̃, G and H against dense matrices from differences (P ≈ 100), ∇³L̃[u, v, ·] against differences of ∇²L̃ v;
    with a LayerNorm first, the first layer with parameters is one made of layers (R{x} = 0 at its input)."""
    net, X, y = residual_net(first_layernorm)
    loss = ne.TrainingLoss(net, criterion, X, y)
    check_loss(loss, dense_below=200)
    testing.check_third(loss)


def test_layernorm_is_pytorchs_and_starts_at_the_identity_affine():
    """y = γ (x − μ)/sqrt(var + eps) + β with the biased variance, γ = 1 and β = 0 from initialise."""
    x = np.random.default_rng(3).standard_normal((4, 6)) * 5 + 2
    net = ne.Sequential([LayerNorm(6, eps=1e-5)], (6,), theta=np.zeros(12)).initialise()
    expected = (x - x.mean(axis=1, keepdims=True)) / np.sqrt(x.var(axis=1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(ne.backend.to_numpy(net(device_xp.asarray(x))), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(ne.backend.to_numpy(net.theta), [1] * 6 + [0] * 6)


@pytest.mark.parametrize("scale", [0.0, 1e-8, 1e4])
def test_layernorm_in_float32_against_float64_at_near_constant_and_large_inputs(scale):
    """Rows that are constant up to `scale` (eps keeps s finite) and rows of large values: float32 agrees with
    float64 to float32's accuracy, and nothing is NaN."""
    rng = np.random.default_rng(4)
    x = 3.0 + scale * rng.standard_normal((5, 8))
    outs = {}
    for dtype in ("float64", "float32"):
        net = ne.Sequential([LayerNorm(8), ne.Dense(8, 2)], (8,), dtype=dtype,
                            theta=np.random.default_rng(5).standard_normal(16 + 18))
        loss = ne.TrainingLoss(net, "cross_entropy", x, np.arange(5) % 2)
        outs[dtype] = [ne.backend.to_numpy(a) for a in (loss.gradient(), loss.hvp(np.ones(net.num_params)))]
    for a32, a64 in zip(outs["float32"], outs["float64"]):
        assert np.all(np.isfinite(a32))
        testing.assert_close(a32, a64, 1e-3 if scale < 1e3 else 1e-2, "float32 against float64")


class Broken(Normalize):
    """Normalize with one planted bug in the pass named by ``bug``."""

    def __init__(self, bug):
        super().__init__()
        self.bug = bug

    def backward(self, delta, cache, grad=None, need_input=True):
        out = super().backward(delta, cache, grad, need_input)
        return out * (1 + 1e-5) if self.bug == "backward" else out

    def r_forward(self, r_x, v, cache):
        out = super().r_forward(r_x, v, cache)
        return out * (1 + 1e-5) if self.bug == "r_forward" and out is not None else out

    def T(self, a, b, cache):                                         # the second-order term of r_backward
        out = super().T(a, b, cache)
        return out * (1 + 1e-5) if self.bug == "T" else out

    def D3(self, a, b, c, cache):                                     # the third-order term of rr_backward
        out = super().D3(a, b, c, cache)
        return -out if self.bug == "D3" else out


@pytest.mark.parametrize("bug, message", [
    ("backward", r"Broken.backward: the input gradient"),
    ("r_forward", r"Broken.r_forward \(R\{x\} given\)"),
    ("T", r"Broken.r_backward input \(second_order=True"),
    ("D3", r"Broken.rr_backward input"),
])
def test_a_bug_planted_in_each_pass_of_normalize_is_caught(bug, message):
    with pytest.raises(AssertionError, match=message):
        check_layer(Broken(bug), (4,))


class DroppedIdentity(Residual):
    """A residual block whose R-backward pass forgets the identity's R{δ}."""

    def r_backward(self, r_delta, v, cache, r_grad, second_order=True, need_input=True):
        return Chain.r_backward(self, r_delta, v, cache, r_grad, second_order, need_input)


class SwappedAffine(Affine):
    """Affine whose R_uR_v-forward pass swaps u and v in one term (U_γ for V_γ)."""

    def rr_forward(self, ruv_x, t, u, v, cache):
        return super().rr_forward(ruv_x, t, u, u, cache)


def test_planted_bugs_in_residual_and_affine_are_caught():
    with pytest.raises(AssertionError, match=r"DroppedIdentity.r_backward input"):
        check_layer(DroppedIdentity(ne.Dense(3, 3)), (3,))
    with pytest.raises(AssertionError, match=r"SwappedAffine.rr_forward"):
        check_layer(SwappedAffine(3), (3,))


def test_a_residual_block_refuses_a_change_of_shape_and_a_non_layer():
    with pytest.raises(ValueError, match=r"a residual block's output must have its input's shape"):
        ne.Sequential([Residual(ne.Dense(3, 2)), ne.Dense(2, 2)], (3,), theta=np.zeros(8 + 6))
    with pytest.raises(TypeError, match="Residual takes one or more Layer instances"):
        Residual("dense")


@settings(max_examples=5)
@given(seed=st.integers(0, 2**32 - 1))
def test_no_r_quantity_of_an_inner_layer_is_held_between_products(seed):
    net, X, y = residual_net(False, seed)
    loss = ne.TrainingLoss(net, "cross_entropy", X, y)
    loss.hvp(np.ones((net.num_params, 2)))
    block = loss._kept.passes.caches[1]
    for inner in block.inner:
        assert not [name for name in vars(inner) if name.startswith("r_")]
