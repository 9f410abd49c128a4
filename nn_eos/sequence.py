"""Sequences of tokens in: the token embedding and the learned positions (docs/blocks.md, "Embedding").

    Embedding(vocab, d)           y = onehot(x) E         token ids x (n, T) → (n, T, d); E (vocab, d) row-major
    PositionalEmbedding(T, d)     y = x + P               P (T, d) row-major, added to every example

Both are linear in their parameters, and the embedding's input (token ids) is
data, which no direction of θ moves: neither has a second-order term, and the
embedding sends no gradient down (it is the network's first layer).
"""

import numpy as np

from .backend import array_module
from .layers import Layer, by_direction, direction_rows, rows
from .network import init_weights


class Embedding(Layer):
    """``y = onehot(x) E``: the row of E for each token id in x (n, …), integers in 0..vocab−1; E (vocab, d)
    row-major in θ. With ``onehot(x)`` (n, …, vocab) the rows of the identity at the ids, every pass is a product
    with it (docs/blocks.md, "Embedding")::

        ∂L̃/∂E = onehot(x)ᵀ δ        R{y} = onehot(x) V_E        R{∂L̃/∂E} = onehot(x)ᵀ R{δ}

    and ``R_uR_v{y} = 0``, ``R_uR_v{∂L̃/∂E} = onehot(x)ᵀ R_uR_v{δ}``. Token ids are data: no ``∂L̃/∂x``, and the
    layer must be the network's first (Sequential checks it).
    """

    takes_token_ids = True

    def __init__(self, vocab, d):
        if int(vocab) < 1 or int(d) < 1:
            raise ValueError(f"Embedding needs a positive vocabulary and width, got vocab={vocab}, d={d}")
        self.vocab, self.d = int(vocab), int(d)
        self.num_params = self.vocab * self.d

    def __repr__(self):
        return f"Embedding({self.vocab}, {self.d})"

    def output_shape(self, input_shape):
        return (*tuple(input_shape), self.d)

    def initial_parameters(self, rng, init, gain):
        """E drawn as a dense layer from the vocabulary to d features (network.init_weights)."""
        return init_weights(rng, (self.vocab, self.d), self.vocab, self.d, init, gain).ravel()

    def bind(self, params):
        self.E = params.reshape(self.vocab, self.d)

    def split(self, flat):
        """A (…, p) array as (…, vocab, d)."""
        return flat.reshape(*flat.shape[:-1], self.vocab, self.d)

    def r_values_per_example(self, input_shape, first):
        """(kept, step) of memory.r_values_per_example: R{y} and onehot(x) V_E before it is shaped."""
        o = int(np.prod(self.output_shape(input_shape)))
        return o, 2 * o

    def values_per_example(self, input_shape):
        """The forward record: onehot(x) and y."""
        positions = int(np.prod(input_shape))
        return positions * (self.vocab + self.d)

    def forward(self, x, cache):
        """``y = onehot(x) E``."""
        if x.dtype.kind not in "iu":
            raise TypeError(f"{self!r} takes integer token ids, got dtype {x.dtype}")
        cache.one_hot = (array_module(x).arange(self.vocab) == x[..., None]).astype(self.E.dtype)  # (n, …, vocab)
        return cache.one_hot @ self.E

    def backward(self, delta, cache, grad=None, need_input=True):
        """``∂L̃/∂E = onehot(x)ᵀ δ`` (vocab, d); token ids have no gradient."""
        if grad is not None:
            grad[...] = (rows(cache.one_hot).T @ rows(delta)).ravel()
        return None

    def r_forward(self, r_x, v, cache):
        """``R{y} = onehot(x) V_E``; token ids do not move (R{x} = 0)."""
        if r_x is not None:
            raise ValueError(f"{self!r} got R{{x}} ≠ 0: token ids do not move with θ; it must be the first layer")
        return by_direction(rows(cache.one_hot) @ self.split(v), cache.one_hot.shape[:-1])

    def r_backward(self, r_delta, v, cache, r_grad, second_order=True, need_input=True):
        """``R{∂L̃/∂E} = onehot(x)ᵀ R{δ}``: the embedding is linear in E and its input is data, so it has no
        second-order term."""
        self.split(r_grad)[...] = rows(cache.one_hot).T @ direction_rows(r_delta)          # (vocab, N) @ (k, N, d)
        return None

    def rr_forward(self, ruv_x, t, u, v, cache):
        """``R_uR_v{y} = 0``."""
        return None

    def rr_backward(self, ruv_delta, t, u, v, cache, rr_grad, need_input=True):
        """``R_uR_v{∂L̃/∂E} = onehot(x)ᵀ R_uR_v{δ}``."""
        self.split(rr_grad)[...] = rows(cache.one_hot).T @ direction_rows(ruv_delta)
        return None


