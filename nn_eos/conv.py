"""Convolution and pooling layers (NCHW) with the same four passes as the dense layers (docs/passes.md, "Conv2d").

A convolution is a dense layer applied to every patch of its input: with
``cols(x)`` the (n, positions, C·kh·kw) matrix of patches ("im2col") and
``W`` the (F, C·kh·kw) filter matrix,

    y = cols(x) Wᵀ + b                        (per position, then reshaped to (n, F, Ho, Wo))
    ∂L̃/∂W = Σ_{n,positions} δᵀ cols(x)        ∂L̃/∂b = Σ δ        ∂L̃/∂x = fold(δ W)
    R{y} = cols(R{x}) Wᵀ + cols(x) V_Wᵀ + V_b
    R{∂L̃/∂W} = Σ R{δ}ᵀ cols(x) + δᵀ cols(R{x})      R{∂L̃/∂x} = fold(R{δ} W + δ V_W)

where ``fold`` is the adjoint of ``cols`` (it adds every patch back where it
came from). Patches are strided views of the padded input; ``fold`` loops
over the kh·kw kernel offsets only, never over examples, channels or positions.
Pooling layers are linear (average) or piecewise linear (max, routed through
each window's argmax), so they have no second-order terms.

Index letters: k direction, n example, p position (Ho·Wo), f filter, c patch entry (C·kh·kw).
"""

import numpy as np

from .backend import array_module
from .layers import Layer, weight_and_bias


