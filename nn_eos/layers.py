"""Layers with four hand-written passes: forward, backward, r_forward, r_backward (docs/passes.md).

Notation (docs/notation.md). A dense layer maps ``x`` to the pre-activation
``x̂ = x Aᵀ + b``; an activation layer maps ``x̂`` to ``x⁺ = σ(x̂)``. ``δ`` is the
derivative of the training loss L̃ with respect to a layer's *output* (it already
carries the 1/N of the mean), ``R{q} = d/dε q(θ + εv)`` is Pearlmutter's operator
along a direction ``v`` of parameter space.

Index letters used in the shapes below:

    k  direction (R-quantities carry a leading axis of k directions)
    n  example
    i  input feature of a layer
    o  output feature of a layer

The passes of one evaluation run in this order, and each writes what a later
one reads into ``cache``, the layer's record of that evaluation (a
:class:`Cache`, made by whoever runs the forward pass and handed back to
every pass after it):

    forward(x, cache)                         keeps x
    backward(δ, cache, grad)                  keeps δ; writes ∂L̃/∂θ_layer into ``grad``
    r_forward(R{x}, v, cache)                 keeps R{x}
    r_backward(R{δ}, v, cache, r_grad)        writes R{∂L̃/∂θ_layer} into ``r_grad``

A layer keeps nothing of an evaluation itself, so no call elsewhere can make
a record stale. ``r_backward(..., second_order=False)`` drops every term that
carries δ (the terms a layer adds because its own Jacobian moves with θ): what
is left is the plain backward pass applied to R{δ}, which is how the
Gauss-Newton product ``G v = Jᵀ H_z J v`` is computed (docs/passes.md).
"""

from types import SimpleNamespace

import numpy as np


class Layer:
    """A layer without parameters that passes everything through unchanged.

    The contract every layer meets (docs/layers.md): ``grad`` and ``r_grad`` are views of the layer's part of a
    flat (P,) or (k, P) array, their contents undefined, to be assigned into; ``grad`` is ``None`` when the
    caller wants no parameter gradient (``r_grad`` is always given);
    ``v`` is the layer's part (k, p) of the directions; ``r_x=None`` stands for ``R{x} = 0`` (the network's
    first layers); ``need_input=False`` asks for no ``∂L̃/∂x`` (the first layer with parameters);
    ``second_order=False`` drops the terms that carry δ.
    """

    num_params = 0
    PASSES = ("forward", "backward", "r_forward", "r_backward")
    THIRD_ORDER_PASSES = ("rr_forward", "rr_backward")

    def bind(self, params):
        """Point the layer's parameters at ``params``, a flat view into θ."""

    def output_shape(self, input_shape):
        return input_shape

    def forward(self, x, cache):
        return x

    def backward(self, delta, cache, grad=None, need_input=True):
        return delta

    def r_forward(self, r_x, v, cache):
        return r_x

    def r_backward(self, r_delta, v, cache, r_grad, second_order=True, need_input=True):
        return r_delta

    def rr_forward(self, ruv_x, t, u, v, cache):
        """``R_uR_v{y}`` from ``R_uR_v{x}`` and the record ``t`` (a :class:`Tangents`)."""
        return ruv_x

    def rr_backward(self, ruv_delta, t, u, v, cache, rr_grad, need_input=True):
        """``R_uR_v{∂L̃/∂x}`` from ``R_uR_v{δ}``; writes ``R_uR_v{∂L̃/∂θ_layer}`` into ``rr_grad``."""
        return ruv_delta

    def __repr__(self):
        """The class name, and the parameter count of a layer with parameters (layers that ship say more)."""
        return f"{type(self).__name__}({f'p={self.num_params}' if self.num_params else ''})"

    def check_contract(self):
        """Raise TypeError when a piece of the contract is missing: a layer that defines any of its four passes
        defines all four, and a layer with parameters defines ``bind`` (docs/layers.md). Sequential calls it."""
        name = type(self).__name__
        defined = [p for p in self.PASSES if getattr(type(self), p) is not getattr(Layer, p)]
        if defined and len(defined) < len(self.PASSES):
            missing = [p for p in self.PASSES if p not in defined]
            raise TypeError(f"{name} defines {', '.join(defined)} but not {', '.join(missing)}: a layer defines all "
                            f"four passes (docs/layers.md), or none (then it passes everything through)")
        if self.num_params and type(self).bind is Layer.bind:
            raise TypeError(f"{name} has num_params = {self.num_params} but no bind(params) to take its part of θ "
                            f"(docs/layers.md)")

    def check_third_order(self):
        """Raise NotImplementedError unless the layer has third-order passes: a layer that defines its own four
        passes defines ``rr_forward`` and ``rr_backward`` too (docs/third.md), else it cannot take part in
        ``∇³L̃``."""
        own = [p for p in self.PASSES + self.THIRD_ORDER_PASSES if getattr(type(self), p) is not getattr(Layer, p)]
        if own and any(p not in own for p in self.THIRD_ORDER_PASSES):
            raise NotImplementedError(f"{type(self).__name__} defines no third-order passes (rr_forward and "
                                      f"rr_backward), which third derivatives need: docs/third.md")


