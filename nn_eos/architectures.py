"""Networks beyond the papers' Sequential stacks: a small transformer, a residual MLP and a residual conv net, each
a :class:`~nn_eos.network.Sequential` of the layers in layers.py, blocks.py, sequence.py and attention.py, so every
product, eigensolver, integrator and measurement runs on them unchanged (docs/blocks.md, "Networks").
"""

from .activations import activation as make_activation
from .attention import SelfAttention
from .blocks import LayerNorm, Residual
from .conv import Conv2d, MaxPool2d
from .layers import Dense, Flatten
from .network import INITS, _initialised
from .sequence import Embedding, PositionalEmbedding
from .validation import check_integer


def transformer(vocab, d, heads, depth, seq_len, mlp_ratio=4, activation="gelu", init="xavier", gain=None, seed=0,
                dtype="float64", device=None, causal=True):
    """A pre-norm decoder-only transformer (GPT-2's block order) over token ids (n, seq_len) → logits
    (n, seq_len, vocab)::

        Embedding(vocab, d), PositionalEmbedding(seq_len, d),
        depth × [Residual(LayerNorm(d), SelfAttention(d, heads)),
                 Residual(LayerNorm(d), Dense(d, mlp_ratio·d), σ, Dense(mlp_ratio·d, d))],
        LayerNorm(d), Dense(d, vocab)

    θ is laid out layer by layer in that order (attention's Q, K, V, O each A then b; LayerNorm's γ then β).
    Initial parameters: LayerNorm γ = 1, β = 0; every other weight as a dense layer's by ``init`` with the
    activation's gain (the embeddings as maps from vocab, and from seq_len, to d features), biases 0.
    """
    vocab, d, heads, depth = (check_integer(value, name) for value, name in
                              ((vocab, "vocab"), (d, "d"), (heads, "heads"), (depth, "depth")))
    seq_len, mlp_ratio = check_integer(seq_len, "seq_len"), check_integer(mlp_ratio, "mlp_ratio")
    if d % heads:
        raise ValueError(f"transformer: heads = {heads} must divide d = {d}")
    _check_init(init)
    hidden = mlp_ratio * d
    layers = [Embedding(vocab, d), PositionalEmbedding(seq_len, d)]
    for _ in range(depth):
        layers += [Residual(LayerNorm(d), SelfAttention(d, heads, causal=causal)),
                   Residual(LayerNorm(d), Dense(d, hidden), make_activation(activation), Dense(hidden, d))]
    layers += [LayerNorm(d), Dense(d, vocab)]
    spec = {"kind": "transformer", "vocab": vocab, "d": d, "heads": heads, "depth": depth, "seq_len": seq_len,
            "mlp_ratio": mlp_ratio, "causal": causal}
    return _initialised(layers, (seq_len,), activation, init, gain, seed, dtype, device, spec)


def residual_mlp(n_in, width, depth, n_out, activation="elu", layer_norm=False, init="xavier", gain=None, seed=0,
                 dtype="float64", device=None):
    """A pre-activation residual MLP (He et al. 2016, "identity mappings")::

        Dense(n_in, w), depth × Residual([LayerNorm(w),] σ, Dense(w, w), σ, Dense(w, w)), σ, Dense(w, n_out)
    """
    n_in, width, depth, n_out = (check_integer(value, name) for value, name in
                                 ((n_in, "n_in"), (width, "width"), (depth, "depth"), (n_out, "n_out")))
    _check_init(init)
    blocks = []
    for _ in range(depth):
        norm = [LayerNorm(width)] if layer_norm else []
        blocks.append(Residual(*norm, make_activation(activation), Dense(width, width), make_activation(activation),
                               Dense(width, width)))
    layers = [Dense(n_in, width), *blocks, make_activation(activation), Dense(width, n_out)]
    spec = {"kind": "residual_mlp", "n_in": n_in, "width": width, "depth": depth, "n_out": n_out,
            "layer_norm": layer_norm}
    return _initialised(layers, (n_in,), activation, init, gain, seed, dtype, device, spec)


def residual_conv(in_shape=(3, 32, 32), n_classes=10, channels=16, depth=2, activation="relu", pool=4,
                  init="kaiming", gain=None, seed=0, dtype="float64", device=None):
    """A pre-activation residual conv net for small images::

        Conv2d(C, c, 3, padding=1), depth × Residual(σ, Conv2d(c, c, 3, padding=1), σ, Conv2d(c, c, 3, padding=1)),
        σ, MaxPool2d(pool), Flatten, Dense(c·(H/pool)·(W/pool), n_classes)
    """
    in_shape = tuple(int(size) for size in in_shape)
    if len(in_shape) != 3 or in_shape[1] % pool or in_shape[2] % pool:
        raise ValueError(f"residual_conv takes (C, H, W) inputs with H and W multiples of pool = {pool}, got "
                         f"{in_shape}")
    channels, depth = check_integer(channels, "channels"), check_integer(depth, "depth")
    _check_init(init)

    def conv(c_in):
        return Conv2d(c_in, channels, 3, padding=1)
    blocks = [Residual(make_activation(activation), conv(channels), make_activation(activation), conv(channels))
              for _ in range(depth)]
    flat = channels * (in_shape[1] // pool) * (in_shape[2] // pool)
    layers = [conv(in_shape[0]), *blocks, make_activation(activation), MaxPool2d(pool), Flatten(),
              Dense(flat, n_classes)]
    spec = {"kind": "residual_conv", "in_shape": list(in_shape), "n_classes": n_classes, "channels": channels,
            "depth": depth, "pool": pool}
    return _initialised(layers, in_shape, activation, init, gain, seed, dtype, device, spec)


def _check_init(init):
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; expected one of {INITS}")


__all__ = ["residual_conv", "residual_mlp", "transformer"]
