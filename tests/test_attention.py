"""Sequences: Embedding, PositionalEmbedding, causal SelfAttention and token-level criteria. Every pass and
third-order pass against central differences at random shapes, a tiny transformer against dense matrices and
third derivatives, causality in every pass, no NaN from the mask, float32 against float64 at saturated scores,
planted bugs caught, and the plumbing (token ids, labels (n, T), chunking) with clear errors."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

import nn_eos as ne
from checks import check_criterion, check_layer, check_loss
from nn_eos import testing
from nn_eos.attention import SelfAttention
from nn_eos.backend import to_numpy
from nn_eos.sequence import Embedding, PositionalEmbedding


@given(heads=st.integers(1, 3), e=st.integers(1, 3), T=st.integers(1, 4), causal=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_self_attention_passes(heads, e, T, causal, seed):
    """Forward, backward, R-forward, R-backward (both orders, and as a measurement runs it) and the third-order
    passes against central differences, heads of e features, T positions, with and without the mask."""
    d = heads * e
    check_layer(SelfAttention(d, heads, causal=causal), (T, d), seed=seed, n=2)


@given(vocab=st.integers(1, 6), d=st.integers(1, 4), T=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_embedding_and_positional_embedding_passes(vocab, d, T, seed):
    ids = np.random.default_rng(seed).integers(0, vocab, size=(3, T))
    check_layer(Embedding(vocab, d), inputs=ids, seed=seed)
    check_layer(PositionalEmbedding(T, d), (T, d), seed=seed)


@given(T=st.integers(1, 4), outputs=st.integers(2, 5), seed=st.integers(0, 2**32 - 1))
def test_token_level_criteria(T, outputs, seed):
    for criterion in (ne.CrossEntropy(), ne.MSE()):
        check_criterion(criterion, outputs, seed=seed, positions=(T,))


def test_token_level_cross_entropy_is_the_mean_over_all_tokens():
    """l(z, y) over (n, T, O) is PyTorch's cross_entropy on the n·T flattened tokens; its gradient is the one of
    that mean."""
    rng = np.random.default_rng(0)
    z, y = 3 * rng.standard_normal((4, 5, 6)), rng.integers(0, 6, size=(4, 5))
    ce = ne.CrossEntropy()
    flat = ce.value(z.reshape(20, 6), y.reshape(20))
    assert ce.value(z, y).mean() == pytest.approx(flat.mean(), rel=1e-15)
    np.testing.assert_allclose(ce.gradient(z, y).reshape(20, 6) / 4, ce.gradient(z.reshape(20, 6), y.reshape(20)) / 20,
                               rtol=1e-15)


def tiny_transformer(seed=0, **kwargs):
    net = ne.transformer(5, 4, 2, 1, 3, **{"seed": seed, **kwargs})
    rng = np.random.default_rng(seed)
    net.set_theta(to_numpy(net.theta) + 0.2 * rng.standard_normal(net.num_params))     # γ, β and biases move too
    return net, rng.integers(0, 5, size=(6, 3)), rng.integers(0, 5, size=(6, 3))


@pytest.mark.parametrize("criterion", ["cross_entropy", "mse"])
def test_a_tiny_transformer_against_dense_matrices_and_third_derivatives(criterion):
    """vocab 5, d = 4, 2 heads, depth 1, T = 3 (P = 309): ∇²L̃, G and H against dense matrices from differences,
    G PSD, ∇³L̃[u, v, ·] against differences of ∇²L̃ v."""
    net, X, y = tiny_transformer()
    assert net.num_params == 309
    loss = ne.TrainingLoss(net, criterion, X, y)
    check_loss(loss, dense_below=400)
    testing.check_third(loss)


def test_residual_mlp_and_residual_conv_nets():
    rng = np.random.default_rng(0)
    net = ne.residual_mlp(3, 4, 2, 3, activation="tanh", layer_norm=True, seed=1)
    check_loss(ne.TrainingLoss(net, "cross_entropy", rng.standard_normal((5, 3)), np.arange(5) % 3), dense_below=200)
    conv = ne.residual_conv((1, 4, 4), 3, channels=2, depth=1, activation="tanh", pool=2, seed=1)
    loss = ne.TrainingLoss(conv, "cross_entropy", rng.standard_normal((3, 1, 4, 4)), np.arange(3))
    check_loss(loss, dense_below=0)
    testing.check_third(loss)


def test_chunks_of_examples_give_the_whole_products():
    net, X, y = tiny_transformer(1)
    V = np.random.default_rng(2).standard_normal((net.num_params, 3))
    whole = ne.TrainingLoss(net, "cross_entropy", X, y)
    chunked = ne.TrainingLoss(net, "cross_entropy", X, y, chunk_size=4)
    assert chunked.value() == pytest.approx(whole.value(), rel=1e-14)
    for kind in ("hessian", "ggn", "residual"):
        testing.assert_close(chunked.curvature_product(V, kind), whole.curvature_product(V, kind), 1e-13, kind)


def test_causality_in_every_pass():
    """Changing the last token leaves every earlier position's z and R{z} bit for bit; in attention alone, a δ
    at position t sends ∂L̃/∂x and R{∂L̃/∂x} to positions s ≤ t only."""
    net, X, y = tiny_transformer(3)
    V = np.random.default_rng(4).standard_normal((2, net.num_params))
    X2 = X.copy()
    X2[:, -1] = (X2[:, -1] + 1) % 5

    def outputs(ids):
        caches = net.new_caches()
        z = net.forward(net.inputs(ids), caches)
        return to_numpy(z), to_numpy(net.r_forward(net.xp.asarray(V), caches))
    (z, r_z), (z2, r_z2) = outputs(X), outputs(X2)
    assert not np.allclose(z[:, -1], z2[:, -1])
    np.testing.assert_array_equal(z[:, :-1], z2[:, :-1])
    np.testing.assert_array_equal(r_z[:, :, :-1], r_z2[:, :, :-1])
    # backward: δ at position t reaches only inputs at s ≤ t
    layer = SelfAttention(4, 2)
    layer.bind(np.random.default_rng(5).standard_normal(layer.num_params))
    cache = ne.layers.Cache()
    x = np.random.default_rng(6).standard_normal((2, 4, 4))
    layer.forward(x, cache)
    delta = np.zeros((2, 4, 4))
    delta[:, 1] = 1.0
    dx = layer.backward(delta, cache)
    assert np.all(dx[:, 2:] == 0) and np.any(dx[:, :2] != 0)
    layer.r_forward(np.ones((1, 2, 4, 4)), np.ones((1, layer.num_params)), cache)
    r_dx = layer.r_backward(delta[None], np.ones((1, layer.num_params)), cache, np.empty((1, layer.num_params)))
    assert np.all(r_dx[:, :, 2:] == 0)


@pytest.mark.parametrize("scale", [1.0, 30.0, 300.0])
def test_no_nan_from_the_mask_and_float32_against_float64_at_saturated_scores(scale):
    """Q and K weights scaled so that the softmax saturates: every product finite (no −∞ · 0), float32 against
    float64 to float32's accuracy (looser where the scores are in the hundreds)."""
    results = {}
    for dtype in ("float64", "float32"):
        net, X, y = tiny_transformer(7)
        theta = to_numpy(net.theta).copy()
        attention = net.layers[2].layers[1]
        start = net.offsets[2] + net.layers[2].offsets[1]
        theta[start:start + 2 * attention.query.num_params] *= scale
        net = ne.Sequential(net.layers, net.input_shape, dtype=dtype, theta=theta)
        loss = ne.TrainingLoss(net, "cross_entropy", X, y)
        V = np.random.default_rng(8).standard_normal(net.num_params)
        results[dtype] = [to_numpy(a) for a in (loss.gradient(), loss.hvp(V), loss.ggn(V))]
    for a32, a64 in zip(results["float32"], results["float64"]):
        assert a32.dtype == np.float32                          # nothing promoted on the way (a NumPy scalar would)
        assert np.all(np.isfinite(a32)) and np.all(np.isfinite(a64))
        testing.assert_close(a32, a64, 1e-3 if scale < 100 else 2e-2, "float32 against float64")