class Dense(Layer):
    """Fully connected layer ``x̂ = x Aᵀ + b`` (2024 paper, section 2.1; docs/passes.md, "Dense").

    ``A`` has shape (o, i) and is stored row-major in θ, followed by ``b`` (o,).
    A dense layer is linear in its input and in its parameters, so its own
    second derivatives vanish; the only second-order terms of its R-backward
    pass are the cross terms ``δᵀ R{x}`` and ``δ V_A`` (parameters times input).

    It acts on the last axis of its input, (n, i) or (n, …, i) — a sequence of
    tokens (n, T, i) maps token by token — so in the sums over examples below
    every example and position is one row (:func:`rows`).
    """

    def __init__(self, n_in, n_out):
        if int(n_in) < 1 or int(n_out) < 1:
            raise ValueError(f"Dense needs positive widths, got n_in={n_in}, n_out={n_out}")
        self.n_in, self.n_out = int(n_in), int(n_out)
        self.num_params = self.n_out * self.n_in + self.n_out

    def __repr__(self):
        return f"Dense({self.n_in}, {self.n_out})"

    def output_shape(self, input_shape):
        if not input_shape or tuple(input_shape)[-1] != self.n_in:
            raise ValueError(f"{self!r} expects inputs of shape (n, …, {self.n_in}), got (n, *{tuple(input_shape)})")
        return (*tuple(input_shape)[:-1], self.n_out)

    def split(self, flat):
        """Views (…, o, i) and (…, o) of the A and b parts of a (…, p) array."""
        return weight_and_bias(flat, self.n_out, self.n_in)

    def bind(self, params):
        self.A, self.b = self.split(params)

    def forward(self, x, cache):
        """``x̂ = x Aᵀ + b``."""
        cache.x = x
        return times(x, self.A.T) + self.b

    def backward(self, delta, cache, grad=None, need_input=True):
        """``∂L̃/∂A = δᵀ x``, ``∂L̃/∂b = Σ_n δ``; returns ``∂L̃/∂x = δ A``."""
        cache.delta = delta
        if grad is not None:
            grad_A, grad_b = self.split(grad)
            grad_A[...] = rows(delta).T @ rows(cache.x)                 # (o, N) @ (N, i)
            grad_b[...] = rows(delta).sum(axis=0)
        return times(delta, self.A) if need_input else None

    def r_forward(self, r_x, v, cache):
        """``R{x̂} = R{x} Aᵀ + x V_Aᵀ + V_b``; ``r_x=None`` stands for ``R{x} = 0``."""
        cache.r_x = r_x
        V_A, V_b = self.split(v)                                     # (k, o, i), (k, o)
        r_x_hat = by_direction(rows(cache.x) @ V_A.transpose(0, 2, 1) + V_b[:, None, :], cache.x.shape[:-1])
        return r_x_hat if r_x is None else times(r_x, self.A.T) + r_x_hat

    def r_backward(self, r_delta, v, cache, r_grad, second_order=True, need_input=True):
        """R-operator of the backward pass (docs/passes.md, "Dense"): a Gauss-Newton part, the backward pass
        applied to R{δ}, and a second-order part, the terms that carry δ (kept when ``second_order``)::

                          Gauss-Newton      second order
            R{∂L̃/∂A}  =  R{δ}ᵀ x        +  δᵀ R{x}          (k, o, i)
            R{∂L̃/∂b}  =  Σ_n R{δ}                           (k, o)
            R{∂L̃/∂x}  =  R{δ} A         +  δ V_A            (k, n, i)
        """
        r_grad_A, r_grad_b = self.split(r_grad)
        r_grad_A[...] = direction_rows(r_delta).transpose(0, 2, 1) @ rows(cache.x)   # R{δ}ᵀ x: (k, o, N) @ (N, i)
        r_grad_b[...] = direction_rows(r_delta).sum(axis=1)                         # Σ_n R{δ}: (k, o)
        r_dx = times(r_delta, self.A) if need_input else None                       # R{δ} A:   (k, n, i)
        if second_order:
            if cache.r_x is not None:                           # R{x} = 0 below the first layer with parameters
                r_grad_A += rows(cache.delta).T @ direction_rows(cache.r_x)          # δᵀ R{x}: (o, N) @ (k, N, i)
            if need_input:
                V_A, _ = self.split(v)
                r_dx += by_direction(rows(cache.delta) @ V_A, cache.delta.shape[:-1])  # δ V_A: (N, o) @ (k, o, i)
        return r_dx

    def rr_forward(self, ruv_x, t, u, v, cache):
        """``R_uR_v{x̂} = R_uR_v{x} Aᵀ + R_u{x} V_Aᵀ + R_v{x} U_Aᵀ`` (docs/third.md); None where it is zero."""
        if t.ru_x is None:                      # the first layer with parameters: x does not move with θ
            return None
        (U_A, _), (V_A, _) = self.split(u), self.split(v)
        ruv_x_hat = times_each(t.ru_x, V_A.transpose(0, 2, 1)) + times_each(t.rv_x, U_A.transpose(0, 2, 1))
        return ruv_x_hat if ruv_x is None else times(ruv_x, self.A.T) + ruv_x_hat

    def rr_backward(self, ruv_delta, t, u, v, cache, rr_grad, need_input=True):
        """R_uR_v of the backward pass (docs/third.md)::

            R_uR_v{∂L̃/∂A} = R_uR_v{δ}ᵀ x + R_v{δ}ᵀ R_u{x} + R_u{δ}ᵀ R_v{x} + δᵀ R_uR_v{x}
            R_uR_v{∂L̃/∂b} = Σ_n R_uR_v{δ}
            R_uR_v{∂L̃/∂x} = R_uR_v{δ} A + R_v{δ} U_A + R_u{δ} V_A
        """
        rr_grad_A, rr_grad_b = self.split(rr_grad)
        rr_grad_A[...] = direction_rows(ruv_delta).transpose(0, 2, 1) @ rows(t.x)
        if t.ru_x is not None:
            rr_grad_A += (direction_rows(t.rv_delta).transpose(0, 2, 1) @ direction_rows(t.ru_x)
                          + direction_rows(t.ru_delta).transpose(0, 2, 1) @ direction_rows(t.rv_x))
        if t.ruv_x is not None:
            rr_grad_A += rows(t.delta).T @ direction_rows(t.ruv_x)
        rr_grad_b[...] = direction_rows(ruv_delta).sum(axis=1)
        if not need_input:
            return None
        (U_A, _), (V_A, _) = self.split(u), self.split(v)
        return times(ruv_delta, self.A) + times_each(t.rv_delta, U_A) + times_each(t.ru_delta, V_A)


