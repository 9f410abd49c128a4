"""Layers made of layers, and the layers of a transformer block: Chain, Residual, Normalize, Affine, LayerNorm
(docs/blocks.md).

    Chain(f_1, …, f_m)       y = f_m(… f_1(x))          its passes are its layers' passes, in order
    Residual(f_1, …, f_m)    y = x + f_m(… f_1(x))      the identity adds δ, R{δ}, R{x} … to the chain's
    Normalize(eps)           y = (x − μ) / sqrt(σ² + eps) over the last axis (μ, σ² its mean and biased variance)
    Affine(d)                y = x ⊙ γ + β over the last axis; parameters γ (d,) then β (d,)
    LayerNorm(d, eps)        Chain(Normalize(eps), Affine(d)): PyTorch's LayerNorm, γ then β in θ

A normalisation's Jacobian is symmetric, so its backward pass is its forward
derivative, and every pass of :class:`Normalize` is written with three
derivatives of ``y(x)`` along directions (docs/blocks.md, "Normalize"): ``J a``,
``T(a, b) = D²y[a, b]`` and ``D³y[a, b, c]``.
"""

import numpy as np

from .backend import array_module
from .layers import Cache, Layer, Tangents


class Chain(Layer):
    """Layers applied in order inside one layer, ``y = f_m(… f_1(x))``, their parameters one after the other.

    Each pass runs the layers' passes in order (backward ones in reverse), each layer with its own cache,
    kept in this layer's cache (``cache.inner``). The third-order passes find what each layer's
    :class:`~nn_eos.layers.Tangents` needs by running the layers' R-passes along u and along v again from the
    chain's own tangents (docs/blocks.md, "Chain").
    """

    def __init__(self, *layers):
        self.layers = list(layers)
        if not self.layers or not all(isinstance(layer, Layer) for layer in self.layers):
            raise TypeError(f"{type(self).__name__} takes one or more Layer instances, got {layers!r}")
        for layer in self.layers:
            layer.check_contract()
        self.offsets = np.cumsum([0] + [layer.num_params for layer in self.layers])
        self.num_params = int(self.offsets[-1])

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(map(repr, self.layers))})"

    def parts(self, flat):
        """Each inner layer's part of a (…, p) array (views), or Nones for ``flat=None``."""
        if flat is None:
            return [None] * len(self.layers)
        return [flat[..., a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:])]

    def bind(self, params):
        for layer, part in zip(self.layers, self.parts(params)):
            layer.bind(part)

    def initial_parameters(self, rng, init, gain):
        """Each inner layer's initial parameters (network.init_layer), one after the other."""
        from .network import init_layer

        parts = [init_layer(rng, layer, init, gain) for layer in self.layers if layer.num_params]
        return np.concatenate(parts) if parts else np.zeros(0)

    def output_shape(self, input_shape):
        for layer in self.layers:
            input_shape = layer.output_shape(input_shape)
        return input_shape

    def check_third_order(self):
        for layer in self.layers:
            layer.check_third_order()

    def values_per_example(self, input_shape):
        """memory.values_per_example: the inner layers' records, one after the other."""
        from .memory import values_per_example

        total = 0
        for layer in self.layers:
            total += values_per_example(layer, input_shape)
            input_shape = layer.output_shape(input_shape)
        return total

    def r_values_per_example(self, input_shape, first):
        """(kept, step) of memory.r_values_per_example: every inner layer's R-output stays in the inner caches from
        the chain's R-forward pass to its R-backward pass, so all are kept; the step is the largest inner step above
        the R-outputs kept below it."""
        from .memory import r_values_per_example

        kept_below, peak = 0, 0
        for layer in self.layers:
            kept, step = r_values_per_example(layer, input_shape, first=first and kept_below == 0)
            peak = max(peak, kept_below + step)
            kept_below += kept
            input_shape = layer.output_shape(input_shape)
        return kept_below, peak

    def forward(self, x, cache):
        cache.inner = [Cache() for _ in self.layers]
        for layer, inner in zip(self.layers, cache.inner):
            inner.chain_x = x                       # each layer's input and (backward) δ, for its tangents
            x = layer.forward(x, inner)
        return x

    def backward(self, delta, cache, grad=None, need_input=True):
        for layer, inner, part in reversed(list(zip(self.layers, cache.inner, self.parts(grad)))):
            inner.chain_delta = delta
            delta = layer.backward(delta, inner, part if layer.num_params else None)
        return delta if need_input else None

    def r_forward(self, r_x, v, cache):
        for layer, inner, part in zip(self.layers, cache.inner, self.parts(v)):
            r_x = layer.r_forward(r_x, part, inner)
        return r_x

    def r_backward(self, r_delta, v, cache, r_grad, second_order=True, need_input=True):
        for layer, inner, part, r_part in reversed(list(zip(self.layers, cache.inner, self.parts(v),
                                                            self.parts(r_grad)))):
            r_delta = layer.r_backward(r_delta, part, inner, r_part, second_order)
        return r_delta if need_input else None

    def rr_forward(self, ruv_x, t, u, v, cache):
        """``R_uR_v{y}`` through the layers in order, each with the tangents of its own input and output."""
        cache.tangents = self._inner_tangents(t, u, v, cache)
        for layer, inner, inner_t, u_part, v_part in zip(self.layers, cache.inner, cache.tangents, self.parts(u),
                                                          self.parts(v)):
            inner_t.ruv_x = ruv_x
            ruv_x = layer.rr_forward(ruv_x, inner_t, u_part, v_part, inner)
        return ruv_x

    def rr_backward(self, ruv_delta, t, u, v, cache, rr_grad, need_input=True):
        for layer, inner, inner_t, u_part, v_part, rr_part in reversed(list(zip(
                self.layers, cache.inner, cache.tangents, self.parts(u), self.parts(v), self.parts(rr_grad)))):
            ruv_delta = layer.rr_backward(ruv_delta, inner_t, u_part, v_part, inner, rr_part)
        return ruv_delta if need_input else None

    def _inner_tangents(self, t, u, v, cache):
        """Each inner layer's :class:`Tangents` (x, δ, R_u{x}, R_v{x}, R_u{δ}, R_v{δ}), from the inner caches and
        the R-passes along u and along v run again from the chain's own R_u{x}, R_v{x}, R_u{δ}, R_v{δ}."""
        records = [Tangents() for _ in self.layers]
        for record, inner in zip(records, cache.inner):
            record.x, record.delta = inner.chain_x, inner.chain_delta
        for w, r_x, r_delta, x_name, delta_name in ((u, t.ru_x, t.ru_delta, "ru_x", "ru_delta"),
                                                    (v, t.rv_x, t.rv_delta, "rv_x", "rv_delta")):
            for record, layer, inner, part in zip(records, self.layers, cache.inner, self.parts(w)):
                setattr(record, x_name, r_x)
                r_x = layer.r_forward(r_x, part, inner)
            for record, layer, inner, part in reversed(list(zip(records, self.layers, cache.inner, self.parts(w)))):
                setattr(record, delta_name, r_delta)
                r_delta = layer.r_backward(r_delta, part, inner, array_module(part).empty_like(part), True)
        return records