class Leaky(SelfAttention):
    """Attention whose R-forward pass lets later positions leak in: R{P} from the unmasked scores."""

    def r_forward(self, r_x, v, cache):
        P = cache.P
        cache.P = SelfAttention(self.d, self.heads, causal=False).softmax(self.scores(cache.q, cache.k))
        try:
            return super().r_forward(r_x, v, cache)
        finally:
            cache.P = P


class Planted(SelfAttention):
    """Attention with a bug ten times the checker's tolerance (a relative 1e-5) in one of its softmax terms."""

    def __init__(self, bug):
        super().__init__(4, 2)
        self.bug = bug

    def J(self, P, a):
        return super().J(P, a) * (1 + 1e-5 if self.bug == "J" else 1)

    def T(self, P, a, b):
        return super().T(P, a, b) * (1 + 1e-5 if self.bug == "T" else 1)

    def D3(self, P, a, b, c):
        return super().D3(P, a, b, c) * (1 + 1e-5 if self.bug == "D3" else 1)


@pytest.mark.parametrize("bug, message", [
    ("J", r"Planted.backward: the input gradient"),
    ("T", r"Planted.r_backward input \(second_order=True"),
    ("D3", r"Planted.rr_backward input"),
])
def test_a_bug_planted_in_each_softmax_term_is_caught(bug, message):
    with pytest.raises(AssertionError, match=message):
        check_layer(Planted(bug), (3, 4), n=2)