class Flatten(Layer):
    """Reshapes (n, *shape) to (n, prod(shape)); the R-passes reshape the same way."""

    def __repr__(self):
        return "Flatten()"

    def output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def forward(self, x, cache):
        cache.input_shape = x.shape[1:]
        return x.reshape(x.shape[0], -1)

    def backward(self, delta, cache, grad=None, need_input=True):
        return delta.reshape(delta.shape[0], *cache.input_shape) if need_input else None

    def r_forward(self, r_x, v, cache):
        return None if r_x is None else r_x.reshape(r_x.shape[0], r_x.shape[1], -1)

    def r_backward(self, r_delta, v, cache, r_grad, second_order=True, need_input=True):
        if not need_input:
            return None
        return r_delta.reshape(r_delta.shape[0], r_delta.shape[1], *cache.input_shape)

    def rr_forward(self, ruv_x, t, u, v, cache):
        return self.r_forward(ruv_x, v, cache)

    def rr_backward(self, ruv_delta, t, u, v, cache, rr_grad, need_input=True):
        return self.r_backward(ruv_delta, v, cache, rr_grad, need_input=need_input)


# ----- what the passes share: the record of an evaluation, the third-order record, the parameter layout -----


class Cache(SimpleNamespace):
    """One layer's record of one evaluation: what its forward pass keeps for the backward and R-passes over the
    same batch at the same θ (``x``, ``δ``, ``R{x}``…).

    Entries whose names start with ``r_`` are R-quantities of one product: the network drops them once the
    layer's R-backward pass has read them (:meth:`drop_r_values`), so nothing of a block of k directions is
    held between products.
    """

    def drop_r_values(self):
        for name in [name for name in vars(self) if name.startswith("r_")]:
            delattr(self, name)
        for inner in getattr(self, "inner", ()):             # the caches of a layer made of layers (blocks.py)
            inner.drop_r_values()


