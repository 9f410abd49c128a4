"""Convolution and pooling layers (NCHW) with the same four passes as the dense layers.

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
from .layers import Layer, RValues, weight_and_bias


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

    def uncols(self, c):
        """Adjoint of ``cols``: (…, Ho·Wo, C·kh·kw) → (…, C, H, W)."""
        lead = c.shape[:-2]
        w = c.reshape(*lead, self.Ho, self.Wo, self.C, self.win.kh, self.win.kw)
        w = w.transpose(*range(len(lead)), -3, -5, -4, -2, -1)      # (…, C, Ho, Wo, kh, kw)
        return self.win.fold(w, self.H, self.W_in)

    def _to_image(self, y):
        """(…, Ho·Wo, F) → (…, F, Ho, Wo)."""
        lead = y.shape[:-2]
        return y.reshape(*lead, self.Ho, self.Wo, self.F).transpose(*range(len(lead)), -1, -3, -2)

    def _to_rows(self, d):
        """(…, F, Ho, Wo) → (…, Ho·Wo, F), the inverse of ``_to_image``."""
        lead = d.shape[:-3]
        return d.transpose(*range(len(lead)), -2, -1, -3).reshape(*lead, self.Ho * self.Wo, self.F)

    def values_per_example(self, input_shape):
        """Input, output and the patches ``cols(x)`` (positions × C·kh·kw), which the passes hold too."""
        out = self.output_shape(input_shape)
        return super().values_per_example(input_shape) + int(np.prod(out[1:])) * self.K

    def r_values_per_example(self, input_shape, first=False):
        """Keeps R{y} (its output, read by the layer above), and cols(R{x}) for a single direction; a step
        allocates cols(R{x}), R{y} or R{δ} as rows and, unless first, R{δ} W and δ V_W (patch-sized) and the
        folded R{∂L̃/∂x} (the padded input)."""
        C, H, W = input_shape
        out = self.output_shape(input_shape)
        output, patches = int(np.prod(out)), int(np.prod(out[1:])) * self.K
        if first:
            return RValues(kept=output, step=output)
        padded = C * (H + 2 * self.win.ph) * (W + 2 * self.win.pw)
        return RValues(kept=output, step=output + 2 * patches + padded, single=patches)

    def last_patches(self):
        """``cols(x)`` (n, positions, patch) of the last forward pass's input, for measurements (alignment):
        read-only, valid until the next forward pass."""
        return self.x_cols

    def forward(self, x):
        """``y = cols(x) Wᵀ + b``."""
        self.H, self.W_in = x.shape[-2:]
        self.Ho, self.Wo = self.win.out_hw(self.H, self.W_in)
        self.x_cols = self.cols(x)                                    # (n, p, c)
        y = self.x_cols @ self.W.T
        y += self.b
        return self._to_image(y)

    def backward(self, delta, grad=None, need_input=True):
        """``∂L̃/∂W = Σ δᵀ cols(x)``, ``∂L̃/∂b = Σ δ``, returns ``∂L̃/∂x = fold(δ W)``."""
        d = self._to_rows(delta)                                      # (n, p, f)
        self.delta_rows = d
        if grad is not None:
            grad_W, grad_b = self.split(grad)
            grad_W[...] = d.reshape(-1, self.F).T @ self.x_cols.reshape(-1, self.K)
            grad_b[...] = d.sum(axis=(0, 1))
        return self.uncols(d @ self.W) if need_input else None

    def r_forward(self, r_x, v):
        """``R{y} = cols(R{x}) Wᵀ + cols(x) V_Wᵀ + V_b``; ``r_x=None`` stands for ``R{x} = 0``.

        r_backward needs cols(R{x}) again. For a block of directions it forms them again from R{x}: they are
        kh·kw times larger, and keeping them held a quarter to a third of a conv net's peak (bench/curvature.py
        --memory); for one direction they are kept, which saves a single product 4–8 %.
        """
        V_W, V_b = self.split(v)                                      # (k, f, c), (k, f)
        r = self.x_cols @ V_W.transpose(0, 2, 1)[:, None]             # (k, n, p, f)
        self.r_x, self.r_cols = r_x, None
        if r_x is not None:
            r_cols = self.cols(r_x)                                   # (k, n, p, c)
            r += r_cols @ self.W.T
            self.r_cols = r_cols if len(r_cols) == 1 else None
        r += V_b[:, None, None, :]
        return self._to_image(r)

    def r_backward(self, r_delta, v, r_grad, second_order=True, need_input=True):
        """``R{∂L̃/∂W} = Σ R{δ}ᵀ cols(x) + δᵀ cols(R{x})``, ``R{∂L̃/∂b} = Σ R{δ}``,
        ``R{∂L̃/∂x} = fold(R{δ} W + δ V_W)``; the δ terms are second order."""
        xp = array_module(r_delta)
        rd = self._to_rows(r_delta)                                   # (k, n, p, f)
        k = rd.shape[0]
        r_grad_W, r_grad_b = self.split(r_grad)
        r_grad_W[...] = rd.reshape(k, -1, self.F).transpose(0, 2, 1) @ self.x_cols.reshape(-1, self.K)
        if second_order and self.r_x is not None:
            r_cols = self.r_cols if self.r_cols is not None else self.cols(self.r_x)     # (k, n, p, c)
            r_grad_W += self.delta_rows.reshape(-1, self.F).T @ r_cols.reshape(k, -1, self.K)
            del r_cols                                   # formed again for a block: let it go before the next step
        r_grad_b[...] = rd.sum(axis=(1, 2))
        if not need_input:
            return None
        back = rd @ self.W                                            # (k, n, p, c)
        if second_order:
            V_W, _ = self.split(v)
            back += xp.matmul(self.delta_rows[None], V_W[:, None])
        return self.uncols(back)


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

    def r_values_per_example(self, input_shape, first=False):
        """Keeps R{y} (its output, read by the layer above); the backward step spreads R{δ} over each window
        (output × window) and folds it into the padded input."""
        C, H, W = input_shape
        output = int(np.prod(self.output_shape(input_shape)))
        padded = C * (H + 2 * self.win.ph) * (W + 2 * self.win.pw)
        return RValues(kept=output, step=output * self.win.kh * self.win.kw + padded)

    def backward(self, delta, grad=None, need_input=True):
        return self.unpool(delta) if need_input else None

    def r_forward(self, r_x, v):
        return None if r_x is None else self.pool(r_x)

    def r_backward(self, r_delta, v, r_grad, second_order=True, need_input=True):
        return self.unpool(r_delta) if need_input else None


class AvgPool2d(_Pool):
    """Mean over kh×kw windows: ``y = (1/(kh·kw)) Σ_window x``; the adjoint spreads δ evenly."""

    def pool(self, x):
        return self.win.windows(x).mean(axis=(-2, -1))

    def unpool(self, d):
        xp = array_module(d)
        w = xp.broadcast_to(d[..., None, None] / (self.win.kh * self.win.kw), d.shape + (self.win.kh, self.win.kw))
        return self.win.fold(w, *self.hw)

    def forward(self, x):
        self.hw = x.shape[-2:]
        return self.pool(x)


class MaxPool2d(_Pool):
    """Maximum over kh×kw windows; every pass routes through the argmax of each window.

    Away from ties the max is the entry at the argmax, so ``R{y} = R{x}`` at the
    argmax and the backward passes scatter to it. Padding pads with −∞.
    """

    def pool(self, x):
        """The entries of x at each window's argmax (recorded by forward)."""
        w = self.win.windows(x)
        flat = w.reshape(w.shape[:-2] + (-1,))
        xp = array_module(x)
        return xp.take_along_axis(flat, xp.broadcast_to(self.argmax, flat.shape[:-1] + (1,)), axis=-1)[..., 0]

    def unpool(self, d):
        xp = array_module(d)
        size = self.win.kh * self.win.kw
        onehot = (xp.arange(size) == self.argmax).astype(d.dtype)     # (n, C, Ho, Wo, kh·kw)
        w = (d[..., None] * onehot).reshape(d.shape + (self.win.kh, self.win.kw))
        return self.win.fold(w, *self.hw)

    def forward(self, x):
        self.hw = x.shape[-2:]
        xp = array_module(x)
        if self.win.ph or self.win.pw:
            x = xp.pad(x, [(0, 0)] * (x.ndim - 2) + [(self.win.ph,) * 2, (self.win.pw,) * 2],
                       constant_values=-np.inf)
        w = _Windows((self.win.kh, self.win.kw), (self.win.sh, self.win.sw), 0).windows(x)
        flat = w.reshape(w.shape[:-2] + (-1,))
        self.argmax = flat.argmax(axis=-1)[..., None]
        return xp.take_along_axis(flat, self.argmax, axis=-1)[..., 0]