class Residual(Chain):
    """``y = x + f(x)``, f the chain of the given layers (He et al. 2016): every pass is the chain's pass plus the
    identity's (docs/blocks.md, "Residual")::

        y = x + f(x)                 ∂L̃/∂x = δ + f's backward(δ)
        R{y} = R{x} + R{f(x)}        R{∂L̃/∂x} = R{δ} + f's R-backward(R{δ})

    and the same for R_uR_v. f's output has the input's shape.
    """

    def output_shape(self, input_shape):
        shape = super().output_shape(input_shape)
        if tuple(shape) != tuple(input_shape):
            raise ValueError(f"{self!r}: the inner layers map (n, *{tuple(input_shape)}) to (n, *{tuple(shape)}); a "
                             f"residual block's output must have its input's shape")
        return shape

    def forward(self, x, cache):
        return x + super().forward(x, cache)

    def backward(self, delta, cache, grad=None, need_input=True):
        inner = super().backward(delta, cache, grad, need_input)
        return delta + inner if need_input else None

    def r_forward(self, r_x, v, cache):
        return plus(r_x, super().r_forward(r_x, v, cache))

    def r_backward(self, r_delta, v, cache, r_grad, second_order=True, need_input=True):
        inner = super().r_backward(r_delta, v, cache, r_grad, second_order, need_input)
        return r_delta + inner if need_input else None

    def rr_forward(self, ruv_x, t, u, v, cache):
        return plus(ruv_x, super().rr_forward(ruv_x, t, u, v, cache))

    def rr_backward(self, ruv_delta, t, u, v, cache, rr_grad, need_input=True):
        inner = super().rr_backward(ruv_delta, t, u, v, cache, rr_grad, need_input)
        return ruv_delta + inner if need_input else None