class EmbeddingWithoutGradient(Embedding):
    """An embedding whose R-backward pass forgets one token's row."""

    def r_backward(self, r_delta, v, cache, r_grad, second_order=True, need_input=True):
        super().r_backward(r_delta, v, cache, r_grad, second_order, need_input)
        self.split(r_grad)[:, 0] = 0


class PositionsSummedOverFeatures(PositionalEmbedding):
    """A positional embedding whose backward pass sums over the wrong axis."""

    def backward(self, delta, cache, grad=None, need_input=True):
        out = super().backward(delta, cache, grad, need_input)
        if grad is not None:
            grad[...] = (delta.sum(axis=(0, 2))[:, None] + 0 * delta[0]).ravel()
        return out


def test_planted_bugs_in_attention_and_the_embeddings_are_caught():
    with pytest.raises(AssertionError, match=r"Leaky.r_forward"):
        check_layer(Leaky(4, 2), (3, 4), n=2)
    with pytest.raises(AssertionError, match=r"EmbeddingWithoutGradient.r_backward parameters"):
        check_layer(EmbeddingWithoutGradient(3, 2), inputs=np.array([[0, 1, 2], [0, 0, 1]]))
    with pytest.raises(AssertionError, match=r"PositionsSummedOverFeatures.backward: the parameter gradient"):
        check_layer(PositionsSummedOverFeatures(3, 2), (3, 2))


def test_bad_sequences_are_clear_errors():
    net, X, y = tiny_transformer()
    with pytest.raises(ValueError, match=r"token ids in \[1, 5\], but the embedding has a vocabulary of 5"):
        ne.TrainingLoss(net, "cross_entropy", X + 1, y)
    with pytest.raises(TypeError, match="integer token ids"):
        ne.TrainingLoss(net, "cross_entropy", X.astype(float), y)
    with pytest.raises(ValueError, match=r"labels in \[\d, 7\], but the network has 5 outputs"):
        ne.TrainingLoss(net, "cross_entropy", X, np.where(y == 0, 7, y))
    with pytest.raises(ValueError, match=r"y must have shape \(6, 3\)"):
        ne.TrainingLoss(net, "cross_entropy", X, y[:, 0])
    with pytest.raises(ValueError, match="it must be the first layer"):
        ne.Sequential([ne.Dense(2, 2), Embedding(3, 2)], (2,), theta=np.zeros(6 + 6))
    for d, heads in ((6, 4), (0, 1), (4, 0)):                   # 0 heads: a ValueError, not a division by zero
        with pytest.raises(ValueError, match="heads dividing the width"):
            SelfAttention(d, heads)
    with pytest.raises(ValueError, match=r"one output vector per example"):
        ne.alignment.output_jacobians(net, X)


def test_the_transformer_lays_out_theta_and_starts_as_documented():
    net = ne.transformer(7, 8, 2, 2, 5, mlp_ratio=2)
    kinds = [type(layer).__name__ for layer in net.layers]
    assert kinds == ["Embedding", "PositionalEmbedding"] + ["Residual"] * 4 + ["LayerNorm", "Dense"]
    assert net.output_shape == (5, 7) and net.num_outputs == 7 and net.positions == (5,)
    d, hidden = 8, 16
    block = 2 * d + 4 * (d * d + d)
    mlp = 2 * d + d * hidden + hidden + hidden * d + d
    assert net.num_params == 7 * d + 5 * d + 2 * (block + mlp) + 2 * d + d * 7 + 7
    norm = to_numpy(net.layer_parts(net.theta)[-2])
    np.testing.assert_array_equal(norm, np.r_[np.ones(d), np.zeros(d)])
    z = net(np.zeros((2, 5), dtype=np.int64))
    assert z.shape == (2, 5, 7)


