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

from .backend import array_module
from .layers import Layer


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

    def forward(self, x_hat):
        self.x_hat = x_hat
        self.s = self.slope(x_hat)  # σ'(x̂), used by the three other passes
        return self.sigma(x_hat)

    def backward(self, g, grad=None, need_input=True):
        self.g = g
        return g * self.s

    def r_forward(self, r_x_hat, v):
        self.r_x_hat = r_x_hat
        return None if r_x_hat is None else self.s * r_x_hat

    def r_backward(self, r_g, v, r_grad, second_order=True, need_input=True):
        r_delta = r_g * self.s
        if second_order and self.has_curvature and self.r_x_hat is not None:
            r_delta += self.g * self.curvature(self.x_hat) * self.r_x_hat
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
        xp = array_module(x)
        return xp.where(x > 0, x, xp.expm1(xp.minimum(x, 0)))

    @staticmethod
    def slope(x):
        xp = array_module(x)
        return xp.where(x > 0, 1, xp.exp(xp.minimum(x, 0))).astype(x.dtype, copy=False)

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
