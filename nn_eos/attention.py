"""Causal multi-head self-attention with hand-written R-operator passes (docs/blocks.md, "SelfAttention").

For x (n, T, d), four dense maps Q, K, V, O (d → d, each A (d, d) row-major then b (d,)) and h heads of
e = d/h features (contiguous slices of the d features), per head::

    q = x A_Qᵀ + b_Q,   k = x A_Kᵀ + b_K,   v = x A_Vᵀ + b_V        (n, h, T, e) once split into heads
    S = q kᵀ / √e                                                    (n, h, T, T) scores
    P = softmax(S) over the positions s ≤ t (the causal mask)        (n, h, T, T) each row sums to 1
    a = P v                                                          (n, h, T, e)
    y = a A_Oᵀ + b_O                                                 (n, T, d) once the heads are merged

The softmax of a row enters every pass through three derivatives along directions of S, with ``⟨a⟩ = Σ_s P_s a_s``
the row's mean under P and ``ā = a − ⟨a⟩``::

    J a          = P ⊙ ā                                             (J symmetric: Jᵀ = J)
    T(a, b)      = D²P[a, b] = P ⊙ (ā b̄ − ⟨ā b̄⟩)
    D³P[a, b, c] = P ⊙ (ā b̄ c̄ − ⟨ā b̄ c̄⟩ − ⟨ā b̄⟩ c̄ − ⟨ā c̄⟩ b̄ − ⟨b̄ c̄⟩ ā)

A masked entry has P = 0, so every one of these is 0 there whatever a holds: the mask is applied once, in the
forward pass, with no −∞ that an R-pass could multiply by 0.
"""

import math

import numpy as np

from .backend import array_module
from .layers import Cache, Dense, Layer, Tangents
from .network import init_dense