def plus(a, b):
    """a + b where None stands for zero (an R-quantity below the first layer with parameters)."""
    if a is None:
        return b
    return a if b is None else a + b


def mean(a):
    """The mean over the last axis (the features), kept as an axis of length 1 to broadcast back."""
    return a.mean(axis=-1, keepdims=True)


class Normalize(Layer):
    """``y = (x − μ) s`` over the last axis, ``s = 1 / sqrt(σ² + eps)``, μ and σ² the mean and biased variance of
    each row (docs/blocks.md, "Normalize"). With ``mean`` over the last axis, its derivatives along directions
    a, b, c of x are::

        J a         = s (a − mean(a) − y mean(y a))                                       (J symmetric)
        T(a, b)     = D²y[a, b] = −s (mean(y b) J a + mean(y a) J b + y mean(a J b))
        D³y[a, b, c] = −s mean(y c) T(a, b) − s (mean(b J c) J a + mean(a J c) J b + mean(a J b) J c
                       + mean(y b) T(a, c) + mean(y a) T(b, c) + y mean(a T(b, c)))

    and its passes, J being symmetric, read as those: backward ``J δ``; R-forward ``J R{x}``; R-backward
    ``J R{δ} + T(δ, R{x})``; R_uR_v-forward ``J R_uR_v{x} + T(R_u{x}, R_v{x})``; R_uR_v-backward
    ``J R_uR_v{δ} + T(R_v{δ}, R_u{x}) + T(R_u{δ}, R_v{x}) + T(δ, R_uR_v{x}) + D³y[δ, R_u{x}, R_v{x}]``.
    """

    def __init__(self, eps=1e-5):
        if not float(eps) > 0:
            raise ValueError(f"Normalize needs eps > 0, got {eps}")
        self.eps = float(eps)

    def __repr__(self):
        return f"Normalize(eps={self.eps:g})"

    def r_values_per_example(self, input_shape, first):
        """(kept, step) of memory.r_values_per_example: R{y}; the R-backward's J R{δ}, T(δ, R{x}) with its two J
        terms and the sum."""
        o = int(np.prod(input_shape))
        return o, 6 * o

    def forward(self, x, cache):
        centred = x - mean(x)
        cache.s = 1 / array_module(x).sqrt(mean(centred * centred) + self.eps)      # (n, …, 1)
        cache.y = centred * cache.s
        return cache.y

    def J(self, a, cache):
        """``J a = s (a − mean(a) − y mean(y a))``."""
        y, s = cache.y, cache.s
        return s * (a - mean(a) - y * mean(y * a))

    def T(self, a, b, cache):
        """``D²y[a, b] = −s (mean(y b) J a + mean(y a) J b + y mean(a J b))``."""
        y, s = cache.y, cache.s
        Ja, Jb = self.J(a, cache), self.J(b, cache)
        return -s * (mean(y * b) * Ja + mean(y * a) * Jb + y * mean(a * Jb))

    def D3(self, a, b, c, cache):
        """``D³y[a, b, c]`` (class docstring)."""
        y, s = cache.y, cache.s
        Ja, Jb, Jc = self.J(a, cache), self.J(b, cache), self.J(c, cache)
        Tbc = self.T(b, c, cache)
        return (-s * mean(y * c) * self.T(a, b, cache)
                - s * (mean(b * Jc) * Ja + mean(a * Jc) * Jb + mean(a * Jb) * Jc
                       + mean(y * b) * self.T(a, c, cache) + mean(y * a) * Tbc + y * mean(a * Tbc)))

    def backward(self, delta, cache, grad=None, need_input=True):
        """``∂L̃/∂x = J δ``."""
        cache.delta = delta
        return self.J(delta, cache) if need_input else None

    def r_forward(self, r_x, v, cache):
        """``R{y} = J R{x}``."""
        cache.r_x = r_x
        return None if r_x is None else self.J(r_x, cache)

    def r_backward(self, r_delta, v, cache, r_grad, second_order=True, need_input=True):
        """``R{∂L̃/∂x} = J R{δ} + T(δ, R{x})``; the T term is second order."""
        if not need_input:
            return None
        if second_order and cache.r_x is not None:
            return self.J(r_delta, cache) + self.T(cache.delta, cache.r_x, cache)
        return self.J(r_delta, cache)

    def rr_forward(self, ruv_x, t, u, v, cache):
        """``R_uR_v{y} = J R_uR_v{x} + T(R_u{x}, R_v{x})``; None where both are zero."""
        moved = None if t.ru_x is None else self.T(t.ru_x, t.rv_x, cache)
        return plus(None if ruv_x is None else self.J(ruv_x, cache), moved)

    def rr_backward(self, ruv_delta, t, u, v, cache, rr_grad, need_input=True):
        """``R_uR_v{∂L̃/∂x} = J R_uR_v{δ} + T(R_v{δ}, R_u{x}) + T(R_u{δ}, R_v{x}) + T(δ, R_uR_v{x})
        + D³y[δ, R_u{x}, R_v{x}]``."""
        if not need_input:
            return None
        out = self.J(ruv_delta, cache)
        if t.ru_x is not None:
            out = (out + self.T(t.rv_delta, t.ru_x, cache) + self.T(t.ru_delta, t.rv_x, cache)
                   + self.D3(t.delta, t.ru_x, t.rv_x, cache))
        if t.ruv_x is not None:
            out = out + self.T(t.delta, t.ruv_x, cache)
        return out