class PositionalEmbedding(Layer):
    """``y = x + P``: a learned vector per position added to every example's (T, d) features; P (T, d) row-major in
    θ (docs/blocks.md, "PositionalEmbedding")::

        ∂L̃/∂P = Σ_n δ      ∂L̃/∂x = δ      R{y} = R{x} + V_P      R{∂L̃/∂P} = Σ_n R{δ}      R{∂L̃/∂x} = R{δ}

    and ``R_uR_v{y} = R_uR_v{x}``, ``R_uR_v{∂L̃/∂P} = Σ_n R_uR_v{δ}``: an addition has no second-order term.
    """

    def __init__(self, T, d):
        if int(T) < 1 or int(d) < 1:
            raise ValueError(f"PositionalEmbedding needs a positive length and width, got T={T}, d={d}")
        self.T, self.d = int(T), int(d)
        self.num_params = self.T * self.d

    def __repr__(self):
        return f"PositionalEmbedding({self.T}, {self.d})"

    def output_shape(self, input_shape):
        if tuple(input_shape) != (self.T, self.d):
            raise ValueError(f"{self!r} expects inputs of shape (n, {self.T}, {self.d}), got (n, *{tuple(input_shape)})")
        return tuple(input_shape)

    def initial_parameters(self, rng, init, gain):
        """P drawn as a dense layer from T to d features (network.init_weights)."""
        return init_weights(rng, (self.T, self.d), self.T, self.d, init, gain).ravel()

    def bind(self, params):
        self.P = params.reshape(self.T, self.d)

    def split(self, flat):
        """A (…, p) array as (…, T, d)."""
        return flat.reshape(*flat.shape[:-1], self.T, self.d)

    def r_values_per_example(self, input_shape, first):
        """(kept, step) of memory.r_values_per_example: R{y}, and V_P spread over the examples."""
        o = self.T * self.d
        return o, 2 * o

    def forward(self, x, cache):
        """``y = x + P``."""
        cache.n = x.shape[0]
        return x + self.P

    def backward(self, delta, cache, grad=None, need_input=True):
        """``∂L̃/∂P = Σ_n δ``, ``∂L̃/∂x = δ``."""
        if grad is not None:
            grad[...] = delta.sum(axis=0).ravel()
        return delta if need_input else None

    def r_forward(self, r_x, v, cache):
        """``R{y} = R{x} + V_P``."""
        V_P = self.split(v)[:, None]                                                       # (k, 1, T, d)
        if r_x is None:
            return array_module(v).broadcast_to(V_P, (len(v), cache.n, self.T, self.d)).copy()
        return r_x + V_P

    def r_backward(self, r_delta, v, cache, r_grad, second_order=True, need_input=True):
        """``R{∂L̃/∂P} = Σ_n R{δ}``, ``R{∂L̃/∂x} = R{δ}``."""
        self.split(r_grad)[...] = r_delta.sum(axis=1)
        return r_delta if need_input else None

    def rr_forward(self, ruv_x, t, u, v, cache):
        """``R_uR_v{y} = R_uR_v{x}``."""
        return ruv_x

    def rr_backward(self, ruv_delta, t, u, v, cache, rr_grad, need_input=True):
        """``R_uR_v{∂L̃/∂P} = Σ_n R_uR_v{δ}``, ``R_uR_v{∂L̃/∂x} = R_uR_v{δ}``."""
        self.split(rr_grad)[...] = ruv_delta.sum(axis=1)
        return ruv_delta if need_input else None