def test_a_float32_transformer_keeps_float32_in_every_record():
    net = ne.transformer(7, 8, 2, 1, 4, dtype="float32")
    caches = net.new_caches()
    net.forward(net.inputs(np.zeros((2, 4), dtype=np.int64)), caches)

    def promoted(cache, where):
        for name, value in vars(cache).items():
            if getattr(value, "dtype", None) is not None and value.dtype.kind == "f":
                assert value.dtype == np.float32, f"{where}.{name} is {value.dtype}"
            for j, inner in enumerate(value if name == "inner" else ()):
                promoted(inner, f"{where}.inner[{j}]")
    for i, cache in enumerate(caches):
        promoted(cache, f"layer {i}")


def test_exponential_euler_on_a_sequence_model_takes_the_vocabulary_as_its_default_k():
    """net.num_outputs of a (n, T, V) model is V (the classes), not T·V: ExponentialEuler's default k."""
    net, X, y = tiny_transformer(9)
    loss = ne.TrainingLoss(net, "cross_entropy", X, y)
    integrator = ne.ExponentialEuler(lr_max=0.1)
    assert integrator._k(loss) == 5
    run = ne.train(loss, integrator, max_steps=2, until_loss=0.0, progress=False)
    assert run.metrics["loss"][-1] < run.metrics["loss"][0]


@pytest.mark.parametrize("init", ["xavier", "kaiming"])
def test_the_embeddings_are_drawn_as_a_dense_layer_of_the_same_fans(init):
    """E (vocab, d) and P (T, d) as a dense map from vocab (or T) to d features: Xavier-uniform within
    ±gain·sqrt(6/(fan_in + fan_out)) and reaching near it, or Kaiming-normal with std gain/sqrt(fan_in)."""
    rng = np.random.default_rng(0)
    for layer, fan_in in ((Embedding(400, 300), 400), (PositionalEmbedding(200, 300), 200)):
        w = layer.initial_parameters(rng, init, 1.7)
        assert w.shape == (layer.num_params,)
        if init == "xavier":
            a = 1.7 * np.sqrt(6 / (fan_in + 300))
            assert np.abs(w).max() <= a and np.abs(w).max() > 0.99 * a and abs(w.mean()) < 0.01 * a
        else:
            assert w.std() == pytest.approx(1.7 / np.sqrt(fan_in), rel=0.02) and abs(w.mean()) < 0.01
    with pytest.raises(ValueError, match="unknown init"):
        Embedding(3, 2).initial_parameters(rng, "orthogonal", 1.0)


def test_the_embedding_looks_up_rows_and_the_layers_refuse_bad_sizes():
    layer = Embedding(5, 3)
    E = np.arange(15.0).reshape(5, 3)
    layer.bind(E.ravel())
    ids = np.array([[4, 0, 2], [1, 1, 3]])
    np.testing.assert_array_equal(layer.forward(ids, ne.layers.Cache()), E[ids])      # y = E[x], row by row
    for make in (lambda: Embedding(0, 3), lambda: Embedding(3, 0), lambda: PositionalEmbedding(0, 3),
                 lambda: PositionalEmbedding(3, 0), lambda: SelfAttention(0, 1)):
        with pytest.raises(ValueError, match="positive|heads dividing"):
            make()
    attention = SelfAttention(4, 2)
    for shape in ((3, 5), (4,), (2, 3, 4)):
        with pytest.raises(ValueError, match=r"expects inputs of shape \(n, T, 4\)"):
            attention.output_shape(shape)
    assert repr(attention) == "SelfAttention(4, heads=2)"
    assert repr(SelfAttention(4, 2, causal=False)) == "SelfAttention(4, heads=2, causal=False)"


def test_attention_as_the_first_layer_with_parameters():
    """A net whose first layer is attention (R{x} = 0, no ∂L̃/∂x asked of it): every product against differences
    and dense matrices, and ∇³L̃."""
    rng = np.random.default_rng(3)
    layers = [SelfAttention(4, 2), ne.Dense(4, 3)]
    net = ne.Sequential(layers, (3, 4), theta=0.5 * rng.standard_normal(sum(layer.num_params for layer in layers)))
    loss = ne.TrainingLoss(net, "cross_entropy", rng.standard_normal((4, 3, 4)), rng.integers(0, 3, size=(4, 3)))
    check_loss(loss, dense_below=100)
    testing.check_third(loss)