class Affine(Layer):
    """``y = x ⊙ γ + β`` over the last axis of x (n, …, d): a scale and shift per feature, γ (d,) then β (d,) in θ
    (docs/blocks.md, "Affine"). Sums over examples run over every axis but the features (and the directions)::

        ∂L̃/∂γ = Σ δ ⊙ x      ∂L̃/∂β = Σ δ      ∂L̃/∂x = δ ⊙ γ
        R{y} = R{x} ⊙ γ + x ⊙ V_γ + V_β
        R{∂L̃/∂γ} = Σ R{δ} ⊙ x + Σ δ ⊙ R{x}       R{∂L̃/∂x} = R{δ} ⊙ γ + δ ⊙ V_γ     (second-order terms last)
    """

    def __init__(self, d):
        if int(d) < 1:
            raise ValueError(f"Affine needs a positive width, got {d}")
        self.d = int(d)
        self.num_params = 2 * self.d

    def __repr__(self):
        return f"Affine({self.d})"

    def output_shape(self, input_shape):
        if not input_shape or tuple(input_shape)[-1] != self.d:
            raise ValueError(f"{self!r} expects inputs of shape (n, …, {self.d}), got (n, *{tuple(input_shape)})")
        return tuple(input_shape)

    def initial_parameters(self, rng, init, gain):
        """γ = 1, β = 0: the identity, as PyTorch's LayerNorm starts."""
        return np.concatenate([np.ones(self.d), np.zeros(self.d)])

    def split(self, flat):
        """Views (…, d) of the γ and β parts of a (…, 2d) array."""
        return flat[..., :self.d], flat[..., self.d:]

    def bind(self, params):
        self.gamma, self.beta = self.split(params)

    def per_direction(self, w, like):
        """A direction's parts (k, d) shaped (k, 1, …, 1, d) to broadcast against an R-quantity like (k, n, …, d)."""
        shape = (w.shape[0],) + (1,) * (like.ndim - 2) + (self.d,)
        W_gamma, W_beta = self.split(w)
        return W_gamma.reshape(shape), W_beta.reshape(shape)

    @staticmethod
    def total(a, directions=False):
        """Σ over examples and positions: every axis but the last (and the leading directions' axis)."""
        return a.sum(axis=tuple(range(1 if directions else 0, a.ndim - 1)))

    def r_values_per_example(self, input_shape, first):
        """(kept, step) of memory.r_values_per_example: R{y}; x ⊙ V_γ + V_β, R{x} ⊙ γ and the sum."""
        o = int(np.prod(input_shape))
        return o, 3 * o

    def forward(self, x, cache):
        cache.x = x
        return x * self.gamma + self.beta

    def backward(self, delta, cache, grad=None, need_input=True):
        cache.delta = delta
        if grad is not None:
            grad_gamma, grad_beta = self.split(grad)
            grad_gamma[...] = self.total(delta * cache.x)
            grad_beta[...] = self.total(delta)
        return delta * self.gamma if need_input else None

    def r_forward(self, r_x, v, cache):
        cache.r_x = r_x
        V_gamma, V_beta = self.per_direction(v, cache.x[None])
        r_y = cache.x * V_gamma + V_beta
        return r_y if r_x is None else r_x * self.gamma + r_y

    def r_backward(self, r_delta, v, cache, r_grad, second_order=True, need_input=True):
        r_grad_gamma, r_grad_beta = self.split(r_grad)
        r_grad_gamma[...] = self.total(r_delta * cache.x, directions=True)             # Σ R{δ} ⊙ x
        r_grad_beta[...] = self.total(r_delta, directions=True)                        # Σ R{δ}
        r_dx = r_delta * self.gamma if need_input else None                             # R{δ} ⊙ γ
        if second_order:
            if cache.r_x is not None:
                r_grad_gamma += self.total(cache.delta * cache.r_x, directions=True)    # Σ δ ⊙ R{x}
            if need_input:
                V_gamma, _ = self.per_direction(v, r_delta)
                r_dx += cache.delta * V_gamma                                          # δ ⊙ V_γ
        return r_dx

    def rr_forward(self, ruv_x, t, u, v, cache):
        """``R_uR_v{y} = R_uR_v{x} ⊙ γ + R_u{x} ⊙ V_γ + R_v{x} ⊙ U_γ``; None where it is zero."""
        if t.ru_x is None:
            return None
        (U_gamma, _), (V_gamma, _) = self.per_direction(u, t.ru_x), self.per_direction(v, t.ru_x)
        return plus(None if ruv_x is None else ruv_x * self.gamma, t.ru_x * V_gamma + t.rv_x * U_gamma)

    def rr_backward(self, ruv_delta, t, u, v, cache, rr_grad, need_input=True):
        """R_uR_v of the backward pass::

            R_uR_v{∂L̃/∂γ} = Σ (R_uR_v{δ} ⊙ x + R_v{δ} ⊙ R_u{x} + R_u{δ} ⊙ R_v{x} + δ ⊙ R_uR_v{x})
            R_uR_v{∂L̃/∂β} = Σ R_uR_v{δ}
            R_uR_v{∂L̃/∂x} = R_uR_v{δ} ⊙ γ + R_v{δ} ⊙ U_γ + R_u{δ} ⊙ V_γ
        """
        rr_grad_gamma, rr_grad_beta = self.split(rr_grad)
        moved = ruv_delta * t.x
        if t.ru_x is not None:
            moved = moved + t.rv_delta * t.ru_x + t.ru_delta * t.rv_x
        if t.ruv_x is not None:
            moved = moved + t.delta * t.ruv_x
        rr_grad_gamma[...] = self.total(moved, directions=True)
        rr_grad_beta[...] = self.total(ruv_delta, directions=True)
        if not need_input:
            return None
        (U_gamma, _), (V_gamma, _) = self.per_direction(u, ruv_delta), self.per_direction(v, ruv_delta)
        return ruv_delta * self.gamma + t.rv_delta * U_gamma + t.ru_delta * V_gamma


class LayerNorm(Chain):
    """PyTorch's ``LayerNorm(d, eps)`` over the last axis: ``y = γ ⊙ (x − μ) / sqrt(σ² + eps) + β`` with the biased
    variance σ², parameters γ (d,) then β (d,), starting at γ = 1, β = 0 — :class:`Normalize` then
    :class:`Affine` (docs/blocks.md, "LayerNorm")."""

    def __init__(self, d, eps=1e-5):
        super().__init__(Normalize(eps), Affine(d))
        self.d, self.eps = int(d), float(eps)

    def __repr__(self):
        return f"LayerNorm({self.d}, eps={self.eps:g})"