class Tangents(SimpleNamespace):
    """What a layer's third-order passes read besides its cache, along the two directions u and v of
    ``∇³L̃[u, v, ·]`` (docs/third.md): ``x`` its input, ``delta`` the δ of its output, ``ru_x``, ``rv_x``
    (R_u{x}, R_v{x}; None before the first layer with parameters), ``ru_delta``, ``rv_delta`` (R_u{δ}, R_v{δ})
    and ``ruv_x`` (R_uR_v{x}; None where it is zero)."""


def rows(a):
    """A (n, …, m) array as (N, m): every example and position one row (a view of a contiguous array)."""
    return a.reshape(-1, a.shape[-1])


def direction_rows(a):
    """A (k, n, …, m) R-quantity as (k, N, m): per direction, every example and position one row."""
    return a.reshape(a.shape[0], -1, a.shape[-1])


def by_direction(a, lead):
    """A (k, N, m) result back as (k, *lead, m), ``lead`` the (n, …) axes its rows came from."""
    return a.reshape(a.shape[0], *lead, a.shape[-1])


def times(a, M):
    """``a M`` on the last axis of a (…, m) array, M (m, b): all of a's rows in one matrix product (NumPy
    multiplies a stack of (T, m) matrices about twice as slowly as their N·T rows at once: bench/transformer.py)."""
    return (a.reshape(-1, a.shape[-1]) @ M).reshape(*a.shape[:-1], M.shape[-1])


def times_each(r, W):
    """``r_j W_j`` for each direction j: an R-quantity r (k, n, …, a) times a per-direction matrix W (k, a, b), each
    direction's rows in one matrix product; (k, n, …, b)."""
    return by_direction(direction_rows(r) @ W, r.shape[1:-1])


def weight_and_bias(flat, rows, cols):
    """Views (…, rows, cols) of a weight matrix stored row-major and (…, rows) of the bias after it, in a (…, p)
    array (p = rows·cols + rows): how a layer's parameters, and any direction or gradient of them, are laid out."""
    cut = rows * cols
    return flat[..., :cut].reshape(*flat.shape[:-1], rows, cols), flat[..., cut:]