def _pair(value, name):
    pair = (value, value) if np.isscalar(value) else tuple(value)
    if len(pair) != 2 or any(int(v) != v or v < 0 for v in pair):
        raise ValueError(f"{name} must be a non-negative integer or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


class _Windows:
    """Sliding kh×kw windows with stride and zero padding over the last two axes, and their adjoint."""

    def __init__(self, kernel, stride, padding):
        self.kh, self.kw = _pair(kernel, "kernel")
        self.sh, self.sw = _pair(stride, "stride")
        self.ph, self.pw = _pair(padding, "padding")
        if min(self.kh, self.kw, self.sh, self.sw) < 1:
            raise ValueError("kernel and stride must be positive")

    def out_hw(self, H, W):
        Ho = (H + 2 * self.ph - self.kh) // self.sh + 1
        Wo = (W + 2 * self.pw - self.kw) // self.sw + 1
        if Ho < 1 or Wo < 1:
            raise ValueError(f"a {self.kh}×{self.kw} window does not fit a {H}×{W} input with padding "
                             f"({self.ph}, {self.pw})")
        return Ho, Wo

    def windows(self, x):
        """View (…, Ho, Wo, kh, kw) of the zero-padded x (…, H, W)."""
        xp = array_module(x)
        if self.ph or self.pw:
            x = xp.pad(x, [(0, 0)] * (x.ndim - 2) + [(self.ph, self.ph), (self.pw, self.pw)])
        x = xp.ascontiguousarray(x)
        Ho, Wo = self.out_hw(x.shape[-2] - 2 * self.ph, x.shape[-1] - 2 * self.pw)
        s = x.strides
        return xp.lib.stride_tricks.as_strided(
            x, shape=x.shape[:-2] + (Ho, Wo, self.kh, self.kw),
            strides=s[:-2] + (s[-2] * self.sh, s[-1] * self.sw, s[-2], s[-1]))

    def fold(self, w, H, W):
        """Adjoint of ``windows``: add each window entry (…, Ho, Wo, kh, kw) back into an (…, H, W) array."""
        xp = array_module(w)
        Ho, Wo = w.shape[-4], w.shape[-3]
        out = xp.zeros(w.shape[:-4] + (H + 2 * self.ph, W + 2 * self.pw), dtype=w.dtype)
        for i in range(self.kh):
            for j in range(self.kw):
                out[..., i:i + self.sh * Ho:self.sh, j:j + self.sw * Wo:self.sw] += w[..., i, j]
        return out[..., self.ph:self.ph + H, self.pw:self.pw + W]


class Conv2d(Layer):
    """2-D convolution, NCHW: filters W (F, C, kh, kw) then bias b (F,) in θ (2022 paper's conv nets)."""

    def __init__(self, in_channels, out_channels, kernel, stride=1, padding=0):
        self.C, self.F = int(in_channels), int(out_channels)
        if self.C < 1 or self.F < 1:
            raise ValueError(f"Conv2d needs positive channel counts, got {in_channels}, {out_channels}")
        self.win = _Windows(kernel, stride, padding)
        self.K = self.C * self.win.kh * self.win.kw
        self.num_params = self.F * self.K + self.F

    def __repr__(self):
        w = self.win
        return (f"Conv2d({self.C}, {self.F}, kernel=({w.kh}, {w.kw}), stride=({w.sh}, {w.sw}), "
                f"padding=({w.ph}, {w.pw}))")

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[0] != self.C:
            raise ValueError(f"{self!r} expects inputs of shape (n, {self.C}, H, W), got (n, *{tuple(input_shape)})")
        return (self.F, *self.win.out_hw(*input_shape[1:]))

    def split(self, flat):
        """Views (…, F, C·kh·kw) of the filters and (…, F) of the biases in a (…, p) array."""
        return weight_and_bias(flat, self.F, self.K)

    def bind(self, params):
        self.W, self.b = self.split(params)

    def cols(self, x):
        """im2col: (…, C, H, W) → (…, Ho·Wo, C·kh·kw), patch entries ordered (c, i, j) like W."""
        w = self.win.windows(x)                                       # (…, C, Ho, Wo, kh, kw)
        lead = w.shape[:-5]
        w = w.transpose(*range(len(lead)), -4, -3, -5, -2, -1)      # (…, Ho, Wo, C, kh, kw)
        return w.reshape(*lead, w.shape[-5] * w.shape[-4], self.K)

    def fold(self, c, hw):
        """Adjoint of ``cols``: (…, Ho·Wo, C·kh·kw) → (…, C, H, W), for inputs of height and width ``hw``."""
        lead = c.shape[:-2]
        Ho, Wo = self.win.out_hw(*hw)
        w = c.reshape(*lead, Ho, Wo, self.C, self.win.kh, self.win.kw)
        w = w.transpose(*range(len(lead)), -3, -5, -4, -2, -1)      # (…, C, Ho, Wo, kh, kw)
        return self.win.fold(w, *hw)

    @staticmethod
    def to_image(y, hw_out):
        """(…, Ho·Wo, F) → (…, F, Ho, Wo)."""
        lead = y.shape[:-2]
        return y.reshape(*lead, *hw_out, y.shape[-1]).transpose(*range(len(lead)), -1, -3, -2)

    @staticmethod
    def to_rows(d):
        """(…, F, Ho, Wo) → (…, Ho·Wo, F), the inverse of ``to_image``."""
        lead = d.shape[:-3]
        return d.transpose(*range(len(lead)), -2, -1, -3).reshape(*lead, d.shape[-2] * d.shape[-1], d.shape[-3])

    def forward(self, x, cache):
        """``y = cols(x) Wᵀ + b``; keeps the patches cols(x)."""
        cache.hw = x.shape[-2:]
        cache.x_cols = self.cols(x)                                   # (n, p, c)
        return self.to_image(cache.x_cols @ self.W.T + self.b, self.win.out_hw(*cache.hw))

    def backward(self, delta, cache, grad=None, need_input=True):
        """``∂L̃/∂W = Σ δᵀ cols(x)``, ``∂L̃/∂b = Σ δ``, returns ``∂L̃/∂x = fold(δ W)``."""
        cache.delta_rows = d = self.to_rows(delta)                    # (n, p, f)
        if grad is not None:
            grad_W, grad_b = self.split(grad)
            grad_W[...] = d.reshape(-1, self.F).T @ cache.x_cols.reshape(-1, self.K)
            grad_b[...] = d.sum(axis=(0, 1))
        return self.fold(d @ self.W, cache.hw) if need_input else None

    def r_forward(self, r_x, v, cache):
        """``R{y} = cols(R{x}) Wᵀ + cols(x) V_Wᵀ + V_b``; ``r_x=None`` stands for ``R{x} = 0``."""
        cache.r_x = r_x
        V_W, V_b = self.split(v)                                      # (k, f, c), (k, f)
        r_y = cache.x_cols @ V_W.transpose(0, 2, 1)[:, None] + V_b[:, None, None, :]    # (k, n, p, f)
        if r_x is not None:
            r_y = self.cols(r_x) @ self.W.T + r_y
        return self.to_image(r_y, self.win.out_hw(*cache.hw))

    def r_backward(self, r_delta, v, cache, r_grad, second_order=True, need_input=True):
        """R-operator of the backward pass (docs/passes.md, "Conv2d"), in rows (n·p, f) of the output map: a
        Gauss-Newton part, the backward pass applied to R{δ}, and a second-order part, the terms that carry δ
        (kept when ``second_order``)::

                          Gauss-Newton              second order
            R{∂L̃/∂W}  =  Σ R{δ}ᵀ cols(x)        +  Σ δᵀ cols(R{x})       (k, f, K)
            R{∂L̃/∂b}  =  Σ R{δ}                                          (k, f)
            R{∂L̃/∂x}  =  fold(R{δ} W            +  δ V_W)                (k, n, C, H, W)

        cols(R{x}) is formed again here rather than kept from r_forward: it is kh·kw times larger than R{x},
        and keeping it for a block of directions held a quarter to a third of a conv net's peak memory.
        """
        rd = self.to_rows(r_delta)                                    # R{δ} in rows: (k, n, p, f)
        k = rd.shape[0]
        r_grad_W, r_grad_b = self.split(r_grad)
        r_grad_W[...] = rd.reshape(k, -1, self.F).transpose(0, 2, 1) @ cache.x_cols.reshape(-1, self.K)
        r_grad_b[...] = rd.sum(axis=(1, 2))                           # Σ R{δ}: over examples and positions
        r_dx_rows = rd @ self.W if need_input else None               # R{δ} W: (k, n, p, f) @ (f, K)
        if second_order:
            if cache.r_x is not None:                                 # R{x} = 0 below the first layer with parameters
                r_grad_W += cache.delta_rows.reshape(-1, self.F).T @ self.cols(cache.r_x).reshape(k, -1, self.K)
            if need_input:
                V_W, _ = self.split(v)
                r_dx_rows += cache.delta_rows @ V_W[:, None]          # δ V_W: (n, p, f) @ (k, 1, f, K)
        return self.fold(r_dx_rows, cache.hw) if need_input else None

    def rr_forward(self, ruv_x, t, u, v, cache):
        """``R_uR_v{y} = cols(R_uR_v{x}) Wᵀ + cols(R_u{x}) V_Wᵀ + cols(R_v{x}) U_Wᵀ`` (docs/third.md)."""
        if t.ru_x is None:                      # the first layer with parameters: x does not move with θ
            return None
        (U_W, _), (V_W, _) = self.split(u), self.split(v)
        ruv_y = (self.cols(t.ru_x) @ V_W.transpose(0, 2, 1)[:, None]
                 + self.cols(t.rv_x) @ U_W.transpose(0, 2, 1)[:, None])                        # (k, n, p, f)
        if ruv_x is not None:
            ruv_y = self.cols(ruv_x) @ self.W.T + ruv_y
        return self.to_image(ruv_y, self.win.out_hw(*cache.hw))

    def rr_backward(self, ruv_delta, t, u, v, cache, rr_grad, need_input=True):
        """R_uR_v of the backward pass (docs/third.md)::

            R_uR_v{∂L̃/∂W} = Σ R_uR_v{δ}ᵀ cols(x) + R_v{δ}ᵀ cols(R_u{x}) + R_u{δ}ᵀ cols(R_v{x}) + δᵀ cols(R_uR_v{x})
            R_uR_v{∂L̃/∂b} = Σ R_uR_v{δ}
            R_uR_v{∂L̃/∂x} = fold(R_uR_v{δ} W + R_v{δ} U_W + R_u{δ} V_W)
        """
        rd, ru_d, rv_d = self.to_rows(ruv_delta), self.to_rows(t.ru_delta), self.to_rows(t.rv_delta)  # (k, n, p, f)
        k = rd.shape[0]

        def transposed(d):                      # (k, n, p, f) → (k, f, n·p), for Σ_{n, positions} dᵀ …
            return d.reshape(k, -1, self.F).transpose(0, 2, 1)

        def patches(r_x):                       # cols of a (k, n, C, H, W) R-quantity → (k, n·p, c)
            return self.cols(r_x).reshape(k, -1, self.K)

        rr_grad_W, rr_grad_b = self.split(rr_grad)
        rr_grad_W[...] = transposed(rd) @ cache.x_cols.reshape(-1, self.K)
        if t.ru_x is not None:
            rr_grad_W += transposed(rv_d) @ patches(t.ru_x) + transposed(ru_d) @ patches(t.rv_x)
        if t.ruv_x is not None:
            rr_grad_W += cache.delta_rows.reshape(-1, self.F).T @ patches(t.ruv_x)
        rr_grad_b[...] = rd.sum(axis=(1, 2))
        if not need_input:
            return None
        (U_W, _), (V_W, _) = self.split(u), self.split(v)
        return self.fold(rd @ self.W + rv_d @ U_W[:, None] + ru_d @ V_W[:, None], cache.hw)


class _Pool(Layer):
    """A pooling layer: a fixed map ``pool`` of each window and its adjoint ``unpool``.

    Pooling has no parameters and is linear (average) or linear between the
    ties (max), so its backward pass is the adjoint and its R-passes apply the
    same maps to R-quantities, with no second-order term.
    """

    def __init__(self, kernel, stride=None, padding=0):
        self.win = _Windows(kernel, kernel if stride is None else stride, padding)

    def __repr__(self):
        w = self.win
        return f"{type(self).__name__}(kernel=({w.kh}, {w.kw}), stride=({w.sh}, {w.sw}), padding=({w.ph}, {w.pw}))"

    def output_shape(self, input_shape):
        return (input_shape[0], *self.win.out_hw(*input_shape[1:]))

    def backward(self, delta, cache, grad=None, need_input=True):
        return self.unpool(delta, cache) if need_input else None

    def r_forward(self, r_x, v, cache):
        return None if r_x is None else self.pool(r_x, cache)

    def r_backward(self, r_delta, v, cache, r_grad, second_order=True, need_input=True):
        return self.unpool(r_delta, cache) if need_input else None

    def rr_forward(self, ruv_x, t, u, v, cache):
        return self.r_forward(ruv_x, v, cache)

    def rr_backward(self, ruv_delta, t, u, v, cache, rr_grad, need_input=True):
        return self.r_backward(ruv_delta, v, cache, rr_grad, need_input=need_input)


class AvgPool2d(_Pool):
    """Mean over kh×kw windows: ``y = (1/(kh·kw)) Σ_window x``; the adjoint spreads δ evenly."""

    def forward(self, x, cache):
        cache.hw = x.shape[-2:]
        return self.pool(x, cache)

    def pool(self, x, cache):
        return self.win.windows(x).mean(axis=(-2, -1))

    def unpool(self, d, cache):
        xp = array_module(d)
        w = xp.broadcast_to(d[..., None, None] / (self.win.kh * self.win.kw), d.shape + (self.win.kh, self.win.kw))
        return self.win.fold(w, *cache.hw)


class MaxPool2d(_Pool):
    """Maximum over kh×kw windows; every pass routes through the argmax of each window.

    Away from ties the max is the entry at the argmax, so ``R{y} = R{x}`` at the
    argmax and the backward passes scatter to it. Padding pads with −∞.
    """

    def forward(self, x, cache):
        """``y`` = each window's maximum; keeps where it was (the argmax)."""
        cache.hw = x.shape[-2:]
        xp = array_module(x)
        if self.win.ph or self.win.pw:
            x = xp.pad(x, [(0, 0)] * (x.ndim - 2) + [(self.win.ph,) * 2, (self.win.pw,) * 2],
                       constant_values=-np.inf)
        w = _Windows((self.win.kh, self.win.kw), (self.win.sh, self.win.sw), 0).windows(x)
        flat = w.reshape(w.shape[:-2] + (-1,))
        cache.argmax = flat.argmax(axis=-1)[..., None]
        return xp.take_along_axis(flat, cache.argmax, axis=-1)[..., 0]

    def pool(self, x, cache):
        """The entries of x at each window's argmax (recorded by forward)."""
        w = self.win.windows(x)
        flat = w.reshape(w.shape[:-2] + (-1,))
        xp = array_module(x)
        return xp.take_along_axis(flat, xp.broadcast_to(cache.argmax, flat.shape[:-1] + (1,)), axis=-1)[..., 0]

    def unpool(self, d, cache):
        xp = array_module(d)
        size = self.win.kh * self.win.kw
        onehot = (xp.arange(size) == cache.argmax).astype(d.dtype)    # (n, C, Ho, Wo, kh·kw)
        w = (d[..., None] * onehot).reshape(d.shape + (self.win.kh, self.win.kw))
        return self.win.fold(w, *cache.hw)