class SelfAttention(Layer):
    """Multi-head self-attention over a sequence (n, T, d), causal by default (module docstring); θ holds Q, K, V
    and O's parameters in that order, each as a :class:`~nn_eos.layers.Dense` (d, d).

    Its passes run the four dense layers' passes for the projections and write the attention between them as
    the equations of docs/blocks.md ("SelfAttention"), with ``ā``, ``P̄``, ``S̄``, ``q̄``, ``k̄``, ``v̄`` the
    derivatives of L̃ with respect to a, P, S, q, k, v (the backward pass)::

        v̄ = Pᵀ ā      P̄ = ā vᵀ      S̄ = J P̄      q̄ = S̄ k / √e      k̄ = S̄ᵀ q / √e
    """

    def __init__(self, d, heads, causal=True):
        d, heads = int(d), int(heads)
        if d < 1 or heads < 1 or d % heads:
            raise ValueError(f"SelfAttention needs heads dividing the width d, got d={d}, heads={heads}")
        self.d, self.heads, self.causal = d, heads, bool(causal)
        self.e = d // heads
        self.query, self.key, self.value, self.out = (Dense(d, d) for _ in range(4))
        self.projections = (self.query, self.key, self.value, self.out)
        self.num_params = 4 * self.query.num_params

    def __repr__(self):
        return f"SelfAttention({self.d}, heads={self.heads}{'' if self.causal else ', causal=False'})"

    def parts(self, flat):
        """The (…, p) parts of Q, K, V and O in a (…, 4p) array (views), or Nones for ``flat=None``."""
        p = self.query.num_params
        return [None] * 4 if flat is None else [flat[..., j * p:(j + 1) * p] for j in range(4)]

    def bind(self, params):
        for projection, part in zip(self.projections, self.parts(params)):
            projection.bind(part)

    def initial_parameters(self, rng, init, gain):
        """Each projection drawn as a dense layer (d → d), biases 0."""
        return np.concatenate([init_dense(rng, self.d, self.d, init, gain) for _ in range(4)])

    def output_shape(self, input_shape):
        if len(input_shape) != 2 or input_shape[1] != self.d:
            raise ValueError(f"{self!r} expects inputs of shape (n, T, {self.d}), got (n, *{tuple(input_shape)})")
        return tuple(input_shape)

    def values_per_example(self, input_shape):
        """The forward and backward record: x, q, k, v, a, y and their δ's (T·d each); P, P̄, S̄ (T·T per head)."""
        T = input_shape[0]
        return 12 * T * self.d + 3 * self.heads * T * T

    def r_values_per_example(self, input_shape, first):
        """(kept, step) of memory.r_values_per_example: kept from the R-forward pass to the R-backward pass, R{q},
        R{k}, R{v}, R{a}, R{y} (T·d each) and R{S}, R{P} (T·T per head); at the R-backward step besides, R{ā},
        R{v̄}, R{q̄}, R{k̄}, their merged copies and the dense layers' temporaries (about ten T·d), R{P̄}, R{S̄} and
        the softmax's T-term temporaries (about nine T·T per head)."""
        T = input_shape[0]
        Td, scores = T * self.d, self.heads * T * T
        return 5 * Td + 2 * scores, 10 * Td + 9 * scores

    # ----- heads, mask, softmax ---------------------------------------------------------------------------------

    def split_heads(self, a):
        """(…, T, d) as (…, h, T, e): head j holds features j·e … (j+1)·e − 1."""
        return a.reshape(*a.shape[:-1], self.heads, self.e).swapaxes(-2, -3)

    def merge_heads(self, a):
        """(…, h, T, e) back as (…, T, d)."""
        a = a.swapaxes(-2, -3)
        return a.reshape(*a.shape[:-2], self.d)

    def scores(self, q, k):
        """``S = q kᵀ / √e``."""
        return q @ k.swapaxes(-1, -2) / math.sqrt(self.e)

    def softmax(self, S):
        """P: each row's softmax over the positions it sees (s ≤ t when causal), exactly 0 elsewhere."""
        xp = array_module(S)
        T = S.shape[-1]
        seen = xp.tril(xp.ones((T, T), dtype=bool)) if self.causal else xp.ones((T, T), dtype=bool)
        top = xp.where(seen, S, S.min(axis=-1, keepdims=True)).max(axis=-1, keepdims=True)
        e = xp.where(seen, xp.exp(xp.where(seen, S, top) - top), 0)
        return e / e.sum(axis=-1, keepdims=True)

    @staticmethod
    def centred(P, a):
        """``ā = a − ⟨a⟩``, ⟨a⟩ = Σ_s P_s a_s per row."""
        return a - (P * a).sum(axis=-1, keepdims=True)

    def J(self, P, a):
        """``J a = P ⊙ ā``."""
        return P * self.centred(P, a)

    def T(self, P, a, b):
        """``D²P[a, b] = P ⊙ (ā b̄ − ⟨ā b̄⟩)``."""
        return self.J(P, self.centred(P, a) * self.centred(P, b))

    def D3(self, P, a, b, c):
        """``D³P[a, b, c] = P ⊙ (ā b̄ c̄ − ⟨ā b̄ c̄⟩ − ⟨ā b̄⟩ c̄ − ⟨ā c̄⟩ b̄ − ⟨b̄ c̄⟩ ā)``."""
        a, b, c = self.centred(P, a), self.centred(P, b), self.centred(P, c)

        def mean(w):
            return (P * w).sum(axis=-1, keepdims=True)
        return P * (a * b * c - mean(a * b * c) - mean(a * b) * c - mean(a * c) * b - mean(b * c) * a)

    # ----- the four passes ----------------------------------------------------------------------------------------

    def forward(self, x, cache):
        """``y = merge(P v) A_Oᵀ + b_O`` with ``P = softmax(q kᵀ / √e)``."""
        cache.inner = [Cache() for _ in range(4)]
        q, k, v = (self.split_heads(projection.forward(x, inner))
                   for projection, inner in zip(self.projections[:3], cache.inner))
        P = self.softmax(self.scores(q, k))
        a = P @ v
        cache.q, cache.k, cache.v, cache.P, cache.a = q, k, v, P, a
        return self.out.forward(self.merge_heads(a), cache.inner[3])

    def backward(self, delta, cache, grad=None, need_input=True):
        """``ā = δ A_O``; ``v̄ = Pᵀ ā``, ``P̄ = ā vᵀ``, ``S̄ = J P̄``, ``q̄ = S̄ k / √e``, ``k̄ = S̄ᵀ q / √e``;
        ``∂L̃/∂x = q̄ A_Q + k̄ A_K + v̄ A_V``."""
        g_Q, g_K, g_V, g_O = self.parts(grad)
        q, k, v, P = cache.q, cache.k, cache.v, cache.P
        a_bar = self.split_heads(self.out.backward(delta, cache.inner[3], g_O))
        v_bar = P.swapaxes(-1, -2) @ a_bar
        P_bar = a_bar @ v.swapaxes(-1, -2)
        S_bar = self.J(P, P_bar)
        q_bar = S_bar @ k / math.sqrt(self.e)
        k_bar = S_bar.swapaxes(-1, -2) @ q / math.sqrt(self.e)
        cache.a_bar, cache.P_bar, cache.S_bar = a_bar, P_bar, S_bar
        cache.q_bar, cache.k_bar, cache.v_bar = q_bar, k_bar, v_bar
        inputs = [projection.backward(self.merge_heads(bar), inner, part, need_input)
                  for projection, inner, part, bar in zip(self.projections, cache.inner, (g_Q, g_K, g_V),
                                                          (q_bar, k_bar, v_bar))]
        return inputs[0] + inputs[1] + inputs[2] if need_input else None

    def r_forward(self, r_x, v, cache):
        """``R{S} = (R{q} kᵀ + q R{k}ᵀ) / √e``, ``R{P} = J R{S}``, ``R{a} = R{P} v + P R{v}``; the projections'
        R-forward passes before and after."""
        V_Q, V_K, V_V, V_O = self.parts(v)
        r_q, r_k, r_v = (self.split_heads(projection.r_forward(r_x, part, inner))
                         for projection, part, inner in zip(self.projections[:3], (V_Q, V_K, V_V), cache.inner))
        q, k, P = cache.q, cache.k, cache.P
        r_S = (r_q @ k.swapaxes(-1, -2) + q @ r_k.swapaxes(-1, -2)) / math.sqrt(self.e)
        r_P = self.J(P, r_S)
        r_a = r_P @ cache.v + P @ r_v
        cache.r_q, cache.r_k, cache.r_v, cache.r_S, cache.r_P, cache.r_a = r_q, r_k, r_v, r_S, r_P, r_a
        return self.out.r_forward(self.merge_heads(r_a), V_O, cache.inner[3])

    def r_backward(self, r_delta, v, cache, r_grad, second_order=True, need_input=True):
        """R-operator of the backward pass (docs/blocks.md): a Gauss-Newton part, the backward pass applied to
        R{ā}, and a second-order part, the terms that carry ā, P̄ or S̄ (kept when ``second_order``)::

                        Gauss-Newton             second order
            R{v̄}  =  Pᵀ R{ā}               +  R{P}ᵀ ā
            R{P̄}  =  R{ā} vᵀ               +  ā R{v}ᵀ
            R{S̄}  =  J R{P̄}                +  T(R{S}, P̄)
            R{q̄}  =  R{S̄} k / √e           +  S̄ R{k} / √e
            R{k̄}  =  R{S̄}ᵀ q / √e          +  S̄ᵀ R{q} / √e
        """
        V_Q, V_K, V_V, V_O = self.parts(v)
        r_Q, r_K, r_V, r_O = self.parts(r_grad)
        q, k, vv, P, e = cache.q, cache.k, cache.v, cache.P, self.e
        r_a_bar = self.split_heads(self.out.r_backward(r_delta, V_O, cache.inner[3], r_O, second_order))
        r_v_bar = P.swapaxes(-1, -2) @ r_a_bar
        r_P_bar = r_a_bar @ vv.swapaxes(-1, -2)
        if second_order:
            r_v_bar = r_v_bar + cache.r_P.swapaxes(-1, -2) @ cache.a_bar
            r_P_bar = r_P_bar + cache.a_bar @ cache.r_v.swapaxes(-1, -2)
        r_S_bar = self.J(P, r_P_bar)
        if second_order:
            r_S_bar = r_S_bar + self.T(P, cache.r_S, cache.P_bar)
        r_q_bar = r_S_bar @ k / math.sqrt(e)
        r_k_bar = r_S_bar.swapaxes(-1, -2) @ q / math.sqrt(e)
        if second_order:
            r_q_bar = r_q_bar + cache.S_bar @ cache.r_k / math.sqrt(e)
            r_k_bar = r_k_bar + cache.S_bar.swapaxes(-1, -2) @ cache.r_q / math.sqrt(e)
        cache.r_a_bar, cache.r_P_bar, cache.r_S_bar = r_a_bar, r_P_bar, r_S_bar
        cache.r_q_bar, cache.r_k_bar, cache.r_v_bar = r_q_bar, r_k_bar, r_v_bar
        inputs = [projection.r_backward(self.merge_heads(r_bar), part, inner, r_part, second_order, need_input)
                  for projection, part, inner, r_part, r_bar in zip(
                      self.projections, (V_Q, V_K, V_V), cache.inner, (r_Q, r_K, r_V), (r_q_bar, r_k_bar, r_v_bar))]
        return inputs[0] + inputs[1] + inputs[2] if need_input else None

    # ----- the third-order passes -----------------------------------------------------------------------------------

    def rr_forward(self, ruv_x, t, u, v, cache):
        """``R_uR_v{y}`` (docs/blocks.md, "SelfAttention", third order)::

            R_uR_v{S} = (R_uR_v{q} kᵀ + R_u{q} R_v{k}ᵀ + R_v{q} R_u{k}ᵀ + q R_uR_v{k}ᵀ) / √e
            R_uR_v{P} = J R_uR_v{S} + T(R_u{S}, R_v{S})
            R_uR_v{a} = R_uR_v{P} v + R_u{P} R_v{v} + R_v{P} R_u{v} + P R_uR_v{v}
        """
        U_parts, V_parts = self.parts(u), self.parts(v)
        along_u, along_v = (self._along(w, r_x, r_delta, cache)
                            for w, r_x, r_delta in ((u, t.ru_x, t.ru_delta), (v, t.rv_x, t.rv_delta)))
        cache.along_u, cache.along_v = along_u, along_v
        q, k, vv, P, e = cache.q, cache.k, cache.v, cache.P, self.e
        ruv_q, ruv_k, ruv_v = (
            self._heads_or_zero(projection.rr_forward(ruv_x, Tangents(ru_x=t.ru_x, rv_x=t.rv_x), U_part, V_part,
                                                      inner), like)
            for projection, U_part, V_part, inner, like in zip(self.projections[:3], U_parts, V_parts, cache.inner,
                                                               (along_u.q, along_u.k, along_u.v)))
        cache.ruv_q, cache.ruv_k, cache.ruv_v = ruv_q, ruv_k, ruv_v
        ruv_S = (ruv_q @ k.swapaxes(-1, -2) + along_u.q @ along_v.k.swapaxes(-1, -2)
                 + along_v.q @ along_u.k.swapaxes(-1, -2) + q @ ruv_k.swapaxes(-1, -2)) / math.sqrt(e)
        ruv_P = self.J(P, ruv_S) + self.T(P, along_u.S, along_v.S)
        ruv_a = ruv_P @ vv + along_u.P @ along_v.v + along_v.P @ along_u.v + P @ ruv_v
        cache.ruv_S, cache.ruv_P, cache.ruv_a = ruv_S, ruv_P, ruv_a
        return self.out.rr_forward(self.merge_heads(ruv_a), self._out_tangents(t, cache), U_parts[3], V_parts[3],
                                   cache.inner[3])

    def rr_backward(self, ruv_delta, t, u, v, cache, rr_grad, need_input=True):
        """R_uR_v of the backward pass (docs/blocks.md), each line the product rule on the line of the backward
        pass it comes from::

            R_uR_v{v̄} = Pᵀ R_uR_v{ā} + R_u{P}ᵀ R_v{ā} + R_v{P}ᵀ R_u{ā} + R_uR_v{P}ᵀ ā
            R_uR_v{P̄} = R_uR_v{ā} vᵀ + R_u{ā} R_v{v}ᵀ + R_v{ā} R_u{v}ᵀ + ā R_uR_v{v}ᵀ
            R_uR_v{S̄} = J R_uR_v{P̄} + T(R_u{S}, R_v{P̄}) + T(R_v{S}, R_u{P̄}) + T(R_uR_v{S}, P̄)
                        + D³P[R_u{S}, R_v{S}, P̄]
            R_uR_v{q̄} = (R_uR_v{S̄} k + R_u{S̄} R_v{k} + R_v{S̄} R_u{k} + S̄ R_uR_v{k}) / √e
            R_uR_v{k̄} = (R_uR_v{S̄}ᵀ q + R_u{S̄}ᵀ R_v{q} + R_v{S̄}ᵀ R_u{q} + S̄ᵀ R_uR_v{q}) / √e
        """
        U_parts, V_parts, rr_parts = self.parts(u), self.parts(v), self.parts(rr_grad)
        Ru, Rv = cache.along_u, cache.along_v
        q, k, vv, P, e = cache.q, cache.k, cache.v, cache.P, self.e
        a_bar, P_bar, S_bar = cache.a_bar, cache.P_bar, cache.S_bar
        ruv_a_bar = self.split_heads(self.out.rr_backward(ruv_delta, self._out_tangents(t, cache), U_parts[3],
                                                          V_parts[3], cache.inner[3], rr_parts[3]))
        ruv_v_bar = (P.swapaxes(-1, -2) @ ruv_a_bar + Ru.P.swapaxes(-1, -2) @ Rv.a_bar
                     + Rv.P.swapaxes(-1, -2) @ Ru.a_bar + cache.ruv_P.swapaxes(-1, -2) @ a_bar)
        ruv_P_bar = (ruv_a_bar @ vv.swapaxes(-1, -2) + Ru.a_bar @ Rv.v.swapaxes(-1, -2)
                     + Rv.a_bar @ Ru.v.swapaxes(-1, -2) + a_bar @ cache.ruv_v.swapaxes(-1, -2))
        ruv_S_bar = (self.J(P, ruv_P_bar) + self.T(P, Ru.S, Rv.P_bar) + self.T(P, Rv.S, Ru.P_bar)
                     + self.T(P, cache.ruv_S, P_bar) + self.D3(P, Ru.S, Rv.S, P_bar))
        ruv_q_bar = (ruv_S_bar @ k + Ru.S_bar @ Rv.k + Rv.S_bar @ Ru.k + S_bar @ cache.ruv_k) / math.sqrt(e)
        ruv_k_bar = (ruv_S_bar.swapaxes(-1, -2) @ q + Ru.S_bar.swapaxes(-1, -2) @ Rv.q
                     + Rv.S_bar.swapaxes(-1, -2) @ Ru.q + S_bar.swapaxes(-1, -2) @ cache.ruv_q) / math.sqrt(e)
        inputs = []
        for projection, inner, U_part, V_part, rr_part, bar, ruv_bar, name in zip(
                self.projections, cache.inner, U_parts, V_parts, rr_parts,
                (cache.q_bar, cache.k_bar, cache.v_bar), (ruv_q_bar, ruv_k_bar, ruv_v_bar), ("q", "k", "v")):
            tangents = Tangents(x=t.x, delta=self.merge_heads(bar), ru_x=t.ru_x, rv_x=t.rv_x, ruv_x=t.ruv_x,
                                ru_delta=self.merge_heads(getattr(Ru, name + "_bar")),
                                rv_delta=self.merge_heads(getattr(Rv, name + "_bar")))
            inputs.append(projection.rr_backward(self.merge_heads(ruv_bar), tangents, U_part, V_part, inner, rr_part,
                                                 need_input))
        return inputs[0] + inputs[1] + inputs[2] if need_input else None

    def _out_tangents(self, t, cache):
        """The output projection's :class:`Tangents`: its input a (merged), R_u{a}, R_v{a}, R_uR_v{a} and the
        block's δ and its R_u, R_v."""
        return Tangents(x=self.merge_heads(cache.a), delta=t.delta, ru_x=self.merge_heads(cache.along_u.a),
                        rv_x=self.merge_heads(cache.along_v.a), ruv_x=self.merge_heads(cache.ruv_a),
                        ru_delta=t.ru_delta, rv_delta=t.rv_delta)

    def _along(self, w, r_x, r_delta, cache):
        """The R-quantities along one direction w (k, p): this block's R-forward pass from R_w{x} and R-backward
        pass from R_w{δ} run again, and the intermediates they record (q, k, v, S, P, a; ā, P̄, S̄, q̄, k̄, v̄)."""
        self.r_forward(r_x, w, cache)
        self.r_backward(r_delta, w, cache, array_module(w).empty_like(w), need_input=False)
        return Tangents(**{name: getattr(cache, "r_" + name) for name in (
            "q", "k", "v", "S", "P", "a", "a_bar", "P_bar", "S_bar", "q_bar", "k_bar", "v_bar")})

    def _heads_or_zero(self, a, like):
        """A projection's R_uR_v-output split into heads, or zeros shaped ``like`` where it is None (its input
        does not move: R_uR_v{q} = 0)."""
        return array_module(like).zeros_like(like) if a is None else self.split_heads(a)
