"""Elementwise activations ``x⁺ = σ(x̂)`` and their passes (DESIGN.md §2).

Each activation states σ, σ' and σ''. Kinks are decided once, here, for every
activation: at ``x̂ = 0`` the left branch is used (``x̂ > 0`` selects the right
one), in σ' and σ'' alike.

Passes of an activation layer, with ``g = ∂L̃/∂x⁺`` the derivative arriving
from above::

    forward       x⁺ = σ(x̂)
    backward      ∂L̃/∂x̂ = g ⊙ σ'(x̂)
    r_forward     R{x⁺} = σ'(x̂) ⊙ R{x̂}
    r_backward    R{∂L̃/∂x̂} = R{g} ⊙ σ'(x̂) + g ⊙ σ''(x̂) ⊙ R{x̂}

The last term is the activation's second-order term, dropped for the
Gauss-Newton product.
"""

import math

import numpy as np

from .backend import array_module
from .layers import Layer, RValues


class Activation(Layer):
    """Base class: subclasses give ``sigma``, ``slope`` (σ') and ``curvature`` (σ'')."""

    name = None
    gain = 1.0  # the Kaiming gain used by the initialisations (network.py)
    has_curvature = True  # False when σ'' = 0 wherever it is defined

    def __repr__(self):
        return f"{type(self).__name__}()"

    @staticmethod
    def sigma(x):
        raise NotImplementedError

    @staticmethod
    def slope(x):
        raise NotImplementedError

    @staticmethod
    def curvature(x):
        raise NotImplementedError

    def slope_from_output(self, y):
        """σ'(x̂) given σ(x̂) as well; subclasses override it when that is cheaper."""
        return self.slope(self.x_hat)

    def r_values_per_example(self, input_shape, first=False):
        """Keeps R{x⁺}, its output; R{δ} and the σ'' term come from the ScratchPool."""
        width = int(np.prod(input_shape))
        return RValues(kept=width, scratch=width)

    def last_slope(self):
        """``σ'(x̂)`` at the input of the last forward pass, for measurements (alignment): read-only, valid until
        the next forward pass."""
        return self.s

    g_curvature = None   # g ⊙ σ''(x̂), formed by the first second-order R-backward pass after each backward pass

    def forward(self, x_hat):
        self.x_hat = x_hat
        y = self.sigma(x_hat)
        self.s = self.slope_from_output(y)  # σ'(x̂), used by the three other passes
        return y

    def backward(self, g, grad=None, need_input=True):
        self.g = g
        self.g_curvature = None
        return g * self.s

    def r_forward(self, r_x_hat, v):
        self.r_x_hat = r_x_hat          # R{x̂}: read by r_backward (σ'' term)
        if r_x_hat is None:
            return None
        return array_module(r_x_hat).multiply(self.s, r_x_hat, out=self.buffer("r_out", r_x_hat.shape, r_x_hat))

    def r_backward(self, r_g, v, r_grad, second_order=True, need_input=True):
        xp = array_module(r_g)
        r_delta = xp.multiply(r_g, self.s, out=self.scratch(r_g.shape, r_g, avoid=(r_g,)))
        if second_order and self.has_curvature and self.r_x_hat is not None:
            if self.g_curvature is None:        # (n, o), shared by the k directions and every product at this θ
                self.g_curvature = self.g * self.curvature(self.x_hat)
            second = self.scratch(r_g.shape, r_g, avoid=(r_delta, self.r_x_hat))
            r_delta += xp.multiply(self.g_curvature, self.r_x_hat, out=second)
        return r_delta


class ReLU(Activation):
    """``σ(x) = max(x, 0)``, ``σ'(x) = [x > 0]``, ``σ''(x) = 0`` (away from the kink)."""

    name = "relu"
    gain = math.sqrt(2.0)
    has_curvature = False  # σ'' is zero wherever it exists: no second-order term

    @staticmethod
    def sigma(x):
        return array_module(x).maximum(x, 0)

    @staticmethod
    def slope(x):
        return (x > 0).astype(x.dtype)

    @staticmethod
    def slope_from_output(y):
        return (y > 0).astype(y.dtype)

    @staticmethod
    def curvature(x):
        return array_module(x).zeros_like(x)


class ELU(Activation):
    """ELU with α = 1 (2024 paper, section 3)::

        σ(x) = x (x > 0),  eˣ − 1 (x ≤ 0)
        σ'(x) = 1,          eˣ
        σ''(x) = 0,         eˣ

    The exponential is taken of ``min(x, 0)`` only, so large positive inputs
    never overflow; ``expm1`` keeps σ accurate for small negative x.
    """

    name = "elu"
    gain = math.sqrt(2.0)  # the 2024 paper follows Clevert et al. in using √2 for ELU

    @staticmethod
    def sigma(x):
        # eˣ − 1 ≥ x for every x, so max(x, eˣ − 1 of min(x, 0)) picks the right branch
        xp = array_module(x)
        y = xp.expm1(xp.minimum(x, 0))
        return xp.maximum(x, y, out=y)

    @staticmethod
    def slope(x):
        xp = array_module(x)
        return xp.where(x > 0, 1, xp.exp(xp.minimum(x, 0))).astype(x.dtype, copy=False)

    @staticmethod
    def slope_from_output(y):
        """σ'(x̂) = min(σ(x̂), 0) + 1: 1 where x̂ > 0, eˣ̂ = σ(x̂) + 1 elsewhere (no second exp).

        Exact up to an absolute rounding error of ~1e-16, which is all that σ'
        needs: the relative accuracy of eˣ̂ for very negative x̂ is lost, but
        such slopes multiply δ's of order one and vanish in the sum anyway.
        """
        s = array_module(y).minimum(y, 0)
        s += 1
        return s

    @staticmethod
    def curvature(x):
        xp = array_module(x)
        return xp.where(x > 0, 0, xp.exp(xp.minimum(x, 0))).astype(x.dtype, copy=False)


class Tanh(Activation):
    """``σ = tanh``, ``σ' = 1 − σ²``, ``σ'' = −2 σ (1 − σ²)``."""

    name = "tanh"
    gain = 5.0 / 3.0

    @staticmethod
    def sigma(x):
        return array_module(x).tanh(x)

    @staticmethod
    def slope(x):
        t = array_module(x).tanh(x)
        return 1 - t * t

    @staticmethod
    def slope_from_output(y):
        return 1 - y * y

    @staticmethod
    def curvature(x):
        t = array_module(x).tanh(x)
        return -2 * t * (1 - t * t)


ACTIVATIONS = {cls.name: cls for cls in (ReLU, ELU, Tanh)}


def activation(name):
    """A new activation layer from its name ('elu', 'relu' or 'tanh')."""
    if isinstance(name, Activation):
        return type(name)()  # a fresh layer: layers cache their inputs
    if not isinstance(name, str):
        raise TypeError(f"activation must be a name, one of {sorted(ACTIVATIONS)}, got {type(name).__name__}")
    try:
        return ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}") from None
